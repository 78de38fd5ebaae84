"""Runs always end, and so does waiting: a detection left WAITING_FOR_MODEL while a version serves (its run
failed, or ended before recording the answer) is detected again by the sweep on its schedule, and when the
server starts; sweeps that found nothing do not pile up in the run list."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import pytest

from conftest import Postgres, run_script, wait_until
from images import blend, upload_training_set

pytestmark = pytest.mark.timeout(600)


def strand(database: Path, event_id: int) -> None:
    """What a run that failed for good before recording its answer leaves behind (1 of 308 on PostgreSQL)."""
    with sqlite3.connect(database, timeout=30) as conn:
        conn.execute("UPDATE detection_events SET status = 'WAITING_FOR_MODEL', label = NULL, confidence = NULL "
                     "WHERE id = ?", (event_id,))


def test_a_detection_left_waiting_while_a_version_serves_is_detected_on_schedule_and_at_start(make_server) -> None:  # type: ignore[no-untyped-def]
    if Postgres.mode != "sqlite":
        pytest.skip("the stranded state is written straight into the SQLite file")
    server = make_server(LABELLOOP_ANSWER_SWEEP_MINUTES="1")
    with server.client() as api:
        upload_training_set(api, 5)
        assert server.wait_run(api.post("/training/check").json()["run_id"], timeout=400)["output"]["version"] == "v1"
        for i in range(2):
            run_id = api.put(f"/objects/images_for_detection/stranded_{i}.png", content=blend(i)).json()["run_id"]
            assert server.wait_run(run_id)["status"] == "SUCCESS"
        on_schedule, at_start = sorted(api.get("/detections", params={"status": "DETECTED"}).json(),
                                       key=lambda e: e["id"])

        def detected_again(event: dict) -> dict | None:
            found = [e for e in api.get("/detections").json() if e["id"] == event["id"]]
            return found[0] if found and found[0]["status"] == "DETECTED" else None

        # While the server runs: the sweep (every minute here) finds it (was: waiting until the next start).
        strand(server.home / "labelloop.db", on_schedule["id"])
        again = wait_until(lambda: detected_again(on_schedule), 150, 1, "the sweep to detect the stranded image")
        assert again["label"] == on_schedule["label"] and again["model_version"] == "v1"
        assert server.wait_run(f"detect-waiting-{on_schedule['id']}-v1")["status"] == "SUCCESS"
        sweeps = api.get("/runs", params={"limit": 200}).json()
        sweeps = [run for run in sweeps if run["name"] == "scheduled_answer_sweep" and run["status"] == "SUCCESS"]
        assert any(run["output"]["detection_runs"] for run in sweeps)
        assert sum(not any(run["output"].values()) for run in sweeps) <= 1, "idle sweeps pile up in the run list"

    server.stop()
    strand(server.home / "labelloop.db", at_start["id"])
    server.start()
    with server.client() as api:
        again = wait_until(lambda: detected_again(at_start), 120, 0.5, "the start to detect the stranded image")
        assert again["label"] == at_start["label"] and again["model_version"] == "v1"
        assert server.wait_run(f"detect-waiting-{at_start['id']}-v1")["status"] == "SUCCESS"

    # Its retries with v1 used up (here: none beyond the one just made), the image is shown FAILED, saying why
    # and what to do, instead of WAITING_FOR_MODEL while a model serves.
    server.stop()
    strand(server.home / "labelloop.db", at_start["id"])
    server.env["LABELLOOP_STRANDED_DETECTION_RETRIES"] = "0"
    server.start()
    with server.client() as api:
        def failed() -> dict | None:
            found = [e for e in api.get("/detections", params={"status": "FAILED"}).json() if e["id"] == at_start["id"]]
            return found[0] if found else None

        event = wait_until(failed, 120, 0.5, "the start to mark the image FAILED")
        assert "failed" in event["status_message"] and "v1" in event["status_message"], event
        assert "redetect" in event["status_message"], "it says what the user can do"


IDLE_SWEEPS = textwrap.dedent("""
    import sys
    from dbos import DBOS, SetWorkflowID
    from labelloop.runs import service as runs

    @DBOS.workflow(name="sweep")
    def sweep(found: list) -> dict:
        return {"queued": found}

    DBOS(config={"name": "sweeps", "system_database_url": f"sqlite:///{sys.argv[1]}/system.sqlite"})
    DBOS.launch()
    for run_id, found in (("s1", []), ("s2", ["loop-a"]), ("s3", []), ("s4", []), ("s5", [])):
        with SetWorkflowID(run_id):
            DBOS.start_workflow(sweep, found).get_result()
    forgotten = runs.forget_idle_runs("sweep", "s5", lambda output: not any(output.values()))
    left = sorted(run.workflow_id for run in DBOS.list_workflows())
    print(f"sweeps|{forgotten}|{','.join(left)}")
    DBOS.destroy()
""")


@pytest.mark.same_on_every_database
def test_sweeps_that_found_nothing_leave_only_the_newest_in_the_run_list(tmp_path: Path) -> None:
    # The sweep that queued an answer stays, as does the one kept (the running one); 3 idle ones are deleted.
    assert run_script(IDLE_SWEEPS, tmp_path) == [["sweeps", "3", "s2,s5"]]


WAITING_IN_FLIGHT = textwrap.dedent("""
    import os, sys, threading, time
    os.environ["LABELLOOP_HOME"] = sys.argv[1]
    from dbos import DBOS, SetWorkflowID
    from labelloop.detection import service as detections
    from labelloop.loop import routing

    release = threading.Event()
    detections.read_events = lambda ids: release.wait(60) and []  # a batch's step, held until checked

    def upload(event_id: int) -> dict:
        return {"key": f"images_for_detection/{event_id}.jpg", "etag": "e", "source": "upload",
                "detection_id": event_id}

    DBOS(config={"name": "waiting", "system_database_url": f"sqlite:///{sys.argv[1]}/system.sqlite"})
    DBOS.launch()
    waiting = [upload(7), upload(9)]
    with SetWorkflowID(routing.waiting_batch_run_id("v1", waiting)):
        deployed = DBOS.start_workflow(routing.object_created, {"uploads": waiting})
    with SetWorkflowID("detection-0123456789abcdef"):  # uploads that arrived together: their events are not waiting
        arrived = DBOS.start_workflow(routing.object_created, {"uploads": [upload(11)]})
    time.sleep(0.5)
    during = sorted(routing.waiting_detections_in_flight())
    release.set()
    deployed.get_result(), arrived.get_result()
    after = sorted(routing.waiting_detections_in_flight())
    print(f"in flight|{during}|{after}|{deployed.get_workflow_id()}")
    DBOS.destroy()
""")


@pytest.mark.same_on_every_database
def test_the_sweep_knows_the_waiting_images_a_deploy_batch_is_detecting(tmp_path: Path) -> None:
    """A deploy's batch of waiting images in flight covers its events (the sweep skips them); once it ended,
    none; a batch of uploads never counts."""
    assert run_script(WAITING_IN_FLIGHT, tmp_path) == [["in flight", "[7, 9]", "[]", "detection-waiting-v1-7-2"]]


DETECTED_DURING_THE_SWEEP = textwrap.dedent("""
    import os, sys
    os.environ["LABELLOOP_HOME"] = sys.argv[1]
    from dbos import DBOS, SetWorkflowID
    from sqlalchemy import update
    from labelloop import db
    from labelloop.detection import flows as detection
    from labelloop.detection import service as detections
    from labelloop.detection.models import DetectionEvent
    from labelloop.loop import routing
    from labelloop.modeling.models import ModelVersion

    @DBOS.workflow(name="ended")
    def ended() -> None:  # an upload batch's run that has ended
        return None

    db.init(f"sqlite:///{sys.argv[1]}/app.db")
    with db.session() as session:
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={}))
    DBOS(config={"name": "sweep", "system_database_url": f"sqlite:///{sys.argv[1]}/system.sqlite"})
    DBOS.launch()
    for run_id in ("detection-a", "detection-b"):
        with SetWorkflowID(run_id):
            DBOS.start_workflow(ended).get_result()
    detected = detections.record_arrival("images_for_detection/a.jpg", "a", "detection-a")["id"]
    stranded = detections.record_arrival("images_for_detection/b.jpg", "b", "detection-b")["id"]
    listed = detection.waiting_events

    def then_detected():  # the batch of upload a records its answer just after the sweep listed the waiting images
        found = listed()
        with db.session() as session:
            session.execute(update(DetectionEvent).where(DetectionEvent.id == detected).values(status="DETECTED"))
        return found

    detection.waiting_events = then_detected
    retried = routing.detections_to_retry()
    print(f"retried|{[item['detection_id'] == stranded for item in retried]}|{retried[0]['run_id']}")
    DBOS.destroy()
""")


@pytest.mark.same_on_every_database
def test_an_image_its_batch_detected_while_the_sweep_read_runs_is_not_detected_again(tmp_path: Path) -> None:
    """Only the image whose run ended without its answer gets a run of its own (was: also the one whose batch
    recorded its answer between the sweep's list and its reading of the runs)."""
    assert run_script(DETECTED_DURING_THE_SWEEP, tmp_path) == [["retried", "[True]", "detect-waiting-2-v1"]]
