"""Scale-out: two ``labelloop worker`` processes on PostgreSQL and an S3 bucket share the work.

A web-only ``serve`` (it takes no runs) answers the API; the workers train (one at a time) and detect at
least 200 uploads; one worker is killed mid-way and the other takes over the runs it had in flight.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from conftest import Server, Worker, server_env, wait_until
from images import box_logo, smile_logo, unseen

pytestmark = pytest.mark.timeout(900)
UPLOADS = 200  # at least; more when the first worker has no run in flight by then
MOST_UPLOADS = 1000


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        return list(connection.execute(sql, params))


def runs_by_executor(url: str, name: str) -> dict[tuple[str, str], int]:
    rows = query(url, "SELECT executor_id, status, count(*) FROM dbos.workflow_status WHERE name = %s "
                      "GROUP BY executor_id, status", name)
    return {(executor, status): count for executor, status, count in rows}


def detections_by_executor(url: str) -> dict[str, int]:
    """How many of the uploads' runs each executor finished (a run taken over counts for its last executor)."""
    rows = query(url, "SELECT w.executor_id, count(*) FROM detection_events d JOIN dbos.workflow_status w ON "
                      "w.workflow_uuid = d.run_id WHERE d.object_key LIKE 'images_for_detection/scale-%%' AND "
                      "w.status = 'SUCCESS' GROUP BY w.executor_id")
    return dict(rows)


def put(api: httpx.Client, key: str, data: bytes) -> dict[str, Any]:
    response = api.put(f"/objects/{key}", content=data)
    assert response.status_code == 201, response.text
    return response.json()


def test_two_workers_share_uploads_and_survive_a_kill(tmp_path: Path, postgres_database: str, s3_server) -> None:
    url = postgres_database
    common = {**s3_server.env(s3_server.bucket()), "LABELLOOP_DATABASE_URL": url,
              # One machine: the processes share its cache (the backbone ONNX file is built once).
              "LABELLOOP_CACHE_FOLDER": str(tmp_path / "cache"), "LABELLOOP_RECOVERY_CHECK_SECONDS": "1",
              "LABELLOOP_DATABASE_POOL_SIZE": "4",
              # Runs of at most 8 uploads: the first worker must have one in flight when it is frozen, and with
              # the default windows (0.5 s, up to 32 uploads) 200 uploads made so few runs that under CI's load it
              # had none after its first 20 detections.
              "LABELLOOP_UPLOAD_BATCH_SIZE": "8"}
    web = Server(home=tmp_path / "web", env=server_env(**common, LABELLOOP_QUEUES="")).start()
    workers = [Worker(home=tmp_path / f"worker{i}", env=server_env(**common)).start() for i in range(2)]
    try:
        _scenario(web, workers, url)
    finally:
        for worker in workers:
            worker.stop()
        web.stop()


def _scenario(web: Server, workers: list[Worker], url: str) -> None:
    first, second = workers
    assert first.executor_id != second.executor_id
    api = web.client()

    # Training data, then two training checks at once: the training queue runs one at a time.
    for i in range(6):
        put(api, f"images_labeled_by_folder/amazon_logo/a{i}.png", smile_logo(i))
        put(api, f"images_labeled_by_folder/aws_logo/b{i}.png", box_logo(i))
    checks = [api.post("/training/check").json()["run_id"] for _ in range(2)]
    outputs = [web.wait_run(run_id, timeout=300) for run_id in checks]
    assert all(run["status"] == "SUCCESS" for run in outputs), outputs
    assert sorted(run["output"]["train"] for run in outputs) == [False, True]
    spans = sorted(query(url, "SELECT started_at_epoch_ms, updated_at FROM dbos.workflow_status "
                              "WHERE workflow_uuid = ANY(%s)", checks))
    assert spans[0][1] <= spans[1][0], f"training checks overlapped: {spans}"
    wait_until(lambda: api.get("/models/v1").json()["status"] == "RUNNING", 120, 0.5, "v1 RUNNING")
    assert {executor for executor, _ in runs_by_executor(url, "object_created")} <= {first.executor_id,
                                                                                    second.executor_id}

    # At least 200 uploads through the API, 8 at a time; the first worker is killed while it is detecting.
    # The uploads go on until it has been frozen with a run in flight and 40 more have been sent, so how fast
    # either worker goes (CI's load) cannot leave it idle when the test looks for a run to take over.
    started = time.monotonic()
    uploader = _Uploader()
    with ThreadPoolExecutor(8) as pool:
        sending = [pool.submit(uploader.send, api) for _ in range(8)]
        try:
            killed_with = _freeze_while_busy_or_explain(first, url, uploader)
            first.kill()
        finally:
            uploader.stop_after(40)
        for sent in sending:
            sent.result()
    images = uploader.images
    uploads = len(images)

    def all_detected() -> list[dict[str, Any]] | None:
        events = [e for e in api.get("/detections", params={"limit": 5000}).json() if e["object_key"] in images]
        return events if len(events) == uploads and all(e["status"] == "DETECTED" for e in events) else None

    try:
        events = wait_until(all_detected, 300, 0.5, f"{uploads} detections")
    except AssertionError as exc:
        stuck = query(url, "SELECT workflow_uuid, status, executor_id, queue_name, recovery_attempts, "
                           "application_version, started_at_epoch_ms FROM dbos.workflow_status WHERE status <> "
                           "'SUCCESS'")
        odd = query(url, "SELECT object_key, status, status_message, run_id FROM detection_events WHERE status "
                         "<> 'DETECTED'")
        steps = query(url, "SELECT workflow_uuid, function_id, function_name, error IS NOT NULL FROM "
                           "dbos.operation_outputs WHERE workflow_uuid = ANY(%s) ORDER BY 1, 2", list(killed_with))
        raise AssertionError(f"{exc}; killed {first.executor_id} with {sorted(killed_with)}; unfinished: "
                             f"{stuck}; events not detected: {odd}; steps of the runs taken over: {steps}") from exc
    elapsed = time.monotonic() - started
    assert sorted(e["object_key"] for e in events) == sorted(images)  # exactly one event per image
    counted = query(url, "SELECT object_key, count(*) FROM detection_events WHERE object_key LIKE "
                         "'images_for_detection/scale-%%' GROUP BY object_key HAVING count(*) <> 1")
    assert counted == []

    # Both workers did part of the work; the killed worker's runs in flight were finished by the other.
    # An image's event is DETECTED before its run has sent the notification: wait for the runs to end.
    unfinished = "SELECT workflow_uuid, status FROM dbos.workflow_status WHERE name = 'object_created' AND " \
                 "status IN ('ENQUEUED', 'PENDING')"
    wait_until(lambda: not query(url, unfinished), 60, 0.25, "every run to end")
    failed = query(url, "SELECT workflow_uuid, status, error FROM dbos.workflow_status WHERE name = "
                        "'object_created' AND status <> 'SUCCESS'")
    runs = runs_by_executor(url, "object_created")
    assert not failed, (runs, failed)
    shares = detections_by_executor(url)
    assert shares.get(first.executor_id, 0) >= 20 and shares.get(second.executor_id, 0) >= 20, shares
    assert sum(shares.values()) == uploads, shares
    taken_over = query(url, "SELECT workflow_uuid, status, executor_id FROM dbos.workflow_status "
                            "WHERE workflow_uuid = ANY(%s)", list(killed_with))
    assert {(status, executor) for _, status, executor in taken_over} == {("SUCCESS", second.executor_id)}
    # Whichever live process checked first handed them back to the queue (the web server checks too).
    assert "recovered the runs of a stopped process" in second.log() + web.log_path.read_text()
    print(f"\n{uploads} uploads detected in {elapsed:.1f}s; detections per executor: {shares}; "
          f"{len(killed_with)} run(s) taken over from the killed worker")


class _Uploader:
    """Uploads generated logos from several threads until told how many more to send after a moment."""

    def __init__(self) -> None:
        self.images: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._last = MOST_UPLOADS

    def stop_after(self, more: int) -> None:
        """Send ``more`` uploads beyond those sent so far (and at least ``UPLOADS`` in all), then stop."""
        with self._lock:
            self._last = min(self._last, max(UPLOADS, len(self.images) + more))

    def send(self, api: httpx.Client) -> None:
        """One sending thread: take the next number, upload its image, until the last number is taken."""
        while True:
            with self._lock:
                i = len(self.images)
                if i >= self._last:
                    return
                key = f"images_for_detection/scale-{i:04d}.png"
                self.images[key] = b""  # taken; drawn outside the lock
            data = self.images[key] = (smile_logo, box_logo, unseen)[i % 3](1000 + i)
            put(api, key, data)


def _freeze_while_busy_or_explain(worker: Worker, url: str, uploader: _Uploader) -> set[str]:
    """Wait (up to 180 s, while uploads go on) until the worker is frozen with runs in flight; say what was
    seen when it never was."""
    try:
        return wait_until(lambda: _freeze_while_busy(worker, url), 180, 0.05, "the first worker detecting")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {len(uploader.images)} uploads sent; detections per executor: "
                             f"{detections_by_executor(url)}; runs: {runs_by_executor(url, 'object_created')}") \
            from exc


def _pending(url: str, executor: str) -> list[str]:
    return [row[0] for row in query(url, "SELECT workflow_uuid FROM dbos.workflow_status WHERE status = "
                                         "'PENDING' AND executor_id = %s AND name = 'object_created'", executor)]


def _freeze_while_busy(worker: Worker, url: str) -> set[str] | None:
    """Stop the worker (SIGSTOP) once it has done some runs; its runs in flight then, or None to go on."""
    if detections_by_executor(url).get(worker.executor_id, 0) < 20:
        return None
    worker.process.send_signal(signal.SIGSTOP)
    pending = set(_pending(url, worker.executor_id))
    if not pending:
        worker.process.send_signal(signal.SIGCONT)
    return pending or None
