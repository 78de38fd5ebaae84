"""Start-up does only what a start needs: importing the app loads no scipy and hashes no password. What it no
longer does there keeps its results and protections: the silent-error bound (scipy.special, loaded at its first
use) is the Clopper-Pearson bound bit for bit, and an unknown user's sign-in verifies an argon2 hash of the same
cost as a known user's, hashing nothing, whatever the configured argon2 parameters (argon2-cffi's by default, never
below OWASP's minimum). The times are bench/bench_startup.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher, extract_parameters, profiles
from argon2.exceptions import VerifyMismatchError
from pydantic import ValidationError
from scipy.stats import beta
from sqlalchemy import select

import labelloop
from conftest import Server
from labelloop import config, db
from labelloop.detection import silent_errors
from labelloop.workforce import service
from labelloop.workforce.models import Role, User

pytestmark = pytest.mark.same_on_every_database  # a fresh interpreter, in-process SQLite, a server's own

SRC = Path(labelloop.__file__).resolve().parent.parent  # the tree under test
DEFERRED = ("scipy.stats", "scipy.special")
# Counts the argon2 hashes made while the app is imported, in a fresh interpreter.
IMPORT_CHECK = f"""
import json, sys, argon2
made = []
hash_ = argon2.PasswordHasher.hash
argon2.PasswordHasher.hash = lambda self, *a, **k: made.append(1) or hash_(self, *a, **k)
import labelloop.app
print(json.dumps({{"hashes": len(made), "loaded": [m for m in {DEFERRED!r} if m in sys.modules]}}))
"""


class CountingHasher(PasswordHasher):
    """The service's hasher, recording what it hashes and which hashes it verifies against."""

    def __init__(self, like: PasswordHasher) -> None:
        super().__init__(time_cost=like.time_cost, memory_cost=like.memory_cost, parallelism=like.parallelism,
                         hash_len=like.hash_len, salt_len=like.salt_len, type=like.type)
        self.made: list[str] = []
        self.verified: list[str] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        made = super().hash(password, salt=salt)
        self.made.append(made)
        return made

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


def settings_with(monkeypatch: pytest.MonkeyPatch, **values: str) -> config.Settings:
    """Settings read from an environment whose ``LABELLOOP_PASSWORD_HASH_*`` are ``values`` (the others unset),
    in force while the test runs."""
    for name in ("MEMORY_KIB", "PASSES", "LANES"):
        monkeypatch.delenv(f"LABELLOOP_PASSWORD_HASH_{name}", raising=False)
    for name, value in values.items():
        monkeypatch.setenv(f"LABELLOOP_PASSWORD_HASH_{name.upper()}", value)
    settings = config.Settings()
    monkeypatch.setattr(config, "_settings", settings)
    return settings


@pytest.fixture
def database(tmp_path: Path) -> Iterator[None]:
    """A real SQLite database."""
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    yield
    db.close()


OWASP_MINIMUM = {"memory_kib": "19456", "passes": "2", "lanes": "1"}  # the settings' floor


@pytest.fixture(params=[{}, OWASP_MINIMUM], ids=["defaults", "floor"])
def hasher(database: None, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> CountingHasher:
    """A counting hasher with the configured parameters: the defaults, or the lowest the settings allow."""
    settings_with(monkeypatch, **request.param)
    counting = CountingHasher(service._hasher())
    monkeypatch.setattr(service, "_hasher", lambda: counting)
    return counting


def add_user(username: str, password: str) -> None:
    with db.session() as session:
        service.create_user(username, Role.WORKER, session=session, password=password, temporary=False)


def test_importing_the_app_loads_no_scipy_and_hashes_no_password() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    found = subprocess.run([sys.executable, "-c", IMPORT_CHECK], env=env, capture_output=True, text=True,
                           check=True, timeout=120)
    assert json.loads(found.stdout) == {"hashes": 0, "loaded": []}


def test_a_started_server_has_loaded_no_scipy(make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server(LABELLOOP_DATABASE_URL=f"sqlite:///{tmp_path / 'own.db'}")  # one pass of make test
    maps = Path(f"/proc/{server.process.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc here")
    server.token()  # a sign-in too
    assert "/scipy/" not in maps.read_text()


def test_an_unknown_users_sign_in_verifies_an_argon2_hash_as_a_known_users_does(hasher: CountingHasher) -> None:
    add_user("known", "known-password")
    with pytest.raises(service.AuthError):
        service.sign_in("nobody", "some-password", "192.0.2.1")
    with pytest.raises(service.AuthError):
        service.sign_in("known", "wrong-password", "192.0.2.1")
    assert len(hasher.verified) == 2
    unknown, known = (extract_parameters(h) for h in hasher.verified)
    assert unknown == known  # the same argon2 cost: the same time
    assert service.sign_in("known", "known-password", "192.0.2.1") > 0


def test_sign_ins_hash_nothing_and_the_dummy_hash_costs_what_a_users_does(hasher: CountingHasher) -> None:
    add_user("known", "known-password")
    service.sign_in("known", "known-password", "192.0.2.1")
    with pytest.raises(service.AuthError):  # the dummy's own password is no way in
        service.sign_in("nobody", "labelloop-no-such-user", "192.0.2.1")
    assert len(hasher.made) == 1  # the user's own: no sign-in makes a hash (the first one neither)
    dummy = hasher.verified[1]
    assert extract_parameters(dummy) == extract_parameters(hasher.made[0])
    assert not hasher.check_needs_rehash(dummy)
    with pytest.raises(VerifyMismatchError):  # well formed (a malformed hash fails at once, for free): hashed, compared
        hasher.verify(dummy, "labelloop-no-such-user")


def test_the_default_parameters_are_argon2s_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_with(monkeypatch)
    made = service.hash_password("a-password")
    assert extract_parameters(made) == profiles.RFC_9106_LOW_MEMORY == profiles.get_default_parameters()
    assert extract_parameters(service._dummy_hash(service._hasher())) == extract_parameters(made)


def test_the_configured_parameters_hash_and_check_and_earlier_hashes_verify_and_are_made_again(
        database: None, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_with(monkeypatch)
    add_user("before", "before-password")  # argon2's defaults
    settings_with(monkeypatch, **OWASP_MINIMUM)
    add_user("after", "after-password")
    floor = extract_parameters(service.hash_password("a-password"))
    assert (floor.memory_cost, floor.time_cost, floor.parallelism) == (19456, 2, 1)
    assert extract_parameters(service._dummy_hash(service._hasher())) == floor
    with db.session() as session:
        hashes = {user.username: user.password_hash for user in session.scalars(select(User))}
    assert extract_parameters(hashes["after"]) == floor
    assert extract_parameters(hashes["before"]) == profiles.RFC_9106_LOW_MEMORY
    assert service.sign_in("before", "before-password", "192.0.2.1") > 0
    assert service.sign_in("after", "after-password", "192.0.2.1") > 0
    with db.session() as session:  # the sign-in hashed the older password again, with the configured parameters
        rehashed = {user.username: user.password_hash for user in session.scalars(select(User))}
    assert extract_parameters(rehashed["before"]) == floor
    assert rehashed["after"] == hashes["after"]
    assert service.sign_in("before", "before-password", "192.0.2.1") > 0
    with pytest.raises(service.AuthError):
        service.sign_in("before", "wrong-password", "192.0.2.1")


@pytest.mark.parametrize(("name", "value", "allowed"), [("memory_kib", "19455", "19456"), ("passes", "1", "2"),
                                                        ("lanes", "0", "1")])
def test_parameters_below_owasps_minimum_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                      allowed: str) -> None:
    with pytest.raises(ValidationError, match=rf"password_hash_{name}\n.*greater than or equal to {allowed}"):
        settings_with(monkeypatch, **{name: value})


@pytest.mark.parametrize("level", [silent_errors.CONFIDENCE_LEVEL, 1 - 0.05 * silent_errors.STRATA_SPLIT[0]])
def test_the_bound_is_the_clopper_pearson_bound_bit_for_bit(level: float) -> None:
    """As beta.ppf gave it before scipy.stats left the start-up (bench/bound_identity.py checks millions)."""
    cases: list[tuple[int, Any]] = [(k, n) for n in range(1, 61) for k in range(n)]
    cases += [(0, 10**6), (3, 10**6), (12_345, 9_999_991)]
    got = [silent_errors.upper_bound(k, n, level) for k, n in cases]
    assert got == [float(beta.ppf(level, k + 1, n - k)) for k, n in cases]
    assert silent_errors.upper_bound(5, 5, level) == 1.0 and silent_errors.upper_bound(0, 0, level) is None
