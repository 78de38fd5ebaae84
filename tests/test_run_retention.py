"""Run retention on a real workflow engine (SQLite and PostgreSQL): finished runs older than
LABELLOOP_RUN_RETENTION_DAYS are pruned by the daily schedule's workflow, chunk by chunk; pending and queued
runs, recent runs and the run that trained a model version stay; a pruned run's link says why it is gone."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ADMIN_PASSWORD, Server, run_script
from test_console_web import signed_in_client

SCRIPT = textwrap.dedent("""
    import json, logging, sys, time
    from datetime import UTC, datetime, timedelta
    from dbos import DBOS, SetWorkflowID
    from sqlalchemy import create_engine, text
    from labelloop import db, engine
    from labelloop.config import configure
    from labelloop.loop import routing
    from labelloop.modeling.models import ModelVersion
    from labelloop.runs import retention

    folder, postgres = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    # No queue is listened to: a run put on one stays ENQUEUED.
    settings = configure(home=folder, database_url=postgres, queues=[], run_retention_days=90,
                         recovery_check_seconds=3600)
    logged = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.getMessage() == "finished runs pruned":
                logged.append({k: getattr(record, k) for k in ("days", "pruned", "kept", "cutoff")})

    logging.getLogger("labelloop.runs.retention").addHandler(Keep())
    logging.getLogger("labelloop.runs.retention").setLevel(logging.INFO)

    @engine.workflow("retention_test_job")
    def job(fail: bool) -> str:
        if fail:
            raise ValueError("this run ends ERROR")
        return "done"

    @engine.workflow("retention_test_wait")
    def wait() -> str:
        DBOS.recv("never", timeout_seconds=120)
        return "woke"

    db.init(settings.app_database_url)
    engine.start(settings)

    def run(run_id, fail=False):
        with SetWorkflowID(run_id):
            try:
                job(fail)
            except ValueError:
                pass

    for n in range(12):
        run(f"old-ok-{n}")
    run("old-error", fail=True)
    run("old-trained")
    run("old-89-days")
    for n in range(3):
        run(f"new-ok-{n}")
    with SetWorkflowID("old-pending"):
        DBOS.start_workflow(wait)
    engine.enqueue(engine.TRAINING_QUEUE, job, False, workflow_id="old-enqueued")
    with db.session() as session:
        session.add(ModelVersion(version="v1", run_id="old-trained", status="RUNNING"))

    url = settings.engine_database_url
    table = "dbos.workflow_status" if url.startswith("postgresql") else "workflow_status"
    system = create_engine(url)
    now = datetime.now(UTC)

    def backdate(run_ids, days):
        ms = int((now - timedelta(days=days)).timestamp() * 1000)
        with system.begin() as connection:
            for run_id in run_ids:
                connection.execute(text(f"UPDATE {table} SET created_at = :ms WHERE workflow_uuid = :id"),
                                   {"ms": ms, "id": run_id})

    old = [f"old-ok-{n}" for n in range(12)] + ["old-error", "old-trained", "old-pending", "old-enqueued"]
    backdate(old, 100)
    backdate(["old-89-days"], 89)
    backdate([f"new-ok-{n}" for n in range(3)], 10)
    before = {r.workflow_id: r.status for r in DBOS.list_workflows(load_input=False, load_output=False)}
    print("before|" + json.dumps(before))

    retention.PRUNE_CHUNK = 5  # 13 runs to prune: three chunks
    with SetWorkflowID("prune-1"):
        first = routing.scheduled_run_pruning(now, None)
    print("first|" + json.dumps(first))
    with SetWorkflowID("prune-2"):
        second = routing.scheduled_run_pruning(now, None)
    print("second|" + json.dumps(second))
    print("kept-forever|" + json.dumps(retention.prune_finished_runs(0, lambda: set())))
    after = {r.workflow_id: r.status for r in DBOS.list_workflows(load_input=False, load_output=False)}
    print("after|" + json.dumps(after))
    print("steps|" + json.dumps([s["function_name"] for s in DBOS.list_workflow_steps("prune-1")]))
    print("logged|" + json.dumps(logged))
    DBOS.send("old-pending", "wake", "never")
    engine.stop()
    db.close()
""")


def _retention_run(tmp_path: Path, *database: str) -> dict[str, object]:
    lines = run_script(SCRIPT, tmp_path, *database, timeout=180)
    return {line[0]: json.loads(line[1]) for line in lines}


def _check(found: dict[str, object]) -> None:
    before, after = found["before"], found["after"]
    assert before["old-pending"] == "PENDING" and before["old-enqueued"] == "ENQUEUED"
    assert before["old-error"] == "ERROR"
    pruned = {f"old-ok-{n}" for n in range(12)} | {"old-error"}
    assert pruned <= set(before)
    assert not pruned & set(after), "every finished run older than 90 days is gone"
    stays = {"old-trained", "old-pending", "old-enqueued", "old-89-days", "new-ok-0", "new-ok-1", "new-ok-2"}
    assert stays <= set(after), stays - set(after)
    assert after["old-pending"] == "PENDING" and after["old-enqueued"] == "ENQUEUED"
    assert found["first"]["pruned"] == 13 and found["first"]["kept"] == 1 and found["first"]["days"] == 90
    assert found["second"]["pruned"] == 0, "nothing is left to prune the second time"
    assert found["kept-forever"] == {"days": 0, "cutoff": None, "pruned": 0, "kept": 0}
    assert found["steps"] == ["prune_old_runs"]
    assert [entry["pruned"] for entry in found["logged"]] == [13, 0]
    assert "prune-1" in after and "prune-2" in after


@pytest.mark.same_on_every_database
def test_old_finished_runs_are_pruned_and_the_rest_stay_sqlite(tmp_path: Path) -> None:
    _check(_retention_run(tmp_path))


@pytest.mark.same_on_every_database
def test_old_finished_runs_are_pruned_and_the_rest_stay_postgresql(tmp_path: Path, postgres_database: str) -> None:
    _check(_retention_run(tmp_path, postgres_database))


def test_the_pruning_schedule_and_a_pruned_runs_link(server: Server) -> None:
    """The daily schedule is in force; a link to a run that is not in the records says runs are pruned after 90
    days, on the page and in the API (404, not 500)."""
    token = server.token()
    with server.client(token) as client:
        schedules = {s["name"]: s for s in client.get("/schedules").json()}
        assert schedules["run-pruning"]["status"] == "ACTIVE"
        assert schedules["run-pruning"]["cron"] == "0 0 0 * * *"
        missing = client.get("/runs/detection-pruned-long-ago")
        assert missing.status_code == 404
        assert "pruned 90 days after" in missing.json()["detail"]
    with signed_in_client(server, "admin", ADMIN_PASSWORD) as browser:
        page = browser.get("/runs/detection-pruned-long-ago")
    assert page.status_code == 404
    assert "pruned 90 days after they started" in page.text
    assert "LABELLOOP_RUN_RETENTION_DAYS=90" in page.text
    assert '<a href="/runs">All runs</a>' in page.text


def test_retention_zero_pauses_the_pruning(make_server: Callable[..., Server]) -> None:
    server = make_server(LABELLOOP_RUN_RETENTION_DAYS="0")
    with server.client(server.token()) as client:
        schedules = {s["name"]: s for s in client.get("/schedules").json()}
        assert schedules["run-pruning"]["status"] == "PAUSED"
        assert client.get("/runs/no-such-run").json()["detail"] == "There is no run 'no-such-run'."
