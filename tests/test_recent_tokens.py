"""Remembered bearer tokens (the hot ``POST /detect`` path): a valid token skips the database for a moment,
and any change to a user or token forgets it at once. Runs the workforce service on a real (SQLite) database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from labelloop import db
from labelloop.workforce import service
from labelloop.workforce.models import ApiToken, Role, User

pytestmark = pytest.mark.same_on_every_database  # in-process, on its own SQLite file


@pytest.fixture
def database(tmp_path: Path) -> Iterator[None]:
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    service.recent_tokens.forget_all()
    yield
    db.close()


def new_token(username: str, ttl: timedelta | None = None) -> str:
    with db.session() as session:
        user, _ = service.create_user(username, Role.CONSUMER, session=session)
        token, _ = service.issue_token(user, session=session, ttl=ttl)
    return token


def verify(token: str) -> str:
    """The database check every route makes (it remembers a valid token); the user's name."""
    with db.session() as session:
        return service.user_for_token(token, session=session).username


def test_a_verified_token_is_remembered_until_a_user_or_token_changes(database: None) -> None:
    token = new_token("carol")
    assert service.recent_tokens.user(token) is None  # not verified yet
    verify(token)  # the first use of a minute records last_used_at: not a change of anyone's access
    remembered = service.recent_tokens.user(token)
    assert remembered.username == "carol" and remembered.role == Role.CONSUMER.value
    assert inspect(remembered).transient  # a copy in no session: nothing a request's session does can expire it
    assert remembered.password_hash is None  # the hash is not kept in memory
    assert service.recent_tokens.user(token + "x") is None
    with db.session() as session:  # an unrelated write keeps it
        service.create_team("night shift", session=session)
    assert service.recent_tokens.user(token).username == "carol"
    with db.session() as session:
        user = service.get_user("carol", session=session)
        service.revoke_token(user, service.user_tokens(user, session=session)[0].id, session=session)
    assert service.recent_tokens.user(token) is None
    with pytest.raises(service.AuthError, match="revoked"):
        verify(token)


@pytest.mark.parametrize("change", ["disable", "role", "new token"])
def test_any_user_or_token_change_forgets_every_remembered_token(database: None, change: str) -> None:
    token, other = new_token("dave"), new_token("erin")
    for t in (token, other, token, other):
        verify(t)
    assert service.recent_tokens.user(token) and service.recent_tokens.user(other)
    with db.session() as session:
        user = service.get_user("dave", session=session)
        if change == "disable":
            service.set_disabled(user, True, session=session)
        elif change == "role":
            user.role = Role.OPERATOR.value
        else:
            service.issue_token(user, session=session)
    assert service.recent_tokens.user(token) is None and service.recent_tokens.user(other) is None


def test_a_lookup_that_overlapped_a_change_is_not_remembered(database: None) -> None:
    token = new_token("frank")
    verify(token)
    with db.session() as reader:
        generation = service.recent_tokens.generation  # a lookup starts, reads the token as valid …
        row = reader.scalar(select(ApiToken))
        user = reader.get(User, row.user_id)
        with db.session() as writer:  # … while another request revokes it and commits
            service.revoke_user_tokens(service.get_user("frank", session=writer), session=writer)
        service.recent_tokens.remember(row.token_hash, user, float("inf"), generation)
    assert service.recent_tokens.user(token) is None


def test_a_remembered_token_lapses_at_its_expiry_and_after_the_memory_window(database: None) -> None:
    short = new_token("gina", ttl=timedelta(seconds=1))
    verify(short)
    verify(short)
    assert service.recent_tokens.user(short) is not None
    time.sleep(1.1)
    assert service.recent_tokens.user(short) is None
    with pytest.raises(service.AuthError, match="expired"):
        verify(short)
    memory = service.RecentTokens(seconds=0.2)
    memory.remember(service._token_digest("llp_t"), User(username="h"), float("inf"), memory.generation)
    assert memory.user("llp_t").username == "h"
    time.sleep(0.25)
    assert memory.user("llp_t") is None


def test_recording_a_tokens_last_use_forgets_nothing(database: None) -> None:
    """``last_used_at`` is written once a minute per token in use: were it a token change, every remembered
    token would be forgotten once a minute per active token. A change beside it still counts."""
    token, other = new_token("hana"), new_token("ivan")
    verify(token)
    generation = service.recent_tokens.generation
    with db.session() as session:  # the other token's first use of a minute, then another one's a minute on
        assert service.user_for_token(other, session=session).username == "ivan"
        assert session.scalar(select(ApiToken).where(ApiToken.token_hash == service._token_digest(other))
                              ).last_used_at is not None
    with db.session() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == service._token_digest(token)))
        row.last_used_at = row.last_used_at + timedelta(minutes=2)
    assert service.recent_tokens.generation == generation
    assert service.recent_tokens.user(token).username == "hana"
    assert service.recent_tokens.user(other).username == "ivan"
    with db.session() as session:  # the last use and a revocation in one flush: forgotten
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == service._token_digest(token)))
        row.last_used_at = row.last_used_at + timedelta(minutes=2)
        row.revoked_at = db.utcnow()
    assert service.recent_tokens.user(token) is None and service.recent_tokens.user(other) is None
