"""Runs always end, and so does waiting: a detection left WAITING_FOR_MODEL while a version serves (its run
failed, or ended before recording the answer) is detected again when the server starts."""

from __future__ import annotations

import sqlite3

import pytest

from conftest import Postgres, Server, wait_until
from images import blend, upload_training_set

pytestmark = pytest.mark.timeout(600)


def test_a_detection_left_waiting_while_a_version_serves_is_detected_at_start(server: Server) -> None:
    if Postgres.mode != "sqlite":
        pytest.skip("the stranded state is written straight into the SQLite file")
    with server.client() as api:
        upload_training_set(api, 5)
        assert server.wait_run(api.post("/training/check").json()["run_id"], timeout=400)["output"]["version"] == "v1"
        run_id = api.put("/objects/images_for_detection/stranded.png", content=blend(3)).json()["run_id"]
        assert server.wait_run(run_id)["status"] == "SUCCESS"
        event = api.get("/detections", params={"status": "DETECTED"}).json()[0]
    server.stop()
    # What a run that failed for good before recording its answer leaves behind (1 of 308 on PostgreSQL).
    with sqlite3.connect(server.home / "labelloop.db") as conn:
        conn.execute("UPDATE detection_events SET status = 'WAITING_FOR_MODEL', label = NULL, confidence = NULL "
                     "WHERE id = ?", (event["id"],))
    server.start()
    with server.client() as api:
        def detected() -> dict | None:
            found = [e for e in api.get("/detections").json() if e["id"] == event["id"]]
            return found[0] if found and found[0]["status"] == "DETECTED" else None

        again = wait_until(detected, 120, 0.5, "the stranded detection to be detected")
        assert again["label"] == event["label"] and again["model_version"] == "v1"
        assert server.wait_run(f"detect-waiting-{event['id']}-v1")["status"] == "SUCCESS"
