"""Serving in one process: the serving version in memory, a blue-green switch, and micro-batched inference.

``Minimum-Inference-Units`` inference units each own an ONNX Runtime session of the backbone (the CPU cores
split between them) and take requests from one queue; a unit takes every request waiting, up to ``max_batch``,
so concurrent requests share one backbone run. It does not wait for more to arrive: requests that come while a
batch runs form the next batch, and a lone request is not delayed. ``max_batch`` is 8: on this backbone, with a
thread pool that does not spin, the CPU cost per image is about the same at batch 1, 8 and 32, while ONNX
Runtime's memory arena keeps what the largest batch needed (some 240 MB more at 32 than at 8; see the README's
Performance section). A batch is served entirely by the version that was serving when the batch started: the
switch replaces one reference under a lock, and a version is only put there after it has been loaded and has
answered a warm-up batch. A version trained on an int8 backbone (Quantize-Backbone) brings its own session
of that backbone, which every unit uses for its batches. A version with a warm start (``detection.warm_start``)
also holds the head of the version it replaced, when that one read the same kind of embeddings: for a request
that asks (:meth:`Serving.submit_compared`), that head's top label and confidence on the same embedding come
back beside the answer (the head only: the backbone runs once).

A batch's head (its familiarity bank's product, about the same CPU for 1 to ``max_batch`` rows) may run together with
the next batch's: a unit whose batch is done while more requests wait holds it, and the next batch to finish (either
unit's) answers both with one head call (``Serving._head_stage``; README Performance, item 52).

Each version serves on its input view (``LoadedVersion.view``: the centre crop 'orig' or 'letterbox'), and a
request says which view its images were prepared with: a request prepared for one version's view that reaches a
version with another (a switch between preparing and running it) is answered :class:`ViewChanged`, never run,
and the caller prepares it again for the version now serving (``endpoint``).

A unit that finds no request waiting may do the process's idle work (``idle_work``: the endpoint prepares one
pending upload, README Performance, the item on the units' feed) before it waits: the endpoint's one decode thread
decodes uploads one after another, and after a head call answers several clients their next uploads queue for it
while a unit waits. ``Serving.nudge`` wakes a waiting unit for that work (a marker in the request queue, which a
busy unit skips).

A serving process runs numpy's BLAS (a batch's head: its logits) on ``head_blas_threads`` threads (setting, 1 by
default; :func:`limit_blas_threads`): on OpenBLAS's default of one thread per core, its worker threads spin after
each small product, on the cores the backbone runs on. The familiarity bank's product runs in ONNX Runtime on the
unit's own thread (``Head.nearest_similarity``; README Performance, item 45).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from labelloop.config import get_settings
from labelloop.modeling.embedding import Embedder, default_threads
from labelloop.modeling.predict import ranked

log = logging.getLogger(__name__)


class NoModelServing(RuntimeError):
    """No model version is serving; the message says what to do."""


class ViewChanged(RuntimeError):
    """The serving version changed to one with another input view after the request was prepared."""


class HeadLike(Protocol):
    """A trained head: label names and probabilities from backbone embeddings."""

    labels: list[str]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PreviousHead:
    """The head of the version a warm-started version replaced (it reads the same embeddings)."""

    version: str
    head: HeadLike


@dataclass
class LoadedVersion:
    """A model version that is loaded, warmed and ready to answer."""

    version: str
    head: HeadLike
    # The version's own backbone session (an int8 backbone, Quantize-Backbone); None: the units' fp32 sessions.
    embedder: Embedder | None = None
    loaded_at: float = field(default_factory=time.time)
    previous: PreviousHead | None = None  # warm start: the replaced version's head, on the same embeddings
    view: str = "orig"  # the images.VIEWS key every request for it is prepared with (its input view)

    @property
    def labels(self) -> list[str]:
        return list(self.head.labels)


@dataclass(frozen=True)
class Compared:
    """An answer with the previous head's view of the same images (``previous`` None without one)."""

    version: LoadedVersion
    probabilities: np.ndarray  # N×labels of the serving version
    previous: list[tuple[str, float]] | None  # per image, the previous head's top label and confidence (0–100)


@dataclass
class _Request:
    inputs: np.ndarray
    future: Future[Any]
    compared: bool = False  # answer with a Compared (else a (version, probabilities) pair)
    view: str | None = None  # the view the inputs were prepared with (None: not checked)


class _Wake:
    """The marker ``Serving.nudge`` queues: not a request; it sends a waiting unit to its idle work."""


_WAKE = _Wake()


class _RequestQueue(queue.Queue[_Request | _Wake | None]):
    """The units' queue: requests, wake-up markers and stops (None), with the number of requests in it.

    ``requests`` is kept under the queue's own lock (``_put`` and ``_get`` run inside it), so a unit deciding
    whether to hold a batch counts what will run next, not the markers (README Performance, item 63)."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self.requests = 0

    def _put(self, item: _Request | _Wake | None) -> None:
        super()._put(item)
        if isinstance(item, _Request):
            self.requests += 1

    def _get(self) -> _Request | _Wake | None:
        item = super()._get()
        if isinstance(item, _Request):
            self.requests -= 1
        return item


@dataclass
class _Embedded:
    """A batch whose backbone has run, waiting for its head (``Serving._head_stage``)."""

    version: LoadedVersion
    batch: list[_Request]
    embeddings: np.ndarray


class Serving:
    """The model server of this process."""

    def __init__(self, embedder_factory: Callable[[int], Embedder], units: int = 1, max_batch: int = 8,
                 max_wait_seconds: float = 0.0, head_blas_threads: int | None = None,
                 idle_work: Callable[[Serving], bool] | None = None) -> None:
        """``head_blas_threads``: BLAS threads for a batch's head (None: the ``head_blas_threads`` setting; 0:
        OpenBLAS's own). ``idle_work``: called by a unit that finds no request waiting, with this server; it does
        one piece of work (which must not wait on this server's units) and says whether there was one."""
        self._embedder_factory = embedder_factory
        limit_blas_threads(get_settings().head_blas_threads if head_blas_threads is None else head_blas_threads)
        self.max_batch = max_batch
        self.max_wait_seconds = max_wait_seconds
        self._idle_work = idle_work
        self._active: LoadedVersion | None = None
        self._switch_lock = threading.Lock()
        self._requests = _RequestQueue()
        self._held: _Embedded | None = None  # a batch whose head runs with the next batch's (``_head_stage``)
        self._held_lock = threading.Lock()
        self._units: list[threading.Thread] = []
        self._embedders: list[Embedder] = []
        self.units = 0
        self.batches = 0
        self.set_units(units)

    # ── versions ──────────────────────────────────────────────────────────────

    @property
    def active(self) -> LoadedVersion | None:
        """The version serving now, or ``None``."""
        return self._active

    def warm(self, version: str, head: HeadLike, embedder: Embedder | None = None,
             previous: PreviousHead | None = None, view: str = "orig") -> LoadedVersion:
        """Load ``version`` beside the serving one and run a warm-up batch through it (blue side); ``embedder``:
        the version's own backbone session, when its head was trained on another backbone than the units';
        ``previous``: the replaced version's head (warm start); ``view``: its input view (an images.VIEWS key)."""
        loaded = LoadedVersion(version, head, embedder, previous=previous, view=view)
        probe = np.zeros((1, 3, 224, 224), dtype=np.float32)
        embedder = embedder or self._embedders[0]
        probabilities = head.predict_proba(embedder.embed(probe))
        if probabilities.shape != (1, len(loaded.labels)) or not np.all(np.isfinite(probabilities)):
            raise RuntimeError(f"model version {version} gave unusable warm-up output {probabilities.shape}")
        return loaded

    def switch(self, loaded: LoadedVersion) -> LoadedVersion | None:
        """Make ``loaded`` the serving version atomically; returns the version it replaced."""
        with self._switch_lock:
            previous, self._active = self._active, loaded
        log.info("serving version switched", extra={"version": loaded.version,
                                                    "previous": previous.version if previous else None})
        return previous

    def stop(self) -> LoadedVersion | None:
        """Stop serving (requests then get :class:`NoModelServing`); returns the version that served."""
        with self._switch_lock:
            previous, self._active = self._active, None
        return previous

    # ── inference units ──────────────────────────────────────────────────────

    def set_units(self, units: int) -> None:
        """Run ``units`` inference units (each its own backbone session); the cores are split between them."""
        units = max(1, units)
        if units == self.units:
            return
        self._stop_units()
        threads = max(1, default_threads() // units)
        self._embedders = [self._embedder_factory(threads) for _ in range(units)]
        self._units = [threading.Thread(target=self._unit, args=(embedder,), name=f"inference-unit-{i}",
                                        daemon=True) for i, embedder in enumerate(self._embedders)]
        for thread in self._units:
            thread.start()
        self.units = units
        log.info("inference units running", extra={"units": units, "threads_per_unit": threads})

    def _stop_units(self) -> None:
        for _ in self._units:
            self._requests.put(None)
        for thread in self._units:
            thread.join(timeout=30)
        self._units = []

    def close(self) -> None:
        """Stop every unit (pending requests are answered first)."""
        self._stop_units()
        self.units = 0

    def _take_batch(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, size = [first], len(first.inputs)
        deadline = time.monotonic() + self.max_wait_seconds
        while size < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                item = self._requests.get(timeout=wait) if wait > 0 else self._requests.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if isinstance(item, _Request):
                batch.append(item)
                size += len(item.inputs)
        return batch, False

    def _unit(self, embedder: Embedder) -> None:
        while True:
            first = self._next_request()
            if first is None:
                self._answer_held()
                return
            batch, stop = self._take_batch(first)
            self._run(embedder, batch)
            if stop:
                self._answer_held()
                return

    def _next_request(self) -> _Request | None:
        """The next request for this unit (None: stop). With none waiting, a held batch is answered (never kept
        waiting for work) and the idle work done, one piece at a time, before the unit waits; a wake-up marker
        sends it round again."""
        while True:
            item = self._waiting_item()
            if not isinstance(item, _Wake):
                return item
            self._answer_held()
            if self._idle_work is not None and self._idle(self._idle_work):
                continue
            item = self._requests.get()
            if not isinstance(item, _Wake):
                return item

    def _idle(self, work: Callable[[Serving], bool]) -> bool:
        """One piece of idle work; a failure is logged and the unit keeps serving."""
        try:
            return work(self)
        except Exception:
            log.exception("an inference unit's idle work failed")
            return False

    def _waiting_item(self) -> _Request | _Wake | None:
        """The first request or stop waiting in the queue, skipping markers; ``_WAKE`` when there is none."""
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return _WAKE
            if not isinstance(item, _Wake):
                return item

    def nudge(self) -> None:
        """Wake a unit waiting on an empty queue for its idle work (nothing without ``idle_work``)."""
        if self._idle_work is not None:
            self._requests.put(_WAKE)

    def _run(self, embedder: Embedder, batch: list[_Request]) -> None:
        # A request whose caller gave up (its future cancelled) is dropped, not answered: answering a cancelled
        # future raises, which would end this unit's thread.
        batch = [request for request in batch if request.future.set_running_or_notify_cancel()]
        if not batch:
            return
        version = self._active  # one version answers the whole batch
        if version is None:
            for request in batch:
                request.future.set_exception(NoModelServing(
                    "no model version is serving; train one (POST /api/v1/training/check) or deploy one"))
            return
        batch = _same_view(version, batch)
        if not batch:
            return
        try:
            inputs = np.concatenate([request.inputs for request in batch])
            embeddings = (version.embedder or embedder).embed(inputs)
        except Exception as exc:  # every waiting request gets the error, the unit keeps serving
            _fail(version, batch, exc)
            return
        self.batches += 1
        self._head_stage(_Embedded(version, batch, embeddings))

    def _head_stage(self, done: _Embedded) -> None:
        """Run the head on ``done`` and answer it, or hold it for the next batch's head (either unit's).

        A head costs about the same for 1 to ``max_batch`` rows (the familiarity bank's product, blocks of exactly
        ``PRODUCT_ROWS``: README Performance, items 39 and 45), and at 8 clients a batch holds about 2 images. So a
        batch of fewer than ``max_batch`` images is held while requests wait in the queue (a unit will run another
        batch at once; wake-up markers and stops are not requests: item 63) and nothing is held yet; the next batch
        to finish takes it into its own head call when both fit in ``max_batch`` rows, for the same version. A unit
        that finds the queue empty answers a held batch before it waits (``_unit``), so a lone request is never
        held."""
        with self._held_lock:
            held, self._held = self._held, None
            if held is None and len(done.embeddings) < self.max_batch and self._requests.requests > 0:
                self._held = done
                return
        if held is not None and held.version is done.version and \
                len(held.embeddings) + len(done.embeddings) <= self.max_batch:
            self._answer([held, done])
            return
        if held is not None:
            self._answer([held])
        self._answer([done])

    def _answer_held(self) -> None:
        """Answer the held batch, if any (``_head_stage``)."""
        with self._held_lock:
            held, self._held = self._held, None
        if held is not None:
            self._answer([held])

    def _answer(self, parts: list[_Embedded]) -> None:
        """One head call on the embeddings of ``parts`` (batches of one version) and every request answered."""
        version = parts[0].version
        batch = [request for part in parts for request in part.batch]
        try:
            embeddings = parts[0].embeddings if len(parts) == 1 else np.concatenate([p.embeddings for p in parts])
            probabilities = version.head.predict_proba(embeddings)
            previous = _previous_top(version, embeddings) if any(r.compared for r in batch) else None
        except Exception as exc:  # every waiting request gets the error, the unit keeps serving
            _fail(version, batch, exc)
            return
        start = 0
        for request in batch:
            end = start + len(request.inputs)
            if request.compared:
                request.future.set_result(Compared(version, probabilities[start:end],
                                                   None if previous is None else previous[start:end]))
            else:
                request.future.set_result((version, probabilities[start:end]))
            start = end

    def submit(self, inputs: np.ndarray, future: Future[Any] | None = None,
               view: str | None = None) -> Future[tuple[LoadedVersion, np.ndarray]]:
        """Queue preprocessed images (N×3×224×224); the future gives (version, N×labels probabilities).
        ``future``: the caller's own (not yet running) future to complete, instead of a new one. ``view``: the
        view the images were prepared with; a version with another input view answers :class:`ViewChanged`."""
        return self._queue(inputs, compared=False, future=future, view=view)

    def submit_compared(self, inputs: np.ndarray, view: str | None = None) -> Future[Compared]:
        """:meth:`submit`, with the previous head's top label and confidence per image when the serving
        version has one (warm start)."""
        return self._queue(inputs, compared=True, view=view)

    def _queue(self, inputs: np.ndarray, *, compared: bool, future: Future[Any] | None = None,
               view: str | None = None) -> Future[Any]:
        if self._active is None:
            raise NoModelServing("no model version is serving; train one (POST /api/v1/training/check) "
                                 "or deploy one (POST /api/v1/models/{version}/deploy)")
        future = future or Future()
        self._requests.put(_Request(inputs, future, compared, view))
        return future


def _fail(version: LoadedVersion, batch: list[_Request], exc: Exception) -> None:
    """Every request of ``batch`` gets ``exc`` (inference failed; the unit keeps serving)."""
    log.exception("inference failed", extra={"version": version.version, "batch": len(batch)})
    for request in batch:
        request.future.set_exception(exc)


def limit_blas_threads(limit: int) -> None:
    """numpy's BLAS on at most ``limit`` threads in this whole process from now on (0: OpenBLAS's own count).

    For the head's products on a served batch (its logits; until item 45 also the familiarity bank's product, up to
    256 training images a label). OpenBLAS splits such a product over every core, and its worker threads then spin
    for more work (OpenBLAS's thread timeout) on the cores the backbone needs (README Performance, item 40).
    Process-wide and for good, not per batch: OpenBLAS (pthreads) has one count for the process, so a limit taken
    and given back around each batch let a second unit's batch run on the restored count now and then, and a
    product's float32 rounding depends on its thread count (cosines within 3 × 10⁻⁷), which would make an image's
    confidence depend on the moment it was served (item 39)."""
    if limit:
        threadpool_limits(limits=limit, user_api="blas")


def _same_view(version: LoadedVersion, batch: list[_Request]) -> list[_Request]:
    """The requests prepared with ``version``'s view; the others are answered :class:`ViewChanged`."""
    kept = []
    for request in batch:
        if request.view is None or request.view == version.view:
            kept.append(request)
        else:
            request.future.set_exception(ViewChanged(
                f"model version {version.version} serves on the {version.view!r} view; the request was prepared "
                f"as {request.view!r}"))
    return kept


def _previous_top(version: LoadedVersion, embeddings: np.ndarray) -> list[tuple[str, float]] | None:
    """The previous head's top label and confidence (0–100) per embedding, or None without one."""
    if version.previous is None:
        return None
    labels = list(version.previous.head.labels)
    tops = [ranked(labels, row)[0] for row in version.previous.head.predict_proba(embeddings)]
    return [(label, round(confidence, 4)) for label, confidence in tops]

