"""A run of an upload batch starts in the process that takes object-events runs, without the queue's poll
(``engine.start_run``): under a cap counting that process's polled runs, a web-only process queues it, and a run
started so is judged by the stalled-run check and recovered from a process that died (README Performance, item 34).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import run_script

pytestmark = pytest.mark.same_on_every_database  # scripts given their databases

PROLOGUE = textwrap.dedent("""
    import os, sys, threading, time
    from types import SimpleNamespace
    from dbos import DBOS
    from labelloop import engine
    from labelloop.config import Settings

    gate = threading.Event()

    @engine.workflow("start-run-probe")
    def probe(value: int) -> int:
        return value

    @engine.workflow("start-run-held")
    def held(value: int) -> int:
        gate.wait(60)
        return value

    def settle(run_id: str, wanted: tuple[str, ...], seconds: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if engine.run_status(run_id) in wanted:
                return time.monotonic() - started
            time.sleep(0.02)
        return None

    def record(run_id: str) -> str:
        found = DBOS.get_workflow_status(run_id)
        return f"{found.status}|{found.queue_name}|{found.executor_id == engine.executor_id()}"

    mode, url = sys.argv[2], sys.argv[3] or None
    # Every queue polled once a minute: a run taken from the queue within seconds was not taken by a poll.
    engine.start(Settings(home=sys.argv[1], database_url=url, queue_polling_seconds=60,
                          idle_queue_polling_seconds=60, queues=[] if mode == "web-only" else None))
    time.sleep(1.0)  # each worker is in its first sleep
""")

SCRIPT = PROLOGUE + textwrap.dedent("""
    if mode == "web-only":
        run_id = engine.start_run(engine.OBJECT_EVENTS_QUEUE, probe, 1, workflow_id="web-only-1")
        print(f"web-only|{record(run_id)}")
    else:
        run_id = engine.start_run(engine.OBJECT_EVENTS_QUEUE, probe, 1, workflow_id="here-1")
        print(f"here|{settle(run_id, ('SUCCESS',), 10)}|{record(run_id)}")
        held_ids = [engine.start_run(engine.OBJECT_EVENTS_QUEUE, held, i, workflow_id=f"held-{i}")
                    for i in range(engine.OBJECT_EVENTS_CONCURRENCY)]
        print(f"in-flight|{engine._started_here.in_flight()}")
        over = engine.start_run(engine.OBJECT_EVENTS_QUEUE, probe, 2, workflow_id="over-cap")
        print(f"over|{settle(over, ('SUCCESS',), 2)}|{record(over)}")
        gate.set()
        print(f"released|{max(settle(run_id, ('SUCCESS',), 10) or 99 for run_id in held_ids)}")
        print(f"after|{engine._started_here.in_flight()}")
        # The stalled-run check judges a run started here as it judges a queued one; an inline run it does not know.
        me = engine.executor_id()
        pending = [SimpleNamespace(workflow_id=run_id, executor_id=me, queue_name=None)
                   for run_id in ("here-1", "inline-unknown")]
        checker = engine.StalledRuns(me)
        checker.check(pending)
        print(f"stalled|{','.join(checker.check(pending)['handed_back'])}")
    engine.stop()
""")

CRASH = PROLOGUE + textwrap.dedent("""
    if mode == "crash":
        run_id = engine.start_run(engine.OBJECT_EVENTS_QUEUE, held, 7, workflow_id="crashed-1")
        print(f"running|{settle(run_id, ('PENDING',), 10) is not None}|{record(run_id)}", flush=True)
        os._exit(0)  # killed mid-run: no shutdown, the run stays PENDING under this executor
    gate.set()
    print(f"recovered|{settle('crashed-1', ('SUCCESS',), 30)}|{record('crashed-1')}")
    engine.stop()
""")


def test_a_run_starts_here_under_its_cap_and_a_web_only_process_queues_it(tmp_path: Path) -> None:
    check(run_script(SCRIPT, tmp_path, "takes", ""), run_script(SCRIPT, tmp_path, "web-only", ""))


def test_starting_here_on_a_postgresql_system_database(tmp_path: Path, postgres_database: str) -> None:
    check(run_script(SCRIPT, tmp_path, "takes", postgres_database),
          run_script(SCRIPT, tmp_path, "web-only", postgres_database))


def check(lines: list[list[str]], web_only: list[list[str]]) -> None:
    found = {line[0]: line[1:] for line in lines}
    seconds, *here = found["here"]
    assert seconds != "None" and float(seconds) < 5, lines  # was: the 60-s poll
    assert here == ["SUCCESS", "None", "True"], lines  # no queue in its record, this process's executor
    assert found["in-flight"] == [str(16)], lines
    # Over the cap: queued for the poll (once a minute here), not started (a queued run names who queued it).
    assert found["over"] == ["None", "ENQUEUED", "object-events", "True"], lines
    assert float(found["released"][0]) < 10 and found["after"] == ["0"], lines
    assert found["stalled"] == ["here-1"], lines
    assert web_only == [["web-only", "ENQUEUED", "object-events", "True"]], web_only


def test_a_run_started_here_is_recovered_when_its_process_dies(tmp_path: Path) -> None:
    [running] = run_script(CRASH, tmp_path, "crash", "")
    assert running == ["running", "True", "PENDING", "None", "True"], running
    [recovered] = run_script(CRASH, tmp_path, "recover", "")
    assert recovered[0] == "recovered" and recovered[1] != "None", recovered
    # Taken over by the new process through DBOS's internal queue (recovery re-enqueues).
    assert recovered[2:] == ["SUCCESS", "_dbos_internal_queue", "True"], recovered


def test_a_serving_process_polls_object_events_at_the_idle_period_and_a_worker_often(tmp_path: Path) -> None:
    """With its uploads' batches started by itself, a serving process's object-events poll finds only runs queued
    elsewhere: unless configured it polls at the idle period; a worker, which finds every run by polling, at 0.2 s."""
    from labelloop import engine
    from labelloop.config import Settings

    default = Settings(home=tmp_path)
    assert engine.object_events_polling(default, "serve") == default.idle_queue_polling_seconds == 2.0
    assert engine.object_events_polling(default, "worker") == engine.WORKER_QUEUE_POLLING_SECONDS == 0.2
    configured = Settings(home=tmp_path, queue_polling_seconds=0.5)
    assert engine.object_events_polling(configured, "serve") == 0.5
    assert engine.object_events_polling(configured, "worker") == 0.5
    quick_idle = Settings(home=tmp_path, idle_queue_polling_seconds=0.05)
    assert engine.object_events_polling(quick_idle, "serve") == 0.2  # never more often than a worker
    with pytest.raises(ValueError, match="greater than 0"):
        Settings(home=tmp_path, queue_polling_seconds=0)
