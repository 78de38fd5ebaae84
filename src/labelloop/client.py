"""A small HTTP client of the labelloop API, used by the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from labelloop.config import Settings


class ClientError(Exception):
    """The server refused a request or could not be reached; the message says why."""


# The server's reason for a 403 (labelloop.web.dependencies.REFUSAL_HEADER), and the CLI's words for the fix.
REFUSAL_HEADER = "X-Labelloop-Refusal"
REFUSALS = {
    "temporary-password": "this account still has its temporary password: change it with `labelloop passwd "
                          "--current <temporary> --new <yours>`, then sign in again with `labelloop login`",
}


def credentials_file() -> Path:
    """Where ``labelloop login`` keeps tokens, one per server."""
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "labelloop" / "credentials.json"


def saved_tokens() -> dict[str, str]:
    """Tokens saved by ``labelloop login``, by server address."""
    path = credentials_file()
    return json.loads(path.read_text()) if path.is_file() else {}


def save_token(server: str, token: str) -> Path:
    """Remember ``token`` for ``server`` (file readable by the owner only)."""
    tokens = saved_tokens()
    tokens[server.rstrip("/")] = token
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(json.dumps(tokens, indent=2))
    return path


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return detail if isinstance(detail, str) else json.dumps(detail)


class Client:
    """Calls ``/api/v1`` on one server with a bearer token."""

    def __init__(self, settings: Settings, timeout: float = 60.0) -> None:
        self.server = settings.server.rstrip("/")
        self.http = httpx.Client(base_url=f"{self.server}/api/v1", timeout=timeout)
        token = settings.token or saved_tokens().get(self.server)
        if token is None and settings.username and settings.password:
            token = self.login(settings.username, settings.password)["access_token"]
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Exchange a username and password for a token."""
        return self.request("POST", "/auth/token", json={"username": username, "password": password})

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; a 4xx/5xx answer raises :class:`ClientError` with the server's reason."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.server}: {exc}") from exc
        if response.status_code == 401:
            raise ClientError(f"{_detail(response)} (sign in with: labelloop login)")
        if response.status_code >= 400:
            fix = REFUSALS.get(response.headers.get(REFUSAL_HEADER, "")) if response.status_code == 403 else None
            raise ClientError(f"HTTP {response.status_code}: {fix or _detail(response)}")
        content_type = response.headers.get("content-type", "")
        return response.json() if content_type.startswith("application/json") else response.content
