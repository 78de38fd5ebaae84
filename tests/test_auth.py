"""API sign-in: tokens, roles, revocation."""

from __future__ import annotations

import httpx

from conftest import Server
from images import smile_logo


def test_token_by_form_and_json(shared_server: Server) -> None:
    url = f"{shared_server.url}/api/v1/auth/token"
    by_form = httpx.post(url, data={"username": "admin", "password": "admin-password-for-tests"})
    by_json = httpx.post(url, json={"username": "admin", "password": "admin-password-for-tests"})
    assert by_form.status_code == by_json.status_code == 200
    assert by_form.json()["access_token"] != by_json.json()["access_token"]
    assert by_form.json()["role"] == "admin"
    wrong = httpx.post(url, data={"username": "admin", "password": "nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong username or password"
    ghost = httpx.post(url, data={"username": "ghost", "password": "nope"})
    assert ghost.status_code == 401 and ghost.json()["detail"] == wrong.json()["detail"]
    assert httpx.post(url, json={"username": "admin"}).status_code == 422


def test_routes_need_a_token(shared_server: Server) -> None:
    for path in ("/parameters", "/objects", "/runs", "/notifications", "/users"):
        response = httpx.get(f"{shared_server.url}/api/v1{path}")
        assert response.status_code == 401, path
        assert "Bearer" in response.headers["www-authenticate"]
    bogus = httpx.get(f"{shared_server.url}/api/v1/runs", headers={"Authorization": "Bearer llp_bogus"})
    assert bogus.status_code == 401


def test_roles_decide_what_each_user_may_do(shared_server: Server) -> None:
    tokens = {}
    with shared_server.client() as admin:
        for role in ("operator", "worker", "consumer"):
            created = admin.post("/users", json={"username": f"{role}1", "role": role})
            assert created.status_code == 201, created.text
            password = created.json()["temporary_password"]
            assert created.json()["must_change_password"] is True
            temporary = shared_server.token(f"{role}1", password)
            with shared_server.client(temporary) as api:  # a temporary password opens nothing else on the API
                refused = api.get("/parameters")
                assert refused.status_code == 403 and "temporary password" in refused.json()["detail"]
                assert api.get("/me").status_code == 200
                assert api.post("/auth/password", json={"current_password": password,
                                                        "new_password": password}).status_code == 422
                assert api.post("/auth/password", json={"current_password": password,
                                                        "new_password": f"{role}-own-password"}).status_code == 200
            tokens[role] = shared_server.token(f"{role}1", f"{role}-own-password")
        assert admin.post("/users", json={"username": "operator1", "role": "worker"}).status_code == 422
        assert admin.post("/users", json={"username": "x", "role": "pilot"}).status_code == 422

    def status(role: str, method: str, path: str, **kwargs) -> int:  # type: ignore[no-untyped-def]
        with shared_server.client(tokens[role]) as api:
            return api.request(method, path, **kwargs).status_code

    assert status("operator", "GET", "/parameters") == 200
    assert status("operator", "GET", "/users") == 403
    assert status("worker", "GET", "/parameters") == 403
    assert status("worker", "PUT", "/parameters/Minimum-F1-Score", json={"value": "0.5"}) == 403
    assert status("consumer", "GET", "/objects") == 403
    assert status("consumer", "PUT", "/objects/images_for_detection/c.png", content=smile_logo(3)) == 201
    forbidden = status("consumer", "PUT", "/objects/images_labeled_by_folder/cat/c.png", content=b"x")
    assert forbidden == 403
    assert status("worker", "POST", "/training/check") == 403


def test_password_change_revokes_tokens(shared_server: Server) -> None:
    with shared_server.client() as admin:
        password = admin.post("/users", json={"username": "changer", "role": "operator"}).json()[
            "temporary_password"]
    token = shared_server.token("changer", password)
    with shared_server.client(token) as api:
        assert api.post("/auth/password", json={"current_password": "wrong-one-1",
                                                "new_password": "a-new-password"}).status_code == 403
        assert api.post("/auth/password", json={"current_password": password,
                                                "new_password": "short"}).status_code == 422
        ok = api.post("/auth/password", json={"current_password": password, "new_password": "a-new-password"})
        assert ok.status_code == 200
        assert api.get("/me").status_code == 401
    fresh = shared_server.token("changer", "a-new-password")
    with shared_server.client(fresh) as api:
        me = api.get("/me").json()
        assert me["must_change_password"] is False
        token_id = api.get("/tokens").json()[-1]["id"]
        assert api.delete(f"/tokens/{token_id}").status_code == 200
        assert api.get("/me").status_code == 401


def test_openapi_documents_every_route(shared_server: Server) -> None:
    spec = httpx.get(f"{shared_server.url}/openapi.json").json()
    paths = set(spec["paths"])
    for expected in ("/api/v1/auth/token", "/api/v1/objects/{key}", "/api/v1/objects", "/api/v1/parameters",
                     "/api/v1/parameters/{name}", "/api/v1/training/check", "/api/v1/runs", "/api/v1/runs/{run_id}",
                     "/api/v1/notifications", "/healthz"):
        assert expected in paths, expected
    # "/" sends an anonymous visitor to sign in, where the server says it is up.
    assert httpx.get(f"{shared_server.url}/", follow_redirects=True).status_code == 200
    assert "labelloop is up" in httpx.get(f"{shared_server.url}/", follow_redirects=True).text
