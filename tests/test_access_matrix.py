"""Every route of the OpenAPI document, called by each role, against an allow/deny table kept here."""

from __future__ import annotations

import re

import httpx
import pytest

from conftest import ADMIN_PASSWORD, Server, server_env

ROLES = ("anonymous", "worker", "consumer", "operator", "admin")
EVERYONE = set(ROLES)
SIGNED_IN = {"worker", "consumer", "operator", "admin"}
OPERATORS = {"operator", "admin"}
ADMINS = {"admin"}
REVIEWERS = {"worker", "operator", "admin"}
DETECTORS = {"consumer", "operator", "admin"}
NOBODY: set[str] = set()  # no user token opens it (the S3 event endpoint takes a shared secret)

ALLOWED: dict[tuple[str, str], set[str]] = {
    ("POST", "/api/v1/auth/token"): EVERYONE,
    ("POST", "/api/v1/auth/password"): SIGNED_IN,
    ("GET", "/api/v1/me"): SIGNED_IN,
    ("GET", "/api/v1/users"): ADMINS,
    ("POST", "/api/v1/users"): ADMINS,
    ("GET", "/api/v1/tokens"): SIGNED_IN,
    ("DELETE", "/api/v1/tokens/{token_id}"): SIGNED_IN,
    ("GET", "/api/v1/parameters"): OPERATORS,
    ("GET", "/api/v1/parameters/{name}"): OPERATORS,
    ("PUT", "/api/v1/parameters/{name}"): OPERATORS,
    ("GET", "/api/v1/parameters/{name}/history"): OPERATORS,
    ("PUT", "/api/v1/objects/{key}"): DETECTORS,
    ("GET", "/api/v1/objects/{key}"): OPERATORS,
    ("DELETE", "/api/v1/objects/{key}"): OPERATORS,
    ("GET", "/api/v1/objects"): OPERATORS,
    ("POST", "/api/v1/events/s3"): NOBODY,
    ("GET", "/api/v1/runs"): OPERATORS,
    ("GET", "/api/v1/runs/{run_id}"): OPERATORS,
    ("GET", "/api/v1/notifications"): OPERATORS,
    ("POST", "/api/v1/training/check"): OPERATORS,
    ("GET", "/api/v1/models"): OPERATORS,
    ("GET", "/api/v1/models/{version}"): OPERATORS,
    ("POST", "/api/v1/models/{version}/deploy"): OPERATORS,
    ("POST", "/api/v1/models/{version}/stop"): OPERATORS,
    ("GET", "/api/v1/models/{version}/export"): OPERATORS,
    ("GET", "/api/v1/models/{version}/suspect-labels"): OPERATORS,
    ("POST", "/api/v1/models/{version}/label-audit"): OPERATORS,
    ("POST", "/api/v1/detect"): DETECTORS,
    ("GET", "/api/v1/schedules"): OPERATORS,
    ("GET", "/api/v1/detections"): OPERATORS,
    ("GET", "/api/v1/detections/export.csv"): OPERATORS,
    ("POST", "/api/v1/detections/redetect"): OPERATORS,
    ("GET", "/api/v1/human-loops"): REVIEWERS,
    ("GET", "/api/v1/human-loops/{name}"): REVIEWERS,
    ("POST", "/api/v1/human-loops/{name}/answer"): REVIEWERS,
    ("POST", "/api/v1/human-loops/{name}/stop"): OPERATORS,
    ("POST", "/api/v1/human-loops/{name}/correct"): OPERATORS,
    ("POST", "/api/v1/human-loops/undo"): REVIEWERS,
    ("POST", "/api/v1/human-loops/label-audit"): OPERATORS,
    ("GET", "/api/v1/reviewers/metrics"): OPERATORS,
    ("GET", "/api/v1/reviewers/metrics.csv"): OPERATORS,
    ("POST", "/api/v1/reviewers/{username}/pause"): ADMINS,
    ("POST", "/api/v1/reviewers/{username}/resume"): ADMINS,
    ("POST", "/api/v1/reviewers/pause-below"): ADMINS,
    ("GET", "/api/v1/gold-tasks"): OPERATORS,
    ("POST", "/api/v1/gold-tasks"): OPERATORS,
    ("DELETE", "/api/v1/gold-tasks/{key}"): OPERATORS,
    ("GET", "/api/v1/task-template"): REVIEWERS,
    ("PUT", "/api/v1/task-template"): OPERATORS,
    ("POST", "/api/v1/sampling/run"): OPERATORS,
    ("GET", "/api/v1/sampling/summary"): OPERATORS,
    ("GET", "/api/v1/sampling/silent-errors"): OPERATORS,
    ("GET", "/healthz"): EVERYONE,
}

# Bodies that make an allowed call succeed where an empty body could not tell "allowed" from "refused".
BODIES = {("POST", "/api/v1/auth/token"): {"json": {"username": "admin", "password": ADMIN_PASSWORD}}}
PATH_VALUES = {"username": "matrix-nobody", "token_id": "999999", "name": "Minimum-F1-Score",
               "key": "images_for_detection/matrix.png", "run_id": "no-such-run", "version": "v404"}


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = Server(home=tmp_path_factory.mktemp("matrix") / "home",
                    env=server_env(LABELLOOP_S3_EVENTS_TOKEN="s3-shared-secret")).start()
    yield server
    server.stop()


def _tokens(server: Server) -> dict[str, str | None]:
    tokens: dict[str, str | None] = {"anonymous": None, "admin": server.token()}
    for role in ("worker", "consumer", "operator"):
        tokens[role] = server.user_token(f"m-{role}", role)
    return tokens


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


def test_every_route_is_in_the_table(matrix_server: Server) -> None:
    spec = httpx.get(f"{matrix_server.url}/openapi.json").json()
    routes = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert routes - set(ALLOWED) == set(), "new routes: add them to ALLOWED with the roles that may call them"
    assert set(ALLOWED) - routes == set(), "routes that no longer exist: remove them from ALLOWED"


def test_each_role_is_allowed_or_denied_as_the_table_says(matrix_server: Server) -> None:
    tokens = _tokens(matrix_server)
    checked, wrong = 0, []
    # One client for every request (a new one each time cost tens of ms of TLS set-up, some 500 times), its
    # cookies cleared before each so that every request goes as a fresh client's would.
    with httpx.Client(base_url=matrix_server.url, timeout=60) as client:
        for (method, path), allowed in sorted(ALLOWED.items()):
            for role in ROLES:
                headers = {"Authorization": f"Bearer {tokens[role]}"} if tokens[role] else {}
                body = BODIES.get((method, path), {"content": b""} if method in ("PUT", "POST") else {})
                client.cookies.clear()
                response = client.request(method, _url(path), headers=headers, **body)
                checked += 1
                denied = response.status_code in (401, 403)
                if role in allowed and denied:
                    wrong.append(f"{role} {method} {path}: refused with {response.status_code}")
                elif role not in allowed:
                    expected = 401 if role == "anonymous" or allowed is NOBODY else 403
                    if response.status_code != expected:
                        wrong.append(f"{role} {method} {path}: {response.status_code}, expected {expected}")
                assert response.status_code < 500, (role, method, path, response.text)
    print(f"routes × roles checked: {checked}")
    assert wrong == [], "\n".join(wrong)


PAGE_ALLOWED: dict[str, set[str]] = {
    "/sign-in": EVERYONE,
    "/account": SIGNED_IN,
    "/account/password": SIGNED_IN,
    "/account/api": SIGNED_IN,
    "/workforce": ADMINS,
    "/workforce/users/{username}": ADMINS,
    "/workforce/teams": ADMINS,
    "/review": REVIEWERS,
    "/review/work": REVIEWERS,
    "/reviewers": OPERATORS,
    "/review/tasks/{name}/image": NOBODY,  # only the reviewer holding the task's lease, tested in test_web_portal
    "/dashboard": OPERATORS,
    "/dashboard/training-progress": OPERATORS,
    "/storage": OPERATORS,
    "/storage/thumbnail/{key:path}": OPERATORS,
    "/storage/download/{key:path}": OPERATORS,
    "/storage/outcome/{run_id}": OPERATORS,
    "/parameters": OPERATORS,
    "/parameters/{name}": OPERATORS,
    "/models": OPERATORS,
    "/models/{version}": OPERATORS,
    "/models/{version}/export.onnx": OPERATORS,
    "/runs": OPERATORS,
    "/runs/{run_id:path}": OPERATORS,
    "/detections": OPERATORS,
    "/detections/export.csv": OPERATORS,
}
PAGE_VALUES = {"username": "admin", "name": "Minimum-F1-Score", "key:path": "manifests/page.json",
               "version": "v404", "run_id:path": "no-such-run", "run_id": "no-such-run"}


def _page_routes() -> set[str]:
    from labelloop.console.pages import router as console
    from labelloop.detection.pages import router as detection
    from labelloop.modeling.pages import router as modeling
    from labelloop.parameters.pages import router as parameters
    from labelloop.review.pages import router as review
    from labelloop.runs.pages import router as runs
    from labelloop.storage.pages import router as storage
    from labelloop.workforce.pages import router as workforce

    routers = (workforce, review, console, storage, parameters, modeling, runs, detection)
    return {route.path for router in routers for route in router.routes if "GET" in route.methods}


def _browser(server: Server, role: str, password: str | None) -> httpx.Client:
    browser = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    if role == "anonymous":
        return browser
    page = browser.get("/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    username = "admin" if role == "admin" else f"p-{role}"
    signed_in = browser.post("/sign-in", data={"username": username, "password": password, "csrf_token": token})
    assert signed_in.status_code == 303 and "password" not in signed_in.headers["location"], signed_in.text[:300]
    return browser


def test_every_page_is_in_the_table() -> None:
    assert _page_routes() == set(PAGE_ALLOWED)


def test_each_role_sees_only_its_pages(matrix_server: Server) -> None:
    passwords: dict[str, str | None] = {"anonymous": None, "admin": ADMIN_PASSWORD}
    with matrix_server.client() as admin:
        for role in ("worker", "consumer", "operator"):
            admin.post("/users", json={"username": f"p-{role}", "role": role, "password": "page-password-1"})
            with matrix_server.client(matrix_server.token(f"p-{role}", "page-password-1")) as api:
                api.post("/auth/password", json={"current_password": "page-password-1",
                                                 "new_password": "page-password-2"})
            passwords[role] = "page-password-2"
    wrong, checked = [], 0
    for role in ROLES:
        browser = _browser(matrix_server, role, passwords[role])
        for path, allowed in sorted(PAGE_ALLOWED.items()):
            url = re.sub(r"\{([\w:]+)\}", lambda m: PAGE_VALUES[m.group(1)], path)
            response = browser.get(url)
            checked += 1
            assert response.status_code < 500, (role, path, response.text[:300])
            to_sign_in = response.status_code in (302, 303, 307) and "/sign-in" in response.headers["location"]
            refused = response.status_code == 403 or to_sign_in
            if role in allowed and refused:
                wrong.append(f"{role} {path}: refused ({response.status_code})")
            if role not in allowed and not refused:
                wrong.append(f"{role} {path}: let in ({response.status_code})")
            if role not in allowed and role == "anonymous" and not to_sign_in:
                wrong.append(f"anonymous {path}: {response.status_code}, expected a redirect to sign in")
    print(f"pages × roles checked: {checked}")
    assert wrong == [], "\n".join(wrong)


HUGE = str(2**70)  # beyond the 64-bit integers either database holds


def test_numbers_beyond_64_bits_are_refused_with_a_reason_not_a_crash(matrix_server: Server) -> None:
    with matrix_server.client() as api:
        feed = api.get("/notifications", params={"after_id": HUGE})
        assert feed.status_code == 422 and "after_id" in feed.text, feed.text
        revoke = api.delete(f"/tokens/{HUGE}")
        assert revoke.status_code == 422 and "token_id" in revoke.text, revoke.text
        assert api.get("/notifications", params={"after_id": str(2**31 - 1)}).json() == []
        beyond = api.get("/notifications", params={"after_id": str(2**31)})
        assert beyond.status_code == 422 and "2147483647" in beyond.text, beyond.text
    browser = _browser(matrix_server, "admin", ADMIN_PASSWORD)
    for url in (f"/detections?page={HUGE}", f"/runs?page={HUGE}", f"/storage?page={HUGE}"):
        response = browser.get(url)
        assert response.status_code in (200, 422), (url, response.status_code, response.text[:300])
        if response.status_code == 422:
            assert "cannot be stored or searched for" in response.text, response.text
