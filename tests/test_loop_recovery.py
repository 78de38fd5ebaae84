"""Restart safety: a server killed mid-training or mid-detection finishes the work after it starts again."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Server, created_objects, wait_until
from images import box_logo, smile_logo, upload_training_set

pytestmark = pytest.mark.timeout(600)


def models(api) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {m["version"]: m for m in api.get("/models").json()}


def test_kill_during_training_then_restart(server: Server) -> None:
    with server.client() as api:
        upload_training_set(api, 30)
        run_id = api.post("/training/check").json()["run_id"]
        wait_until(lambda: models(api).get("v1", {}).get("status") == "TRAINING_IN_PROGRESS", 120, 0.05,
                   "training to start")
    server.kill()
    server.start()
    with server.client() as api:
        run = server.wait_run(run_id, timeout=300)
        assert run["status"] == "SUCCESS", run
        found = models(api)
        assert list(found) == ["v1"], found
        assert found["v1"]["status"] == "RUNNING"
        trained = [s for s in run["steps"] if s["name"] == "train_model"]
        assert len(trained) == 1 and trained[0]["output"]["trained"] is True
        answer = api.post("/detect", files={"file": ("a.png", smile_logo(99))})
        assert answer.status_code == 200 and answer.json()["model_version"] == "v1"


def test_kill_during_a_burst_of_uploads_loses_and_doubles_nothing(server: Server) -> None:
    with server.client() as api:
        upload_training_set(api, 5)
        server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
        keys = [f"images_for_detection/burst_{i}.png" for i in range(200)]

        def put(i: int) -> int:  # four clients at once: uploads gather into batches while runs are busy
            with server.client() as own:
                return own.put(f"/objects/{keys[i]}", content=(smile_logo if i % 2 else box_logo)(500 + i)).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(put, range(len(keys)))) == {201}
    server.kill()
    server.start()
    with server.client() as api:
        def all_detected() -> list[dict] | None:
            events = [e for e in api.get("/detections", params={"limit": 1000}).json() if e["object_key"] in keys]
            return events if len(events) >= len(keys) and all(e["status"] == "DETECTED" for e in events) else None

        events = wait_until(all_detected, 180, 0.5, "every upload detected")
        assert sorted(e["object_key"] for e in events) == sorted(keys)  # exactly one event per upload

        def runs_finished() -> list[dict] | None:  # a recovered run may still be notifying after its detection
            runs = [r for r in api.get("/runs", params={"branch": "Object Created", "limit": 500}).json()
                    if {c["key"] for c in created_objects(r)} & set(keys)]
            return runs if all(r["status"] in ("SUCCESS", "ERROR") for r in runs) else None

        runs = wait_until(runs_finished, 120, 0.5, "every run finished")
        assert all(r["status"] == "SUCCESS" for r in runs)
        # Uploads that arrive together share a run: no upload is in two, and the burst took fewer runs than
        # uploads (those whose batch was not queued yet when the process died were detected by the
        # stranded-detection sweep at the restart).
        covered = [c["key"] for r in runs for c in created_objects(r)]
        assert len(covered) == len(set(covered)) and len(runs) < len(keys)
        detected = [n["object_key"] for n in api.get("/notifications", params={
            "event_type": "detection.detected", "limit": 1000}).json() if n["object_key"] in keys]
        assert sorted(detected) == sorted(keys)  # one notification per upload, none repeated


def test_images_that_arrive_before_any_model_are_detected_once_one_serves(server: Server) -> None:
    """...in batches at the deploy: the waiting images share one detection run, each its own event."""
    early = ["images_for_detection/early.png", "images_for_detection/early_2.png", "images_for_detection/early_3.png"]
    with server.client() as api:
        for i, key in enumerate(early):
            api.put(f"/objects/{key}", content=smile_logo(77 + i))
        wait_until(lambda: len([e for e in api.get("/detections").json() if e["status"] == "WAITING_FOR_MODEL"]) == 3,
                   30, message="three waiting detections")
        feed = wait_until(lambda: api.get("/notifications", params={"event_type": "detection.waiting_for_model"})
                          .json(), 30, message="the waiting notification")
        assert "will be detected as soon as one serves" in feed[0]["message"]
        upload_training_set(api, 5)
        server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
        def all_detected() -> list[dict] | None:
            found = api.get("/detections").json()
            return found if [e["status"] for e in found] == ["DETECTED"] * len(early) else None

        events = wait_until(all_detected, 60, message="the early images detected")
        assert sorted(e["object_key"] for e in events) == sorted(early)
        assert {e["model_version"] for e in events} == {"v1"} and len(events) == 3, "one event each, no second"
        runs = api.get("/runs", params={"branch": "Detection", "limit": 100}).json()
        assert not [r for r in runs if r["name"] == "detect_waiting_image"], "no run per waiting image"
        batch = [r for r in runs if r["id"].startswith("detection-waiting-v1-")]
        assert len(batch) == 1 and batch[0]["name"] == "object_created", [r["id"] for r in runs]
        detail = server.wait_run(batch[0]["id"])
        assert detail["status"] == "SUCCESS" and sorted(detail["output"]["keys"]) == sorted(early)
        assert sorted(api.get(f"/runs/{batch[0]['id']}").json()["object_keys"]) == sorted(early)
