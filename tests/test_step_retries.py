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
    from dbos import DBOS
    from sqlalchemy.exc import OperationalError
    from labelloop import engine

    tries = {"flaky": 0, "broken": 0, "locked": 0}
    LOCKED = OperationalError("UPDATE detection_events", {}, sqlite3.OperationalError("database is locked"))

    @engine.step()
    def flaky() -> str:
        tries["flaky"] += 1
        if tries["flaky"] < 3:
            raise LOCKED
        return "done"

    @engine.step()
    def broken() -> str:
        tries["broken"] += 1
        raise ValueError("a bug, not worth retrying")

    @engine.step()
    def locked() -> str:
        tries["locked"] += 1
        raise LOCKED

    @DBOS.workflow()
    def run(which: str) -> str:
        return {"flaky": flaky, "broken": broken, "locked": locked}[which]()

    engine.STEP_RETRIES["interval_seconds"] = 0.05
    DBOS(config={"name": "retries", "system_database_url": f"sqlite:///{sys.argv[1]}/system.sqlite"})
    DBOS.launch()
    for which in ("flaky", "broken", "locked"):
        handle = DBOS.start_workflow(run, which)
        try:
            result = handle.get_result()
        except Exception as exc:
            result = f"{type(exc).__name__}: {exc}"
        print(f"{which}|{tries[which]}|{handle.get_status().status}|{result}")
    DBOS.destroy()
""")


def test_steps_retry_transient_errors_and_runs_always_end(tmp_path: Path) -> None:
    runs = {fields[0]: fields[1:] for fields in run_script(SCRIPT, tmp_path)}
    assert runs["flaky"] == ["3", "SUCCESS", "done"]  # was: ERROR at the first "database is locked"
    assert runs["broken"] == ["1", "ERROR", "ValueError: a bug, not worth retrying"]
    tries, status, reason = runs["locked"]
    assert (tries, status) == ("5", "ERROR")
    assert reason.startswith("StepFailed: step locked failed 5 times") and "database is locked" in reason


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
