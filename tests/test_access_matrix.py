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
    ("POST", "/api/v1/detect"): DETECTORS,
    ("GET", "/api/v1/schedules"): OPERATORS,
    ("GET", "/api/v1/detections"): OPERATORS,
    ("GET", "/api/v1/detections/export.csv"): OPERATORS,
    ("GET", "/api/v1/human-loops"): REVIEWERS,
    ("GET", "/api/v1/human-loops/{name}"): REVIEWERS,
    ("POST", "/api/v1/human-loops/{name}/answer"): REVIEWERS,
    ("POST", "/api/v1/human-loops/{name}/stop"): OPERATORS,
    ("GET", "/api/v1/task-template"): REVIEWERS,
    ("PUT", "/api/v1/task-template"): OPERATORS,
    ("POST", "/api/v1/sampling/run"): OPERATORS,
    ("GET", "/api/v1/sampling/summary"): OPERATORS,
    ("GET", "/healthz"): EVERYONE,
}

# Bodies that make an allowed call succeed where an empty body could not tell "allowed" from "refused".
BODIES = {("POST", "/api/v1/auth/token"): {"json": {"username": "admin", "password": ADMIN_PASSWORD}}}
PATH_VALUES = {"token_id": "999999", "name": "Minimum-F1-Score", "key": "images_for_detection/matrix.png",
               "run_id": "no-such-run", "version": "v404"}


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = Server(home=tmp_path_factory.mktemp("matrix") / "home",
                    env=server_env(LABELLOOP_S3_EVENTS_TOKEN="s3-shared-secret")).start()
    yield server
    server.stop()


def _tokens(server: Server) -> dict[str, str | None]:
    tokens: dict[str, str | None] = {"anonymous": None, "admin": server.token()}
    with server.client() as admin:
        for role in ("worker", "consumer", "operator"):
            password = admin.post("/users", json={"username": f"m-{role}", "role": role}).json()[
                "temporary_password"]
            tokens[role] = server.token(f"m-{role}", password)
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
    for (method, path), allowed in sorted(ALLOWED.items()):
        for role in ROLES:
            headers = {"Authorization": f"Bearer {tokens[role]}"} if tokens[role] else {}
            body = BODIES.get((method, path), {"content": b""} if method in ("PUT", "POST") else {})
            response = httpx.request(method, matrix_server.url + _url(path), headers=headers, timeout=60, **body)
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
