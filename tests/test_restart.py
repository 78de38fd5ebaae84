"""Stop the server (SIGTERM) or kill it (SIGKILL), start it again: nothing is lost."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
from PIL import Image

from conftest import Server, created_objects, wait_until

CHANGES = {
    "Automatic-Training-Poll-Frequency": "240",  # re-times the training schedule to every 4 hours
    "Enable-Automatic-Human-Sampling": "false",  # pauses the sampling schedule
    "Minimum-Untrained-Images": "42",
}
SCHEDULES = {"training-check": ("0 0 */4 * * *", "ACTIVE"), "human-sampling": ("0 0 */12 * * *", "PAUSED"),
             "answer-sweep": ("0 */5 * * * *", "ACTIVE"),  # no recorded answer stays unapplied
             "run-pruning": ("0 0 0 * * *", "ACTIVE")}  # finished runs older than LABELLOOP_RUN_RETENTION_DAYS


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (seed % 256, 255 - seed % 256, 128)).save(buffer, "PNG")
    return buffer.getvalue()


OBJECTS = {
    "images_labeled_by_folder/cats/cat-1.png": png(1),
    "images_labeled_by_folder/dogs/dog-1.png": png(2),
    "images_for_detection/incoming-1.png": png(3),
    "manifests/notes.json": b'{"not": "an event"}',
}


def state(api: httpx.Client) -> dict[str, Any]:
    """Everything a restart must keep, read through the API."""
    def get(path: str, **params: Any) -> Any:
        response = api.get(path, params=params)
        assert response.status_code == 200, f"{path}: {response.text}"
        return response.json()

    runs = get("/runs", limit=500)
    return {
        "parameters": {p["name"]: (p["value"], p["version"], p["modified_by"]) for p in get("/parameters")},
        "history": {name: get(f"/parameters/{name}/history") for name in CHANGES},
        "objects": {o["key"]: (o["size"], o["etag"]) for o in get("/objects")},
        "contents": {key: api.get(f"/objects/{key}").content for key in OBJECTS},
        "runs": {r["id"]: (r["name"], r["status"], r["created_at"], r["output"]) for r in runs},
        "steps": {r["id"]: [(s["name"], s["output"], s["error"]) for s in get(f"/runs/{r['id']}")["steps"]]
                  for r in runs},
        "notifications": {n["id"]: n for n in get("/notifications")},
        "schedules": {s["name"]: (s["cron"], s["status"]) for s in get("/schedules")},
    }


def assert_kept(before: dict[str, Any], after: dict[str, Any]) -> None:
    for part in ("parameters", "history", "objects", "contents", "schedules"):
        assert after[part] == before[part], part
    # A schedule may fire while the test runs: runs and notifications may only have been added.
    for part in ("runs", "steps", "notifications"):
        assert {k: after[part].get(k) for k in before[part]} == before[part], part


def startup_schedule_actions(server: Server, log_offset: int) -> dict[str, list[str]]:
    """What the last start did to each schedule, from its JSON log."""
    actions = {}
    with server.log_path.open("rb") as log:
        log.seek(log_offset)
        for line in log.read().decode().splitlines():
            if line.startswith("{") and (entry := json.loads(line))["event"] == "schedule in force":
                actions[entry["schedule"]] = entry["actions"]
    return actions


def test_everything_survives_sigterm_and_sigkill(make_server) -> None:
    server = make_server()
    token = server.token()
    with server.client(token) as api:
        run_ids = [api.put(f"/parameters/{name}", json={"value": value}).json()["run_id"]
                   for name, value in CHANGES.items()]
        for key, content in OBJECTS.items():
            assert api.put(f"/objects/{key}", content=content).status_code == 201
        run_ids.append(api.post("/training/check").json()["run_id"])
        for run_id in run_ids:
            assert server.wait_run(run_id)["status"] == "SUCCESS"
        events = wait_until(lambda: (found := api.get("/runs", params={"branch": "Object Created"}).json())
                            and len(found) == 3 and all(r["status"] == "SUCCESS" for r in found) and found,
                            message="three object_created runs")
        before = state(api)

    assert {name: before["parameters"][name][0] for name in CHANGES} == CHANGES
    assert before["schedules"] == SCHEDULES
    assert set(run_ids) | {r["id"] for r in events} <= set(before["runs"])
    notified = sorted(n["run_id"] for n in before["notifications"].values() if n["run_id"] in run_ids)
    assert notified == sorted(run_ids), "one notification per parameter change and one for the training check"

    for stop in (server.stop, server.kill):
        log_offset = server.log_path.stat().st_size
        stop()
        server.start()
        with server.client(token) as api:  # the token issued before the restart still works
            assert_kept(before, state(api))
        assert startup_schedule_actions(server, log_offset) == {"training-check": ["unchanged"],
                                                                "human-sampling": ["unchanged"],
                                                                "answer-sweep": ["unchanged"],
                                                                "run-pruning": ["unchanged"]}, \
            "the engine kept the schedules; the start did not have to re-create them"


def test_runs_in_flight_at_sigkill_finish_after_restart(make_server) -> None:
    server = make_server()
    token = server.token()
    with server.client(token) as api:
        change = api.put("/parameters/Minimum-F1-Score", json={"value": "0.6"}).json()
        stored = api.put("/objects/images_labeled_by_folder/cats/late.png", content=png(9)).json()
    server.kill()  # at once: the runs may not have started, or be half done

    server.start()
    run = server.wait_run(change["run_id"])
    assert run["status"] == "SUCCESS"
    assert [s["name"] for s in run["steps"]] == ["read_parameters", "apply_schedules", "notify_change"]
    with server.client(token) as api:
        notes = [n for n in api.get("/notifications").json() if n["run_id"] == change["run_id"]]
        assert len(notes) == 1, "a recovered run notifies once"
        assert api.get("/parameters/Minimum-F1-Score").json()["value"] == "0.6"
        assert api.get("/objects/images_labeled_by_folder/cats/late.png").content == png(9)
        events = wait_until(lambda: [r for r in api.get("/runs", params={"branch": "Object Created"}).json()
                                     if stored["key"] in {c["key"] for c in created_objects(r)}],
                            message="the object_created run")
    assert len(events) == 1
    assert server.wait_run(events[0]["id"])["status"] == "SUCCESS"
