"""Runs always end: a step that meets a transient database error is tried again with backoff and the run
succeeds; a step that fails for another reason, or keeps failing, ends its run ERROR with the reason; a run
whose execution keeps ending without recording its outcome is handed back to its queue, then ends ERROR."""

from __future__ import annotations

import errno
import sqlite3
import textwrap
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from conftest import run_script
from labelloop.engine import transient

SCRIPT = textwrap.dedent("""
    import sqlite3, sys
    import psycopg
    from dbos import DBOS
    from sqlalchemy import create_engine, text
    from labelloop import engine
    from labelloop.config import with_driver

    folder, postgres = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    tries = {"flaky": 0, "broken": 0, "locked": 0, "pool": 0, "dropped": 0}
    # Real faults: another writer holds SQLite's write lock (a 0.05 s busy timeout gives up: "database is
    # locked"); a one-connection pool whose connection is out; PostgreSQL ending the step's connection.
    database = create_engine(f"sqlite:///{folder}/app.sqlite", connect_args={"timeout": 0.05}, pool_size=1,
                             max_overflow=0, pool_timeout=0.05)
    writer = sqlite3.connect(f"{folder}/app.sqlite", isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE answers (label TEXT)")

    def write() -> str:
        with database.begin() as connection:
            connection.execute(text("INSERT INTO answers VALUES ('amazon_logo')"))
        return "done"

    @engine.step()
    def flaky() -> str:
        tries["flaky"] += 1
        if tries["flaky"] == 3:
            writer.execute("COMMIT")  # the other writer is done
        return write()

    @engine.step()
    def broken() -> str:
        tries["broken"] += 1
        raise ValueError("a bug, not worth retrying")

    @engine.step()
    def locked() -> str:
        tries["locked"] += 1
        return write()

    held = []

    @engine.step()
    def pool() -> str:
        tries["pool"] += 1
        if tries["pool"] == 2:
            held.pop().close()  # the connection is back in the pool
        return write()

    @engine.step()
    def dropped() -> int:
        tries["dropped"] += 1
        with app.connect() as connection:
            if tries["dropped"] == 1:
                pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
                with psycopg.connect(postgres, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            return connection.execute(text("SELECT 42")).scalar()

    STEPS = {"flaky": flaky, "broken": broken, "locked": locked, "pool": pool, "dropped": dropped}

    @DBOS.workflow()
    def run(which: str) -> str:
        return STEPS[which]()

    engine.STEP_RETRIES["interval_seconds"] = 0.05
    DBOS(config={"name": "retries", "system_database_url": f"sqlite:///{folder}/system.sqlite"})
    DBOS.launch()
    which = ["flaky", "broken", "locked", "pool"] if postgres is None else ["dropped"]
    if postgres is not None:
        app = create_engine(with_driver(postgres))
    for name in which:
        if name in ("flaky", "locked"):
            writer.execute("BEGIN IMMEDIATE")
        if name == "pool":
            held.append(database.connect())
        handle = DBOS.start_workflow(run, name)
        try:
            result = handle.get_result()
        except Exception as exc:
            result = f"{type(exc).__name__}: {exc}"
        print(f"{name}|{tries[name]}|{handle.get_status().status}|{result}")
        if writer.in_transaction:
            writer.execute("ROLLBACK")
    DBOS.destroy()
""")


def test_steps_retry_transient_errors_and_runs_always_end(tmp_path: Path) -> None:
    runs = {fields[0]: fields[1:] for fields in run_script(SCRIPT, tmp_path)}
    assert runs["flaky"] == ["3", "SUCCESS", "done"]  # was: ERROR at the first "database is locked"
    assert runs["broken"] == ["1", "ERROR", "ValueError: a bug, not worth retrying"]
    tries, status, reason = runs["locked"]
    assert (tries, status) == ("5", "ERROR")
    assert reason.startswith("StepFailed: step locked failed 5 times") and "database is locked" in reason
    assert runs["pool"] == ["2", "SUCCESS", "done"]  # was: ERROR at the first pool timeout


def test_a_step_whose_postgresql_connection_is_dropped_is_retried(tmp_path: Path, postgres_database: str) -> None:
    [(_, tries, status, result)] = run_script(SCRIPT, tmp_path, postgres_database)
    assert (tries, status, result) == ("2", "SUCCESS", "42")  # was: the whole run ERROR


STALLING = textwrap.dedent("""
    import sys, time
    from dbos import DBOS
    from labelloop import engine

    tries = []

    class Abandoned(BaseException):
        \"\"\"Ends the run's thread without an outcome, as a database that cannot be written does.\"\"\"

    @DBOS.workflow()
    def stalls() -> None:
        tries.append(1)
        raise Abandoned()

    DBOS(config={"name": "stalls", "system_database_url": f"sqlite:///{sys.argv[1]}/system.sqlite"})
    DBOS.launch()
    handle = DBOS.register_queue("one-at-a-time", concurrency=1, polling_interval_sec=0.1).enqueue(stalls)
    check = engine.StalledRuns(DBOS.executor_id)
    deadline = time.monotonic() + 60
    while handle.get_status().status not in ("SUCCESS", "ERROR") and time.monotonic() < deadline:
        check.check(DBOS.list_workflows(status="PENDING", load_input=False, load_output=False))
        time.sleep(0.3)
    print(f"stalls|{len(tries)}|{handle.get_status().status}|{handle.get_status().error!r}")
    DBOS.destroy()
""")


def test_a_run_that_keeps_ending_without_an_outcome_is_handed_back_then_ends_error(tmp_path: Path) -> None:
    [(_, tries, status, error)] = run_script(STALLING, tmp_path)
    assert (tries, status) == ("6", "ERROR"), error  # was: PENDING for good after the first try, holding its queue
    assert "RunOutcomeNotRecorded" in error and "stopped 6 times without recording its outcome" in error


@pytest.mark.parametrize(("error", "retried"), [
    (OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")), True),
    (PoolTimeout("QueuePool limit of size 5 overflow 10 reached"), True),
    (ConnectionResetError(errno.ECONNRESET, "reset"), True),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (ValueError("bad input"), False),
    (KeyError("bug"), False),
])
def test_which_errors_are_transient(error: BaseException, retried: bool) -> None:
    assert transient(error) is retried
