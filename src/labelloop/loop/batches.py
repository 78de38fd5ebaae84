"""Uploads for detection gathered into batches: one workflow run detects several uploads.

A durable workflow per uploaded image costs several ms of server CPU per image (its queue row, status
updates and step records), so uploads that arrive close together share one run. Each upload still gets its
own detection event, notification and human loop; the event's ``run_id`` names the batch's run.

How a batch forms: an upload *joins* the open batch (opening one if there is none), records its detection
event under the batch's run id, then reports it *recorded*. A batch opened while no batch of this process is
being detected (its run reports :meth:`UploadBatches.detected`), or ``window`` seconds or more after the
previous one closed, is due at once: a lone upload's run is started by its own request. A run is started in this
process without the queue's poll when it takes object-events runs (``engine.start_run``, under a cap), else queued
for the workers (woken at once when due at once; that poll was most of a lone upload's time to detection).
Otherwise it is due ``window`` seconds after the previous one closed (or when it holds ``max_size`` uploads): while
runs are busy, uploads gather, one run per window. (Counted from the previous batch's
opening, the window made the batch opened just after a whole window's one due at once: under a steady stream every
other run detected one upload, and a run costs some 9 ms of server CPU besides its images'.) A due batch is queued once
every upload that joined it has recorded its event, so its run reads them all. An upload whose event existed
already (the same key and ETag) leaves the batch: its run is the earlier one. A batch whose run another
process took (a web-only server and workers) counts as being detected for ``BUSY_SECONDS`` at most.

Nothing is lost if queueing fails or the process stops first: the events are recorded, waiting, under a run
that does not exist, and the stranded-detection sweep (``routing.retry_stranded_detections``, at start-up
and on its schedule) detects them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# A queued batch counts as being detected this long at most, when no run in this process reports it detected.
BUSY_SECONDS = 2.0


@dataclass
class Batch:
    """Uploads sharing one run: its id, when it is due (``at_once``: when it opened), the uploads still recording
    their event, and the recorded ones (``{"key", "etag", "detection_id"}`` each)."""

    run_id: str
    due: float
    at_once: bool = False
    size: int = 0
    recording: int = 0
    members: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


class UploadBatches:
    """The batches of this process; ``queue(run_id, members, at_once)`` starts a batch's run (``at_once``: the
    batch was due when it opened, so nothing gathers behind its run: start it without waiting for a poll)."""

    def __init__(self, queue: Callable[[str, list[dict[str, Any]], bool], Any], *, prefix: str, window: float,
                 max_size: int) -> None:
        self._queue = queue
        self.prefix = prefix
        self.window = window
        self.max_size = max_size
        self._lock = threading.Condition()
        self._open: Batch | None = None
        self._unqueued: dict[str, Batch] = {}
        self._last_closed = float("-inf")
        self._busy: dict[str, float] = {}  # queued batches not yet detected → when they were queued
        self._timer: threading.Thread | None = None

    def join(self) -> Batch:
        """The batch a new upload joins (call :meth:`recorded` with it once its event is written)."""
        with self._lock:
            now = time.monotonic()
            batch = self._open
            if batch is None:
                due = now if not self._is_busy(now) else max(now, self._last_closed + self.window)
                batch = Batch(f"{self.prefix}{uuid.uuid4().hex[:16]}", due, at_once=due <= now)
                self._open = batch
                self._unqueued[batch.run_id] = batch
                self._start_timer()
                # Only a new batch can be due sooner than what the timer waits for; waking it at every upload
                # made it take this lock (and then the GIL) once per upload, while the uploads queued on it.
                self._lock.notify_all()
            batch.size += 1
            batch.recording += 1
            if batch.size >= self.max_size:
                self._close(batch)
            return batch

    def recorded(self, batch: Batch, member: dict[str, Any] | None) -> None:
        """An upload that joined ``batch`` has recorded its event (``member``), or leaves it (None: its event
        existed already, or recording it failed). Queues the batch's run here if it is due and complete."""
        with self._lock:
            batch.recording -= 1
            if member is not None:
                batch.members.append(member)
            if not batch.closed and batch.due <= time.monotonic():
                self._close(batch)
            ready = self._take_if_ready(batch)
        if ready:
            self._start(ready)

    def detected(self, run_id: str) -> None:
        """The run of batch ``run_id`` has detected its uploads (a run of another process's batch: nothing)."""
        with self._lock:
            self._busy.pop(run_id, None)

    def holds(self, run_id: str) -> bool:
        """Whether ``run_id`` is a batch of this process not queued yet (its events are not stranded)."""
        with self._lock:
            return run_id in self._unqueued

    def flush(self, timeout: float = 10.0) -> None:
        """Queue every batch now (at shutdown): close the open one and wait for its uploads to record."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._open is not None:
                self._close(self._open)
            while any(b.recording for b in self._unqueued.values()) and time.monotonic() < deadline:
                self._lock.wait(0.05)
            ready = [b for b in list(self._unqueued.values()) if self._take_if_ready(b)]
        for batch in ready:
            self._start(batch)

    # ── inside the lock ──────────────────────────────────────────────────

    def _is_busy(self, now: float) -> bool:
        """Whether a batch queued here is still being detected (forgetting those queued too long ago)."""
        for run_id in [run_id for run_id, queued in self._busy.items() if now - queued > BUSY_SECONDS]:
            del self._busy[run_id]
        return bool(self._busy)

    def _close(self, batch: Batch) -> None:
        batch.closed = True
        if self._open is batch:
            self._open, self._last_closed = None, time.monotonic()

    def _take_if_ready(self, batch: Batch) -> Batch | None:
        """The batch, removed from the unqueued ones, if it is closed and every upload has recorded."""
        if not batch.closed or batch.recording or batch.run_id not in self._unqueued:
            return None
        del self._unqueued[batch.run_id]
        self._lock.notify_all()
        if not batch.members:
            return None
        self._busy[batch.run_id] = time.monotonic()
        return batch

    def _start_timer(self) -> None:
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Thread(target=self._close_when_due, name="upload-batches", daemon=True)
            self._timer.start()

    # ── outside the lock ─────────────────────────────────────────────────

    def _close_when_due(self) -> None:
        """Close the open batch when it is due (queueing it if its uploads have recorded); ends when idle."""
        while True:
            with self._lock:
                batch = self._open
                if batch is None:
                    self._timer = None
                    return
                wait = batch.due - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                self._close(batch)
                ready = self._take_if_ready(batch)
            if ready:
                self._start(ready)

    def _start(self, batch: Batch) -> None:
        try:
            self._queue(batch.run_id, batch.members, batch.at_once)
        except Exception:  # its events wait under a run that does not exist: the stranded-detection sweep runs them
            log.exception("could not queue a batch of uploads for detection; the stranded-detection sweep will",
                          extra={"run_id": batch.run_id, "uploads": len(batch.members)})
            return
        log.info("uploads for detection queued", extra={"run_id": batch.run_id, "uploads": len(batch.members),
                                                        "at_once": batch.at_once})
