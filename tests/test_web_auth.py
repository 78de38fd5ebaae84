"""Sign-in, sessions, CSRF, throttling, roles and the workforce admin pages, over plain HTTP against a real server."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

import httpx
import pytest

from conftest import ADMIN_PASSWORD, Server

pytestmark = pytest.mark.timeout(120)
SESSION = "labelloop_session"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


def browser(server: Server) -> httpx.Client:
    """A client that keeps cookies like a browser and does not follow redirects on its own."""
    return httpx.Client(base_url=server.url, timeout=30)


def sign_in(client: httpx.Client, username: str, password: str, next_path: str = "") -> httpx.Response:
    page = client.get("/sign-in")
    assert page.status_code == 200
    return client.post("/sign-in", data={"username": username, "password": password, "next": next_path,
                                         "csrf_token": csrf_of(page.text)})


def set_cookie(response: httpx.Response, name: str) -> SimpleCookie | None:
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        if name in cookie:
            return cookie
    return None


def new_user(server: Server, username: str, role: str = "worker") -> str:
    """Create a user through the API; returns the temporary password."""
    with server.client() as api:
        created = api.post("/users", json={"username": username, "role": role})
        assert created.status_code == 201, created.text
        return created.json()["temporary_password"]


def signed_in(server: Server, username: str, role: str = "worker") -> tuple[httpx.Client, str]:
    """A new user, signed in with a password of their own; returns the client and that password."""
    temporary = new_user(server, username, role)
    client = browser(server)
    assert sign_in(client, username, temporary).headers["location"] == "/account/password"
    page = client.get("/account/password")
    own = f"{username}-own-password"
    changed = client.post("/account/password", data={"csrf_token": csrf_of(page.text), "current_password": temporary,
                                                     "new_password": own, "confirm_password": own})
    assert changed.status_code == 303, changed.text
    return client, own


def test_sign_in_cookie_is_httponly_samesite_and_new_every_time(shared_server: Server) -> None:
    client = browser(shared_server)
    page = client.get("/sign-in")
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    assert 'for="username"' in page.text and 'for="password"' in page.text
    # A session id planted before sign-in (session fixation) is not kept: the server issues its own.
    client.cookies.set(SESSION, "planted-by-an-attacker", domain="127.0.0.1", path="/")
    response = client.post("/sign-in", data={"username": "admin", "password": ADMIN_PASSWORD,
                                             "csrf_token": csrf_of(page.text)})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    cookie = set_cookie(response, SESSION)[SESSION]
    assert cookie.value != "planted-by-an-attacker" and len(cookie.value) >= 40
    assert cookie["httponly"] and cookie["samesite"].lower() == "lax" and cookie["path"] == "/"
    first = cookie.value
    assert client.get("/workforce").status_code == 200
    # Signing in again (a sign-in form left open in another tab) gives a new session id and ends the old one.
    other_tab = browser(shared_server)
    form = other_tab.get("/sign-in")
    other_tab.cookies.set(SESSION, first, domain="127.0.0.1", path="/")
    again = other_tab.post("/sign-in", data={"username": "admin", "password": ADMIN_PASSWORD,
                                             "csrf_token": csrf_of(form.text)})
    assert set_cookie(again, SESSION)[SESSION].value != first
    stale = httpx.get(f"{shared_server.url}/workforce", cookies={SESSION: first})
    assert stale.status_code == 303 and stale.headers["location"].startswith("/sign-in")
    # Sign-out ends the session on the server, not only in the browser.
    client = other_tab
    current = client.cookies.get(SESSION)
    out = client.post("/sign-out", data={"csrf_token": csrf_of(client.get("/workforce").text)})
    assert out.status_code == 303 and out.headers["location"].startswith("/sign-in")
    assert httpx.get(f"{shared_server.url}/workforce", cookies={SESSION: current}).status_code == 303


def test_forms_without_the_csrf_token_are_refused(shared_server: Server) -> None:
    client = browser(shared_server)
    page = client.get("/sign-in")
    # The sign-in form itself: double-submit cookie and field must match.
    for token in (None, "wrong"):
        data = {"username": "admin", "password": ADMIN_PASSWORD} | ({"csrf_token": token} if token else {})
        refused = client.post("/sign-in", data=data)
        assert refused.status_code == 403 and set_cookie(refused, SESSION) is None
    assert sign_in(client, "admin", ADMIN_PASSWORD).status_code == 303
    token = csrf_of(client.get("/workforce").text)
    assert token != csrf_of(page.text)
    for data in ({"username": "csrf-victim", "role": "admin"},
                 {"username": "csrf-victim", "role": "admin", "csrf_token": "not-the-token"}):
        refused = client.post("/workforce/users", data=data)
        assert refused.status_code == 403 and "security token" in refused.text
    with shared_server.client() as api:
        assert "csrf-victim" not in [u["username"] for u in api.get("/users").json()]
    made = client.post("/workforce/users", data={"username": "csrf-ok", "role": "worker", "csrf_token": token})
    assert made.status_code == 201


def test_temporary_password_must_be_changed_and_a_change_ends_other_sessions(shared_server: Server) -> None:
    temporary = new_user(shared_server, "newbie")
    first, second = browser(shared_server), browser(shared_server)
    assert sign_in(first, "newbie", temporary, "/review").headers["location"] == "/account/password?next=/review"
    assert sign_in(second, "newbie", temporary).status_code == 303
    api_token = shared_server.token("newbie", temporary)
    for path in ("/review", "/review/work", "/account"):
        response = first.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/account/password", path
    page = first.get("/account/password?next=/review")
    assert "Temporary password" in page.text and "Choose your password" in page.text
    token = csrf_of(page.text)
    wrong = first.post("/account/password", data={"csrf_token": token, "current_password": "not-it-at-all",
                                                  "new_password": "newbie-password", "confirm_password":
                                                  "newbie-password"})
    assert wrong.status_code == 422 and "current password is wrong" in wrong.text
    short = first.post("/account/password", data={"csrf_token": token, "current_password": temporary,
                                                  "new_password": "short", "confirm_password": "short"})
    assert short.status_code == 422 and "at least 10 characters" in short.text
    old_cookie = first.cookies.get(SESSION)
    changed = first.post("/account/password", data={"csrf_token": token, "current_password": temporary,
                                                    "new_password": "newbie-password", "next": "/review",
                                                    "confirm_password": "newbie-password"})
    assert changed.status_code == 303 and changed.headers["location"] == "/review?notice=password-changed"
    assert set_cookie(changed, SESSION)[SESSION].value != old_cookie, "a new session id after the change"
    assert first.get("/review").status_code == 200
    assert second.get("/review").headers["location"].startswith("/sign-in"), "other sessions end"
    assert httpx.get(f"{shared_server.url}/api/v1/me",
                     headers={"Authorization": f"Bearer {api_token}"}).status_code == 401, "tokens end"
    assert sign_in(browser(shared_server), "newbie", temporary).status_code == 401
    assert sign_in(browser(shared_server), "newbie", "newbie-password").headers["location"] == "/review"


def test_repeated_failed_sign_ins_are_slowed_down(shared_server: Server) -> None:
    new_user(shared_server, "target")
    client = browser(shared_server)
    for _ in range(4):
        failed = sign_in(client, "target", "wrong-password")
        assert failed.status_code == 401 and "Wrong username or password" in failed.text
    fifth = sign_in(client, "target", "wrong-password")
    assert fifth.status_code == 401
    # From the fifth failure on, the username waits (even with the right password), on the page and the API.
    blocked = sign_in(client, "target", "anything")
    assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.text
    assert 1 <= int(blocked.headers["retry-after"]) <= 15
    api = httpx.post(f"{shared_server.url}/api/v1/auth/token", data={"username": "target", "password": "x"})
    assert api.status_code == 429 and "retry-after" in api.headers
    # Other usernames from the same address are not blocked by it.
    assert sign_in(browser(shared_server), "admin", ADMIN_PASSWORD).status_code == 303


def test_roles_decide_the_pages(shared_server: Server) -> None:
    anonymous = browser(shared_server)
    for path in ("/workforce", "/review", "/review/work", "/account"):
        response = anonymous.get(path)
        assert response.status_code == 303 and response.headers["location"] == f"/sign-in?next={path}"
    worker, _ = signed_in(shared_server, "role-worker")
    review = worker.get("/review")
    assert review.status_code == 200 and 'href="/workforce' not in review.text
    assert 'href="/reviewers"' not in review.text, "reviewer metrics are for operators and admins"
    operator, _ = signed_in(shared_server, "role-operator", "operator")
    dashboard = operator.get("/dashboard")
    assert dashboard.status_code == 200 and 'href="/reviewers"' in dashboard.text, "the header links reviewers"
    assert operator.get("/reviewers").status_code == 200
    for path in ("/workforce", "/workforce/teams", "/workforce/users/admin"):
        denied = worker.get(path)
        assert denied.status_code == 403 and 'href="/workforce' not in denied.text, path
    token = csrf_of(review.text)
    assert worker.post("/workforce/users", data={"username": "x1", "role": "admin", "csrf_token": token}
                       ).status_code == 403
    consumer, _ = signed_in(shared_server, "role-consumer", "consumer")
    assert consumer.get("/review").status_code == 403
    assert consumer.get("/account").status_code == 200
    # After sign-in, a next address on another site is ignored.
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert sign_in(browser(shared_server), "admin", ADMIN_PASSWORD, target).headers["location"] == "/dashboard"


def test_admin_manages_users_teams_and_tokens(shared_server: Server) -> None:
    admin = browser(shared_server)
    sign_in(admin, "admin", ADMIN_PASSWORD)
    page = admin.get("/workforce")
    token = csrf_of(page.text)
    assert f'value="{shared_server.url}/review"' in page.text
    # Teams: create one, create a worker into it, add and remove members.
    assert admin.post("/workforce/teams", data={"name": "Night shift", "csrf_token": token}).status_code == 303
    again = admin.post("/workforce/teams", data={"name": "Night shift", "csrf_token": token})
    assert again.status_code == 422 and "exists already" in again.text
    created = admin.post("/workforce/users", data={"username": "nina", "email": "", "role": "worker",
                                                   "team": "Night shift", "csrf_token": token})
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    temporary = re.search(r'id="secret-value">([^<]+)<', created.text).group(1)
    bad = admin.post("/workforce/users", data={"username": "bad name!", "role": "worker", "csrf_token": token})
    assert bad.status_code == 422 and "username is 1-64" in bad.text
    teams = admin.get("/workforce/teams").text
    assert "nina" in teams
    team_id = re.search(r'action="/workforce/teams/(\d+)/members"', teams).group(1)
    assert admin.post(f"/workforce/teams/{team_id}/members", data={"username": "admin", "csrf_token": token}
                      ).status_code == 303
    assert admin.post(f"/workforce/teams/{team_id}/members/admin/remove", data={"csrf_token": token}
                      ).status_code == 303
    leave = f'action="/workforce/teams/{team_id}/members/nina/remove"'
    assert leave in admin.get("/workforce/users/nina").text
    removed = admin.post(f"/workforce/teams/{team_id}/members/nina/remove",
                         data={"csrf_token": token, "back": "/workforce/users/nina"})
    assert removed.headers["location"] == "/workforce/users/nina?notice=member-removed"
    user_page = admin.get(removed.headers["location"]).text
    assert leave not in user_page and "The user is out of the team." in user_page
    assert admin.post("/workforce/users/nina/teams", data={"team": "Night shift", "csrf_token": token}
                      ).status_code == 303
    assert leave in admin.get("/workforce/users/nina").text

    nina = browser(shared_server)
    assert sign_in(nina, "nina", temporary).status_code == 303
    # Disable: her session ends at once and she cannot sign in; enable lets her in again.
    assert admin.post("/workforce/users/nina/disable", data={"csrf_token": token}).status_code == 303
    assert nina.get("/account/password").status_code == 303
    refused = sign_in(browser(shared_server), "nina", temporary)
    guessed = sign_in(browser(shared_server), "nina", "not-her-password")
    # The same answer as a wrong password: a disabled account does not confirm a guessed password.
    assert refused.status_code == guessed.status_code == 401 and "Wrong username or password" in refused.text
    assert "disabled" not in refused.text
    assert admin.post("/workforce/users/admin/disable", data={"csrf_token": token}).status_code == 422
    assert admin.post("/workforce/users/nina/enable", data={"csrf_token": token}).status_code == 303
    # Reset: a new temporary password; the old one stops working.
    reset = admin.post("/workforce/users/nina/reset-password", data={"csrf_token": token})
    fresh = re.search(r'id="secret-value">([^<]+)<', reset.text).group(1)
    assert fresh != temporary
    assert sign_in(browser(shared_server), "nina", temporary).status_code == 401
    assert sign_in(browser(shared_server), "nina", fresh).headers["location"] == "/account/password"
    # API tokens: create one (shown once), use it, revoke it.
    made = admin.post("/workforce/users/nina/tokens", data={"name": "script", "days": "7", "csrf_token": token})
    assert made.status_code == 201
    api_token = re.search(r'id="secret-value">([^<]+)<', made.text).group(1)
    me = httpx.get(f"{shared_server.url}/api/v1/me", headers={"Authorization": f"Bearer {api_token}"})
    assert me.status_code == 200 and me.json()["username"] == "nina"
    token_id = re.search(r'/workforce/users/nina/tokens/(\d+)/revoke', admin.get("/workforce/users/nina").text).group(1)
    assert admin.post(f"/workforce/users/nina/tokens/{token_id}/revoke", data={"csrf_token": token}
                      ).status_code == 303
    assert httpx.get(f"{shared_server.url}/api/v1/me",
                     headers={"Authorization": f"Bearer {api_token}"}).status_code == 401
    assert "revoked" in admin.get("/workforce/users/nina").text
    # Role change.
    assert admin.post("/workforce/users/nina/role", data={"role": "operator", "csrf_token": token}
                      ).status_code == 303
    with shared_server.client() as api:
        assert {u["username"]: u["role"] for u in api.get("/users").json()}["nina"] == "operator"
