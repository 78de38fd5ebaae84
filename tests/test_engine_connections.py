"""The workflow engine's own PostgreSQL connections (DBOS 3.4's system database engine, as ``engine.start`` sets it
up) when the server ends them — ``pg_terminate_backend``, as a restart, a failover or an idle timeout does: runs
started directly and runs taken from a queue by its poll still succeed, also when the sessions end between two
steps of a run, and the engine's notification listener comes back (DBOS reconnects it after 1 s). DBOS's engine pings
each connection it takes from its pool (``pool_pre_ping``, its default, kept: README Performance, item 64) and retries
a statement whose connection failed (``db_retry``, after 0.5-1.5 s; without the ping every kill costs that wait);
labelloop's own engine looks at the socket instead (test_database_pool.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import run_script

pytestmark = pytest.mark.same_on_every_database  # a PostgreSQL database of its own, whatever --database says

SCRIPT = textwrap.dedent("""
    import sys, time
    import psycopg
    from dbos import DBOS
    from labelloop import engine
    from labelloop.config import configure

    home, url = sys.argv[1], sys.argv[2]
    admin = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    ENGINE_SESSIONS = ("FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                       "AND application_name = 'dbos_transact'")
    end_between_steps = []

    def end_sessions() -> int:
        ended = admin.execute(f"SELECT count(pg_terminate_backend(pid)) {ENGINE_SESSIONS}").fetchone()[0]
        deadline = time.monotonic() + 10
        while admin.execute(f"SELECT count(*) {ENGINE_SESSIONS} AND backend_start < now() - interval '0.2 s' "
                            "AND state_change < now() - interval '0.2 s'").fetchone()[0] and \\
                time.monotonic() < deadline:
            time.sleep(0.05)
        return ended

    @engine.step()
    def add(a: int) -> int:
        if end_between_steps:
            end_between_steps.pop()
            print(f"ended between steps|{end_sessions()}")
        return a + 1

    @engine.workflow("two-steps")
    def two_steps(a: int) -> int:
        return add(add(a))

    engine.start(configure(home=home, database_url=url), role="worker")
    print(f"before|{DBOS.start_workflow(two_steps, 0).get_result()}")
    for round in range(3):
        ended = end_sessions()
        started = time.monotonic()
        direct = DBOS.start_workflow(two_steps, 10 * round).get_result()
        queued = DBOS.retrieve_workflow(engine.enqueue(engine.PARAMETERS_QUEUE, two_steps, 100 * round)).get_result()
        print(f"round|{ended}|{direct}|{queued}|{time.monotonic() - started:.2f}")
    end_between_steps.append(True)
    print(f"between|{DBOS.start_workflow(two_steps, 1000).get_result()}")
    def listening() -> int:
        return admin.execute(f"SELECT count(*) {ENGINE_SESSIONS} AND query LIKE 'LISTEN %%'").fetchone()[0]

    deadline = time.monotonic() + 10
    while not listening() and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"listening|{listening()}")
    engine.stop()
""")


def test_runs_and_queue_polls_survive_the_server_ending_the_engines_sessions(tmp_path: Path,
                                                                            postgres_database: str) -> None:
    lines = run_script(SCRIPT, tmp_path, postgres_database, timeout=180)
    found = {fields[0]: fields[1:] for fields in lines if fields[0] != "round"}
    rounds = [fields[1:] for fields in lines if fields[0] == "round"]
    assert found["before"] == ["2"]
    assert len(rounds) == 3
    for n, (ended, direct, queued, seconds) in enumerate(rounds):
        assert int(ended) >= 2, "the pool's sessions and the listener's were ended"
        assert (int(direct), int(queued)) == (10 * n + 2, 100 * n + 2)
        assert float(seconds) < 15, f"round {n}: {seconds} s (a failed statement is retried after 0.5-1.5 s)"
    assert int(found["ended between steps"][0]) >= 1 and found["between"] == ["1002"]
    assert found["listening"] == ["1"], "the notification listener is back on a new session"
