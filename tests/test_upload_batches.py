"""Uploads for detection that arrive together share one workflow run (loop/batches.py), and each still gets its
own detection event, notification and run link; the same upload twice is still one event."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conftest import ADMIN_PASSWORD, Server, created_objects, wait_until
from images import blend
from labelloop.loop.batches import UploadBatches
from test_web_portal import web_client

pytestmark = pytest.mark.timeout(300)


class Queued:
    """The runs a batcher queued (a real callable standing in for the engine's queue), optionally failing."""

    def __init__(self, fail: bool = False) -> None:
        self.runs: list[tuple[str, list[dict[str, Any]]]] = []
        self.at_once: dict[str, bool] = {}  # run id → whether it was to be taken at once (no poll awaited)
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, run_id: str, members: list[dict[str, Any]], at_once: bool) -> None:
        if self.fail:
            raise RuntimeError("the workflow database is gone")
        with self.lock:
            self.runs.append((run_id, list(members)))
            self.at_once[run_id] = at_once


def upload(batches: UploadBatches, key: str, existed: bool = False) -> str:
    """What an upload does: join, record its event (or find it existed), report it."""
    batch = batches.join()
    batches.recorded(batch, None if existed else {"key": key})
    return batch.run_id


def test_a_lone_upload_is_queued_by_its_own_request() -> None:
    queued = Queued()
    batches = UploadBatches(queued, prefix="detection-", window=5.0, max_size=32)
    run_id = upload(batches, "a")
    assert queued.runs == [(run_id, [{"key": "a"}])] and run_id.startswith("detection-")
    assert not batches.holds(run_id) and queued.at_once[run_id]  # nothing gathers behind it: no poll awaited


def test_uploads_within_the_window_share_one_run_and_a_full_batch_goes_at_once() -> None:
    queued = Queued()
    batches = UploadBatches(queued, prefix="detection-", window=0.3, max_size=3)
    first = upload(batches, "a")  # idle: queued at once
    second = [upload(batches, key) for key in ("b", "c", "d")]  # full at 3: queued by its last upload
    assert len(set(second)) == 1 and second[0] != first
    assert queued.runs[-1] == (second[0], [{"key": "b"}, {"key": "c"}, {"key": "d"}])
    third = upload(batches, "e")  # within the window of the last closed batch: waits for the window
    assert batches.holds(third) and len(queued.runs) == 2
    wait_until(lambda: len(queued.runs) == 3, 5, 0.01, "the window to pass")
    assert queued.runs[-1] == (third, [{"key": "e"}]) and not batches.holds(third)
    # Only the batch due when it opened is taken at once; the gathered ones wait for the queue's poll.
    assert [queued.at_once[run_id] for run_id in (first, second[0], third)] == [True, False, False]


def test_an_upload_after_its_previous_batch_was_detected_is_queued_at_once() -> None:
    queued = Queued()
    batches = UploadBatches(queued, prefix="detection-", window=5.0, max_size=32)
    first = upload(batches, "a")
    batches.detected(first)  # one upload at a time, each waited for: none waits for the window
    second = upload(batches, "b")
    assert [run_id for run_id, _ in queued.runs] == [first, second]
    third = upload(batches, "c")  # the second is still being detected: this one gathers
    assert batches.holds(third)


def test_while_runs_are_busy_the_batch_after_a_whole_window_s_batch_gathers_for_a_window_too() -> None:
    queued = Queued()
    batches = UploadBatches(queued, prefix="detection-", window=0.3, max_size=32)
    upload(batches, "a")  # idle: queued at once; no run reports detected, so they stay busy
    second = upload(batches, "b")  # gathers for the window
    wait_until(lambda: len(queued.runs) == 2, 5, 0.01, "the window to pass")
    assert queued.runs[-1] == (second, [{"key": "b"}])
    third = upload(batches, "c")  # a steady stream: one run per window, not every other run of one upload
    assert batches.holds(third) and len(queued.runs) == 2
    wait_until(lambda: len(queued.runs) == 3, 5, 0.01, "the next window to pass")
    assert queued.runs[-1] == (third, [{"key": "c"}])


def test_a_batch_waits_for_every_upload_that_joined_it_and_an_existing_event_leaves_it() -> None:
    queued = Queued()
    batches = UploadBatches(queued, prefix="detection-", window=0.5, max_size=32)
    upload(batches, "a")
    slow, fast = batches.join(), batches.join()
    assert slow is fast
    batches.recorded(fast, {"key": "fast"})
    time.sleep(0.7)  # due, but an upload is still recording its event
    assert len(queued.runs) == 1 and batches.holds(slow.run_id)
    batches.recorded(slow, None)  # its event existed already: its run is the earlier one
    assert queued.runs[-1] == (slow.run_id, [{"key": "fast"}])
    lone = batches.join()
    time.sleep(0.7)
    batches.recorded(lone, None)
    assert len(queued.runs) == 2, "a batch left with no upload starts no run"


def test_flush_queues_the_open_batch_and_a_failed_queue_loses_no_upload() -> None:
    queued = Queued()
    batches = UploadBatches(queued, prefix="detection-", window=60.0, max_size=32)
    upload(batches, "a")
    waiting = upload(batches, "b")
    batches.flush()
    assert queued.runs[-1] == (waiting, [{"key": "b"}])
    broken = UploadBatches(Queued(fail=True), prefix="detection-", window=0.0, max_size=32)
    run_id = upload(broken, "c")  # logged, not raised: the event waits for the stranded-detection sweep
    assert not broken.holds(run_id)


def test_uploads_at_once_share_runs_each_with_its_own_event_and_notification(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(LABELLOOP_UPLOAD_BATCH_SECONDS="1")
    keys = [f"images_for_detection/together/{i}.png" for i in range(12)]
    with server.client() as api:
        api.put("/objects/images_for_detection/together/first.png", content=blend(99))  # the idle batch

        def put(i: int) -> dict[str, Any]:
            with server.client() as own:
                response = own.put(f"/objects/{keys[i]}", content=blend(i))
                assert response.status_code == 201, response.text
                return response.json()

        with ThreadPoolExecutor(4) as pool:
            stored = list(pool.map(put, range(len(keys))))
        run_ids = {item["run_id"] for item in stored}
        assert len(run_ids) < len(keys), "uploads that arrived together share runs"
        runs = [server.wait_run(run_id) for run_id in run_ids]
        assert all(run["status"] == "SUCCESS" for run in runs)
        covered = sorted(c["key"] for run in runs for c in created_objects(run))
        assert covered == sorted(keys)
        assert sorted(key for run in runs for key in run["object_keys"]) == sorted(keys)
        # One event per upload, linked to the run that detected it (no model serves yet: they wait for one).
        events = {e["object_key"]: e for e in api.get("/detections", params={"limit": 100}).json()}
        assert {events[item["key"]]["run_id"] for item in stored} == run_ids
        assert all(events[item["key"]]["run_id"] == item["run_id"] for item in stored)
        # One notification per detection event, not one per run.
        notes = [n for n in api.get("/notifications", params={"event_type": "detection.waiting_for_model",
                                                              "limit": 100}).json() if n["object_key"] in keys]
        assert sorted(n["object_key"] for n in notes) == sorted(keys)
        # The run page lists the objects its run covered.
    shared = max(runs, key=lambda run: len(run["object_keys"]))
    page = run_page(server, shared["id"])
    assert 'id="run-objects"' in page
    assert all(f"<code>{key}</code>" in page for key in shared["object_keys"])


def run_page(server: Server, run_id: str) -> str:
    """The run's page as an admin sees it."""
    web = web_client(server, "admin", ADMIN_PASSWORD)
    try:
        page = web.get(f"/runs/{run_id}")
    finally:
        web.close()
    assert page.status_code == 200, page.text
    return page.text


def test_a_lone_upload_s_run_does_not_wait_for_the_queue_s_poll(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(LABELLOOP_QUEUE_POLLING_SECONDS="60")  # only a wake-up starts a run within seconds
    with server.client() as api:
        for i in range(2):  # one at a time, each waited for: each is a lone upload
            stored = api.put(f"/objects/images_for_detection/lone/{i}.png", content=blend(40 + i))
            assert stored.status_code == 201, stored.text
            assert server.wait_run(stored.json()["run_id"], timeout=15)["status"] == "SUCCESS"


def test_a_stream_of_uploads_is_detected_within_seconds_though_the_queue_polls_once_a_minute(make_server) -> None:  # type: ignore[no-untyped-def]
    # The batches that gather while runs are busy start in this process (engine.start_run), not at the poll.
    server: Server = make_server(LABELLOOP_QUEUE_POLLING_SECONDS="60", LABELLOOP_UPLOAD_BATCH_SECONDS="0.3")

    def put(i: int) -> str:
        with server.client() as own:
            stored = own.put(f"/objects/images_for_detection/stream/{i}.png", content=blend(60 + i))
            assert stored.status_code == 201, stored.text
            return stored.json()["run_id"]

    with ThreadPoolExecutor(4) as pool:
        run_ids = set(pool.map(put, range(24)))
    assert len(run_ids) > 1, "the stream spans several batches"
    # 30 s: a loaded machine's margin, still half the poll's period (the old code's runs waited for it).
    runs = [server.wait_run(run_id, timeout=30) for run_id in run_ids]
    assert all(run["status"] == "SUCCESS" for run in runs), runs
    assert all(run["queue"] is None and run["executor"] for run in runs), runs  # started here, not dequeued
    page = run_page(server, runs[0]["id"])
    assert "none (started at once by its process)" in page and runs[0]["executor"] in page
    # Another run this process queues on object-events (a training image's) wakes its worker: no poll waited for.
    with server.client() as api:
        stored = api.put("/objects/images_labeled_by_folder/stream_label/first.png", content=blend(99))
        assert stored.status_code == 201, stored.text
        training = server.wait_run(stored.json()["run_id"], timeout=30)
    assert training["status"] == "SUCCESS" and training["queue"] == "object-events", training


def test_the_same_upload_twice_is_one_event_and_one_run(shared_server: Server) -> None:
    with shared_server.client() as api:
        key = "images_for_detection/twice.png"
        first = api.put(f"/objects/{key}", content=blend(7)).json()
        again = api.put(f"/objects/{key}", content=blend(7)).json()
        assert again["unchanged"] and again["run_id"] == first["run_id"]
        assert shared_server.wait_run(first["run_id"])["status"] == "SUCCESS"
        events = [e for e in api.get("/detections", params={"limit": 100}).json() if e["object_key"] == key]
        assert len(events) == 1 and events[0]["run_id"] == first["run_id"]
