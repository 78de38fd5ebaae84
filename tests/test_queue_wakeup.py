"""A run this process queues on the training, parameters or sampling queue is taken at once, not at the queue's
next poll (engine.Wakeup); on object-events only a run queued with ``wake`` (a batch of uploads due when it
opened: a lone upload) is (README Performance, sync detect: the upload pipeline's batches form while a run waits
for its poll)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import run_script

pytestmark = pytest.mark.same_on_every_database  # scripts given their databases

SCRIPT = textwrap.dedent("""
    import sys, time
    from labelloop import engine
    from labelloop.config import Settings

    @engine.workflow("wakeup-probe")
    def probe(value: int) -> int:
        return value

    def finished(run_id: str, seconds: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if engine.run_status(run_id) == "SUCCESS":
                return time.monotonic() - started
            time.sleep(0.02)
        return None

    # Every queue polled once a minute: only a wake-up can start a run within seconds.
    engine.start(Settings(home=sys.argv[1], database_url=sys.argv[2] if len(sys.argv) > 2 else None,
                          queue_polling_seconds=60, idle_queue_polling_seconds=60))
    time.sleep(1.0)  # each worker is in its first sleep
    for name in (engine.TRAINING_QUEUE, engine.PARAMETERS_QUEUE, engine.SAMPLING_QUEUE, engine.PARAMETERS_QUEUE):
        seconds = finished(engine.enqueue(name, probe, 1), 10)
        print(f"woken|{name}|{seconds}")
    seconds = finished(engine.enqueue(engine.OBJECT_EVENTS_QUEUE, probe, 4, wake=True), 10)
    print(f"woken|{engine.OBJECT_EVENTS_QUEUE}|{seconds}")
    # Queued behind the engine's back, as another process would, and on object-events: found at the next poll.
    seconds = finished(engine.queue(engine.PARAMETERS_QUEUE).enqueue(probe, 2).get_workflow_id(), 3)
    print(f"unwoken|{engine.PARAMETERS_QUEUE}|{seconds}")
    seconds = finished(engine.enqueue(engine.OBJECT_EVENTS_QUEUE, probe, 3), 3)
    print(f"unwoken|{engine.OBJECT_EVENTS_QUEUE}|{seconds}")
    started = time.monotonic()
    engine.stop()
    print(f"stopped|all|{time.monotonic() - started}")
""")


def test_a_run_queued_here_starts_at_once_and_others_wait_for_the_poll(tmp_path: Path) -> None:
    check(run_script(SCRIPT, tmp_path))


def test_the_wakeup_on_a_postgresql_system_database(tmp_path: Path, postgres_database: str) -> None:
    check(run_script(SCRIPT, tmp_path, postgres_database))


def check(lines: list[list[str]]) -> None:
    woken = [float(seconds) for kind, _, seconds in lines if kind == "woken"]
    assert len(woken) == 5 and max(woken) < 5, lines  # was: up to the 60-s poll
    assert [seconds for kind, _, seconds in lines if kind == "unwoken"] == ["None", "None"], lines  # polls are rare
    [stopped] = [float(seconds) for kind, _, seconds in lines if kind == "stopped"]
    assert stopped < 5, lines  # the workers notice the stop though their period is a minute (DBOS waits 10 s each)
