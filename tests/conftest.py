"""Shared fixtures: a real ``labelloop serve`` process on a free port, with its own home folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN_PASSWORD = "admin-password-for-tests"
LABELLOOP = [sys.executable, "-m", "labelloop"]


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass
class Server:
    """A ``labelloop serve`` subprocess; start, stop, kill and restart it like a user would."""

    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    admin_token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home.parent / f"{self.home.name}-server.log"

    def start(self, timeout: float = 60.0) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*LABELLOOP, "serve", "--home", str(self.home), "--port", str(self.port), *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, timeout, 0.2, f"server on port {self.port} (log: {self.log_path})")
        self.admin_token = None
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def token(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        response = httpx.post(f"{self.url}/api/v1/auth/token", data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def client(self, token: str | None = None) -> httpx.Client:
        if token is None:
            self.admin_token = self.admin_token or self.token()
            token = self.admin_token
        return httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token}"},
                            timeout=60)

    def wait_run(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until run ``run_id`` has finished and return it with its steps."""
        with self.client() as api:
            def finished() -> dict[str, Any] | None:
                response = api.get(f"/runs/{run_id}")
                if response.status_code == 404:
                    return None
                run = response.json()
                return run if run["status"] in ("SUCCESS", "ERROR", "CANCELLED") else None

            return wait_until(finished, timeout, 0.2, f"run {run_id}")


def server_env(**extra: str) -> dict[str, str]:
    """The environment for a test server: the admin password set, other LABELLOOP_ settings cleared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env.update({"LABELLOOP_ADMIN_PASSWORD": ADMIN_PASSWORD, "LABELLOOP_LOG_FORMAT": "json",
                "LABELLOOP_SCHEDULER_POLLING_SECONDS": "0.5", "LABELLOOP_QUEUE_POLLING_SECONDS": "0.1"})
    env.update(extra)
    return env


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers with their own home folder; every one is stopped at the end of the test."""
    started: list[Server] = []

    def make(home: Path | None = None, args: list[str] | None = None, **env: str) -> Server:
        server = Server(home=home or tmp_path / f"home{len(started)}", env=server_env(**env), args=args or [])
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    """A fresh server with default settings."""
    return make_server()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a whole test module (tests must not depend on each other's state)."""
    server = Server(home=tmp_path_factory.mktemp("shared") / "home", env=server_env()).start()
    yield server
    server.stop()
