"""Slowing down failed sign-ins: per username and per client address, doubling waits, forgotten after a while.

Runs the workforce service on a real (SQLite) database with a hand-moved clock, so it takes no real waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from labelloop import db
from labelloop.workforce import service

pytestmark = pytest.mark.same_on_every_database  # in-process, on its own SQLite file


@pytest.fixture
def database(tmp_path: Path) -> Iterator[None]:
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    yield
    db.close()


def fail(username: str, address: str, at) -> None:  # type: ignore[no-untyped-def]
    with db.session() as session:
        service.record_failure(username, address, now=at, session=session)


def waits(username: str, address: str, at) -> int | None:  # type: ignore[no-untyped-def]
    """Seconds the sign-in must wait, or None when it may go ahead."""
    with db.session() as session:
        try:
            service.check_throttle(username, address, now=at, session=session)
        except service.Throttled as exc:
            return exc.retry_after
    return None


def test_a_username_waits_longer_after_each_failure_and_is_forgiven_later(database: None) -> None:
    now = db.utcnow()
    for _ in range(service.USER_FREE_FAILURES - 1):
        fail("Alice", "10.0.0.1", now)
        assert waits("alice", "10.0.0.2", now) is None
    fail("alice", "10.0.0.1", now)
    assert waits("ALICE", "10.0.0.9", now) == service.FIRST_DELAY_SECONDS, "per username, whatever the address"
    assert waits("bob", "10.0.0.9", now) is None
    later = now + timedelta(seconds=service.FIRST_DELAY_SECONDS + 1)
    assert waits("alice", "10.0.0.9", later) is None
    fail("alice", "10.0.0.1", later)
    assert waits("alice", "10.0.0.9", later) == 2 * service.FIRST_DELAY_SECONDS
    for step in range(20):
        fail("alice", "10.0.0.1", later + timedelta(seconds=step))
    assert waits("alice", "10.0.0.9", later + timedelta(seconds=20)) <= service.MAX_DELAY_SECONDS
    # Long after the last failure the count starts again from zero.
    much_later = later + service.THROTTLE_WINDOW + timedelta(seconds=service.MAX_DELAY_SECONDS + 60)
    assert waits("alice", "10.0.0.9", much_later) is None
    fail("alice", "10.0.0.1", much_later)
    assert waits("alice", "10.0.0.9", much_later) is None


def test_an_address_trying_many_usernames_waits(database: None) -> None:
    now = db.utcnow()
    for i in range(service.ADDRESS_FREE_FAILURES):
        fail(f"user{i}", "192.0.2.7", now)
    assert waits("someone-else", "192.0.2.7", now) == service.FIRST_DELAY_SECONDS
    assert waits("someone-else", "192.0.2.8", now) is None


def test_sign_in_counts_only_wrong_passwords_and_a_success_clears_the_username(database: None) -> None:
    with db.session() as session:
        service.create_user("carol", "worker", password="carol-password", temporary=False, session=session)
    for _ in range(service.USER_FREE_FAILURES - 1):
        with pytest.raises(service.AuthError, match="wrong username or password"):
            service.sign_in("carol", "nope", "198.51.100.1")
    assert service.sign_in("carol", "carol-password", "198.51.100.1")
    with pytest.raises(service.AuthError):
        service.sign_in("carol", "nope", "198.51.100.1")
    assert waits("carol", "", db.utcnow()) is None, "the success cleared the earlier failures"
    for _ in range(service.USER_FREE_FAILURES):
        with pytest.raises(service.AuthError):
            service.sign_in("carol", "nope", "198.51.100.1")
    with pytest.raises(service.Throttled):
        service.sign_in("carol", "carol-password", "198.51.100.1")
