"""Shared fixtures: a real ``labelloop serve`` process on a free port, with its own home folder.

The servers run on the embedded default (SQLite) unless the run asks for PostgreSQL with
``pytest --database=postgresql`` (or ``LABELLOOP_TEST_DATABASE=postgresql``): then each server home gets
its own fresh database on ``LABELLOOP_TEST_POSTGRES_URL`` (default the local server, trust auth), and every
database this run created is dropped when it ends.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

# The `browser` fixture of the browser tests (Debian Chromium through Playwright).
pytest_plugins = ["web"]

ADMIN_PASSWORD = "admin-password-for-tests"
LABELLOOP = [sys.executable, "-m", "labelloop"]
POSTGRES_URL = os.environ.get("LABELLOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DATABASE_PREFIX = "labelloop_test_"
# The one TLS context of the tests' HTTP clients: httpx builds a new one per client otherwise (loading the CA
# bundle: 15-35 ms of CPU each, and a server start alone polls /healthz some 25 times). The test servers speak
# plain HTTP, so it is never used to verify anything.
TLS = ssl.create_default_context()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--database", choices=("sqlite", "postgresql"),
                     default=os.environ.get("LABELLOOP_TEST_DATABASE", "sqlite"),
                     help="Database of the test servers: sqlite (default) or postgresql (a fresh database per "
                          "server home on LABELLOOP_TEST_POSTGRES_URL)")


# A test marked so proves the same whatever --database says: `make test` runs it in one of its two passes.
SAME_ON_EVERY_DATABASE = "same_on_every_database"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{SAME_ON_EVERY_DATABASE}: the test uses no database that --database "
                            "chooses (in-process code on its own SQLite file, scripts given their databases, servers "
                            "on a PostgreSQL database of their own), so one of `make test`'s passes runs it; a server "
                            "it starts on the chosen database fails it")
    Postgres.mode = config.getoption("--database")
    if Postgres.mode == "postgresql":
        Postgres.drop_leftovers()


def pytest_sessionfinish(session: pytest.Session) -> None:
    Postgres.drop_created()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember the test being set up (its fixtures start servers) for ``refuse_chosen_database``."""
    Running.item = item


class Running:
    """The test whose set-up, call or tear-down runs now."""

    item: pytest.Item | None = None


def refuse_chosen_database(env: dict[str, str], what: str) -> None:
    """Fail a test marked ``same_on_every_database`` that starts ``what`` on the database --database chooses
    (its environment names no ``LABELLOOP_DATABASE_URL``): that test would prove something else in each pass."""
    item = Running.item
    if item is not None and item.get_closest_marker(SAME_ON_EVERY_DATABASE) and "LABELLOOP_DATABASE_URL" not in env:
        raise AssertionError(f"{item.nodeid} is marked {SAME_ON_EVERY_DATABASE}, yet it starts {what} on the "
                             "database --database chooses: remove the mark or give it a database of its own")


def pytest_report_header(config: pytest.Config) -> str:
    return f"labelloop test servers on: {config.getoption('--database')}"


class Postgres:
    """Databases for test servers on the PostgreSQL server at ``POSTGRES_URL``: one per home, dropped at the end."""

    mode = "sqlite"
    _created: dict[str, str] = {}
    _numbers = itertools.count()

    @staticmethod
    def _admin() -> Any:
        import psycopg

        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)

    @classmethod
    def available(cls) -> str | None:
        """``None`` when the server answers, else why not."""
        try:
            with cls._admin() as connection:
                connection.execute("SELECT 1")
        except Exception as exc:
            return f"PostgreSQL at {POSTGRES_URL} is not reachable: {exc}"
        return None

    @classmethod
    def url(cls, name: str) -> str:
        from sqlalchemy import make_url

        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    @classmethod
    def create(cls, purpose: str) -> str:
        """A new, empty database; its URL."""
        name = f"{TEST_DATABASE_PREFIX}{os.getpid()}_{next(cls._numbers)}"
        with cls._admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        cls._created[name] = purpose
        return cls.url(name)

    @classmethod
    def for_home(cls, home: Path) -> str:
        """The database of a server home (created on first use, so a restart finds its data again)."""
        key = str(home.resolve())
        for name, purpose in cls._created.items():
            if purpose == key:
                return cls.url(name)
        return cls.create(key)

    @classmethod
    def drop(cls, name: str) -> None:
        with cls._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @classmethod
    def drop_created(cls) -> None:
        for name in list(cls._created):
            with contextlib.suppress(Exception):
                cls.drop(name)
            cls._created.pop(name, None)

    @classmethod
    def drop_leftovers(cls) -> None:
        """Drop test databases of earlier runs whose pytest process is gone."""
        with contextlib.suppress(Exception), cls._admin() as connection:
            names = [row[0] for row in connection.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (TEST_DATABASE_PREFIX + "%",))]
            for name in names:
                pid = name[len(TEST_DATABASE_PREFIX):].split("_", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def postgres_database() -> str:
    """A fresh PostgreSQL database for this test (whatever --database says), dropped when the run ends."""
    problem = Postgres.available()
    if problem:
        if os.environ.get("LABELLOOP_REQUIRE_POSTGRES"):
            pytest.fail(problem)
        pytest.skip(problem)
    return Postgres.create("test")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A function giving a fresh, empty application database's URL (each call another one), on SQLite and on
    PostgreSQL (skipped without a server); the in-process database is closed afterwards."""
    from labelloop import db

    if request.param == "sqlite":
        numbers = itertools.count()
        yield lambda: f"sqlite:///{tmp_path / f'app{next(numbers)}.db'}"
    else:
        request.getfixturevalue("postgres_database")  # skips the test when no PostgreSQL server answers
        yield lambda: Postgres.create("test")  # dropped when the run ends
    db.close()


@contextlib.contextmanager
def mounted(mount: Path, kind: str, options: str = "") -> Iterator[Path | None]:
    """A file system of ``kind`` (``tmpfs``, ``ramfs``) mounted at ``mount`` while the block runs (the tests run as
    root, as CI does; unmounted lazily at the end), or None where this process may not mount one."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", kind, *(["-o", options] if options else []), kind, str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        print(f"cannot mount a {kind} here: {done.stderr.decode().strip()}")
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def no_xattr_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on a file system without user extended attributes: a ramfs (they answer ``EOPNOTSUPP``) where one
    can be mounted, else a folder of ``tmp_path`` where ``os.getxattr`` and ``os.setxattr`` answer as on a ramfs."""
    with mounted(tmp_path / "ramfs", "ramfs") as mount:
        if mount is None:
            def unsupported(*args: Any, **kwargs: Any) -> bytes:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            monkeypatch.setattr(os, "getxattr", unsupported)
            monkeypatch.setattr(os, "setxattr", unsupported)
            mount = tmp_path / "ramfs"
        yield mount


def run_script(script: str, folder: Path, *args: str, timeout: float = 120) -> list[list[str]]:
    """Run a Python ``script`` in a fresh interpreter with ``folder`` and ``args`` as its arguments (a process
    of its own for DBOS, a process-wide singleton); returns its printed lines that hold ``|``, split at it."""
    done = subprocess.run([sys.executable, "-c", script, str(folder), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [line.split("|") for line in done.stdout.splitlines() if "|" in line]


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


def created_objects(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects an "object created" run covered, each ``{"key", "etag", "source", …}``: the uploads of a
    batch for detection (one run detects the uploads that arrive together), or its one object."""
    event = (run.get("input") or {}).get("args", [{}])[0]
    return event.get("uploads", [event])


def end_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` and wait for the process to exit (SIGKILL after 30 s); nothing when there is none."""
    if process is None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
        refuse_chosen_database(self.env, "a server")
        self.home.mkdir(parents=True, exist_ok=True)
        seed_backbone(Path(self.env.get("LABELLOOP_CACHE_FOLDER") or self.home / "cache"))
        if Postgres.mode == "postgresql" and "LABELLOOP_DATABASE_URL" not in self.env:
            # Several test servers may be up at once: keep each one's connections few (max_connections is 100).
            self.env = {"LABELLOOP_DATABASE_POOL_SIZE": "4", **self.env,
                        "LABELLOOP_DATABASE_URL": Postgres.for_home(self.home)}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*LABELLOOP, "serve", "--home", str(self.home), "--port", str(self.port), *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        # Polled often: until it listens, a poll is a refused connection; each test starts one or more servers.
        wait_until(self._healthy, timeout, 0.05, f"server on port {self.port} (log: {self.log_path})")
        self.admin_token = None
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2, verify=TLS).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        end_process(self.process, sig)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def token(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        # As long as the API clients wait (httpx's default is 5 s): a sign-in checks the password with argon2, and
        # several at once on a loaded machine (or a server given argon2's default parameters) take longer than that.
        response = httpx.post(f"{self.url}/api/v1/auth/token", data={"username": username, "password": password},
                              timeout=60, verify=TLS)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def user_token(self, username: str, role: str, password: str = "own-password-for-tests") -> str:
        """A token of a new user of ``role`` who has replaced the temporary password with ``password`` (a
        temporary password opens only ``POST /auth/password`` and ``GET /me`` on the API)."""
        with self.client() as admin:
            created = admin.post("/users", json={"username": username, "role": role})
            assert created.status_code == 201, created.text
        temporary = created.json()["temporary_password"]
        with self.client(self.token(username, temporary)) as api:
            changed = api.post("/auth/password", json={"current_password": temporary, "new_password": password})
            assert changed.status_code == 200, changed.text
        return self.token(username, password)

    def client(self, token: str | None = None) -> httpx.Client:
        if token is None:
            self.admin_token = self.admin_token or self.token()
            token = self.admin_token
        return httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token}"},
                            timeout=60, verify=TLS)

    def wait_run(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until run ``run_id`` has finished and return it with its steps."""
        with self.client() as api:
            def finished() -> dict[str, Any] | None:
                response = api.get(f"/runs/{run_id}")
                if response.status_code == 404:
                    return None
                run = response.json()
                return run if run["status"] in ("SUCCESS", "ERROR", "CANCELLED") else None

            return wait_until(finished, timeout, 0.1, f"run {run_id}")  # a look is one small query


_BACKBONE = Path(os.environ.get("LABELLOOP_TEST_BACKBONE_FOLDER", f"/tmp/labelloop-test-backbone-{os.getuid()}"))


def seed_backbone(cache: Path) -> None:
    """Give a test server's cache the backbone ONNX file, built once per machine (hard links, else copies).

    Each server would otherwise export it anew (torch, some 20-60 s of CPU); the build itself is covered by
    tests/modeling/test_backbone.py, and a server still rebuilds a file whose fingerprint is stale.
    """
    from labelloop.modeling.export import BACKBONE_FILENAME, ensure_backbone_onnx

    built = ensure_backbone_onnx(_BACKBONE)
    cache.mkdir(parents=True, exist_ok=True)
    for source in (built, built.with_name(built.name + ".json")):
        target = cache / source.name.replace(built.name, BACKBONE_FILENAME)
        if not target.exists():
            try:
                os.link(source, target)
            except FileExistsError:  # a server sharing this cache, started beside this one, linked it just now
                pass
            except OSError:
                shutil.copyfile(source, target)


# The argon2id parameters of the test servers: OWASP's minimum, the lowest the settings allow (a hash or check
# costs some 0.03 s of CPU on a Zen 3 core, against 0.25 s at the defaults, and the servers of one pass make
# hundreds). tests/test_startup.py checks the defaults, the floor and the unknown user's equal-cost check.
PASSWORD_HASH_FLOOR = {"LABELLOOP_PASSWORD_HASH_MEMORY_KIB": "19456", "LABELLOOP_PASSWORD_HASH_PASSES": "2",
                       "LABELLOOP_PASSWORD_HASH_LANES": "1"}


def server_env(**extra: str) -> dict[str, str]:
    """The environment for a test server: the admin password set, passwords hashed at the settings' floor
    (``PASSWORD_HASH_FLOOR``), other LABELLOOP_ settings cleared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    env.update(PASSWORD_HASH_FLOOR)
    env.update({"LABELLOOP_ADMIN_PASSWORD": ADMIN_PASSWORD, "LABELLOOP_LOG_FORMAT": "json",
                "LABELLOOP_SCHEDULER_POLLING_SECONDS": "0.5", "LABELLOOP_QUEUE_POLLING_SECONDS": "0.1",
                "LABELLOOP_IDLE_QUEUE_POLLING_SECONDS": "0.5",
                "LABELLOOP_UNDO_SECONDS": "1"})  # answers are applied 1 s after they are sent
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


# ── scale-out: worker processes and an S3 API server ─────────────────────────


@dataclass
class Worker:
    """A ``labelloop worker`` subprocess; its executor id is read from the line it prints when it runs."""

    home: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    executor_id: str | None = None

    @property
    def log_path(self) -> Path:
        return self.home.parent / f"{self.home.name}-worker.log"

    def start(self, timeout: float = 90.0) -> Worker:
        refuse_chosen_database(self.env, "a worker")
        self.home.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([*LABELLOOP, "worker", "--home", str(self.home), *self.args],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)

        def running() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n"
                                     f"{self.log_path.read_text()[-4000:]}")
            with self.log_path.open("rb") as log:
                log.seek(offset)
                for line in log.read().decode(errors="replace").splitlines():
                    if line.startswith("labelloop worker "):
                        return line.split()[2]
            return None

        self.executor_id = wait_until(running, timeout, 0.05, f"worker in {self.home} (log: {self.log_path})")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        end_process(self.process, sig)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class S3Server:
    """A real S3 API server on loopback: moto's server mode (``python -m moto.server``), in its own process."""

    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    credentials: dict[str, str] = field(default_factory=lambda: {
        "AWS_ACCESS_KEY_ID": "labelloop-test", "AWS_SECRET_ACCESS_KEY": "labelloop-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1"})
    _buckets: itertools.count = field(default_factory=itertools.count)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                             "-p", str(self.port)], env={**env, **self.credentials},
                                            stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"S3 server exited: {self.log_path.read_text()[-2000:]}")
            try:
                return httpx.get(self.endpoint, timeout=2, verify=TLS).status_code < 500
            except httpx.HTTPError:
                return False

        wait_until(up, 30, 0.1, "the S3 API server")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.credentials["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.credentials["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.credentials["AWS_SECRET_ACCESS_KEY"])

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"labelloop-test-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str) -> dict[str, str]:
        """Settings that put a labelloop process on ``bucket``."""
        return {"LABELLOOP_STORAGE_URL": f"s3://{bucket}", "LABELLOOP_S3_ENDPOINT_URL": self.endpoint,
                **self.credentials}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 API server for the whole run; each test takes its own bucket."""
    server = S3Server(log_path=tmp_path_factory.mktemp("s3") / "s3-server.log").start()
    yield server
    server.stop()
