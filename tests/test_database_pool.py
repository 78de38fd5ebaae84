"""The application database's PostgreSQL pool: a connection the server has closed (``pg_terminate_backend``, as a
server restart or an idle timeout would) is replaced at checkout, and a checkout sends nothing to the server (the
pre-ping it replaces cost a round trip per request)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from conftest import wait_until
from labelloop import db
from labelloop.db import text

pytestmark = pytest.mark.same_on_every_database  # PostgreSQL databases of their own, whatever --database says


def admin(url: str) -> psycopg.Connection[Any]:
    """A connection of its own to the database at ``url``, each statement its own transaction (fresh statistics)."""
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def end_sessions(url: str, pids: list[int]) -> None:
    """End the sessions ``pids`` as an administrator would, and wait until the server has closed them."""
    with admin(url) as connection:
        assert all(connection.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
                   for pid in pids)
        wait_until(lambda: not connection.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                                  (pids,)).fetchone()[0], timeout=10)


def backend_pid(engine: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_pooled_connection_the_server_ended_does_not_fail_the_next_request(postgres_database: str) -> None:
    """Sessions ended while their connections sat in the pool: the next requests (one connection at a time, then
    two at once) are answered on new connections, with no error."""
    engine = db.make_engine(postgres_database, pool_size=2)
    try:
        ended = backend_pid(engine)
        end_sessions(postgres_database, [ended])
        assert backend_pid(engine) != ended
        with engine.connect() as first, engine.connect() as second:  # both kept in the pool once returned
            pids = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (first, second)]
        end_sessions(postgres_database, pids)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
        with engine.connect() as first, engine.connect() as second:
            again = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in (first, second)]
        assert not set(again) & set(pids)
    finally:
        engine.dispose()


def test_a_checkout_sends_nothing_to_the_server(postgres_database: str) -> None:
    """Taking a live connection from the pool leaves its server session as it was (idle, its state unchanged since
    it was returned): no ping before the request's first statement."""
    engine = db.make_engine(postgres_database, pool_size=1)
    try:
        pid = backend_pid(engine)
        with admin(postgres_database) as watcher:
            def session() -> tuple[Any, ...]:
                return watcher.execute("SELECT state, state_change FROM pg_stat_activity WHERE pid = %s",
                                       (pid,)).fetchone()

            returned = session()
            assert returned[0] == "idle"
            time.sleep(0.05)
            with engine.connect() as connection:
                assert session() == returned
                assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
    finally:
        engine.dispose()
