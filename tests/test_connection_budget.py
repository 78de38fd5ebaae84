"""The PostgreSQL connection budget: at start each process compares the most connections it may open with
max_connections and the connections in use on the real server, and warns, naming the settings, when they do not
fit (before, several workers failed under load with an opaque "too many clients")."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import psycopg
import pytest

from conftest import Server
from labelloop import db

pytestmark = pytest.mark.same_on_every_database  # PostgreSQL databases of its own


def test_the_formula_follows_the_pools() -> None:
    assert db.app_connections(10) + db.engine_connections(10) == 42
    assert db.app_connections(1) + db.engine_connections(1) == 6


def test_sqlite_has_no_budget() -> None:
    assert db.check_connection_budgets("sqlite:///x.db", "sqlite:///y.db", 10) == []


def test_budget_against_the_real_server(postgres_database: str, caplog: pytest.LogCaptureFixture) -> None:
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        most = int(connection.execute("SHOW max_connections").fetchone()[0])
        held = [psycopg.connect(postgres_database) for _ in range(3)]  # in use by "other processes"
        try:
            with caplog.at_level(logging.DEBUG, logger="labelloop.db"):
                small = db.check_connection_budgets(postgres_database, postgres_database, 1)[0]
                large = db.check_connection_budgets(postgres_database, postgres_database, most)[0]
        finally:
            for other in held:
                other.close()
    assert small["max_connections"] == large["max_connections"] == most
    assert small["in_use"] >= 4, "the three held connections and this test's own are counted"
    assert small["needed"] == 6 and large["needed"] == 4 * most + 2
    assert small["fits"] == (small["free"] >= 6)
    assert large["fits"] is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if small["fits"] else 2)
    text = warnings[-1].getMessage()
    assert f"LABELLOOP_DATABASE_POOL_SIZE={most}" in text and "max_connections" in text
    assert f"may open {4 * most + 2}" in text


def test_a_worker_too_large_for_the_server_says_so_at_start(make_server: Callable[..., Server],
                                                             postgres_database: str) -> None:
    """A real server on PostgreSQL with a pool far beyond max_connections starts, and its log says why it may
    fail under load and what to change."""
    server = make_server(LABELLOOP_DATABASE_URL=postgres_database, LABELLOOP_DATABASE_POOL_SIZE="200")
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    warned = [line for line in lines if "may run out of connections" in line.get("event", "")]
    assert len(warned) == 1, lines[-5:]
    assert warned[0]["needed"] == 802 and warned[0]["fits"] is False
    assert "LABELLOOP_DATABASE_POOL_SIZE=200" in warned[0]["event"]


def test_a_server_that_cannot_be_asked_gives_a_warning_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="labelloop.db"):
        found = db.check_connection_budget("postgresql://nobody@127.0.0.1:1/none", 42, 10)
    assert found is None
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "could not compare" in warning.getMessage() and warning.needed == 42
