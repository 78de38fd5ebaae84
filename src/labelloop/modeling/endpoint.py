"""This process's model runtime: the backbone ONNX file, the embedder training uses, and the serving endpoint
(the version the database marks RUNNING, in memory, micro-batched)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.config import get_settings
from labelloop.files import atomic_write_bytes
from labelloop.modeling import child, int8
from labelloop.modeling.embedding import Embedder, EmbeddingCache, default_threads
from labelloop.modeling.export import backbone_fingerprint, backbone_onnx_path, stored_fingerprint
from labelloop.modeling.images import prepare, view_key
from labelloop.modeling.models import ModelVersion
from labelloop.modeling.predict import ranked
from labelloop.modeling.serving import Compared, LoadedVersion, NoModelServing, PreviousHead, Serving, ViewChanged
from labelloop.modeling.versions import ModelError, get_version, head_of, serving_version_name
from labelloop.parameters import service as parameters

log = logging.getLogger(__name__)

__all__ = ["NoModelServing", "backbone_path", "detect_compared", "detect_image_compared", "detect_inputs", "serving",
           "sync_serving", "training_embedder", "version_backbone", "version_embedder"]

# How often a request is prepared again when the version that would run it switched to another input view meanwhile.
VIEW_RETRIES = 3

# ── the backbone file ────────────────────────────────────────────────────────


def backbone_path() -> Path:
    """The backbone ONNX file, built in a child process when missing or stale.

    Torch is needed only to build the file; building it in a child process keeps torch (some 500 MB of
    resident memory) out of the serving and training processes.
    """
    cache_dir = get_settings().cache_dir
    path = backbone_onnx_path(cache_dir)
    if stored_fingerprint(path) == backbone_fingerprint():
        return path
    log.info("building the backbone ONNX file", extra={"path": str(path)})
    child.run("labelloop.modeling.export:ensure_backbone_onnx", str(cache_dir),
              failure="could not build the backbone ONNX file")
    return path


_embedder_lock = threading.Lock()


def training_embedder() -> tuple[Embedder, EmbeddingCache]:
    """A backbone session for one training (or one gate's or warm start's embeddings) and the embedding cache.

    A new session each time, with a memory arena of its own that goes back with it when the caller drops it: a
    training embeds at batch 32, and in the serving sessions' shared arena that batch's buffers stayed for the
    life of the process, as did the session kept for the next training (README Performance, item 44)."""
    embedder = Embedder(backbone_path(), shared_arena=False)
    return embedder, EmbeddingCache.for_embedder(get_settings().cache_dir / "embeddings", embedder)


def version_backbone(row: ModelVersion) -> Path:
    """The backbone file ``row``'s head was trained on: the shared fp32 file, or the version's own int8 file,
    written into this machine's cache from the database when missing (call inside the row's session)."""
    if row.backbone_fingerprint is None:
        return backbone_path()
    path = int8.backbone_file(get_settings().cache_dir, row.backbone_fingerprint)
    if int8.stored_fingerprint(path) != row.backbone_fingerprint:
        if row.backbone_int8 is None:
            raise ModelError(f"model version {row.version} serves an int8 backbone that is not stored")
        atomic_write_bytes(path, row.backbone_int8)
    return path


_version_embedders: dict[str, Embedder] = {}  # int8 backbone sessions by fingerprint, the newest last
VERSION_EMBEDDERS_KEPT = 2


def version_embedder(row: ModelVersion) -> tuple[Embedder, EmbeddingCache]:
    """The backbone session and embedding cache that go with ``row``'s head (call inside the row's session)."""
    if row.backbone_fingerprint is None:
        return training_embedder()
    with _embedder_lock:
        embedder = _version_embedders.pop(row.backbone_fingerprint, None)
        if embedder is None:
            embedder = Embedder(version_backbone(row))
            int8.check_cpu(embedder, row.version)
        _version_embedders[row.backbone_fingerprint] = embedder
        while len(_version_embedders) > VERSION_EMBEDDERS_KEPT:
            _version_embedders.pop(next(iter(_version_embedders)))
    return embedder, EmbeddingCache.for_embedder(get_settings().cache_dir / "embeddings", embedder)


# ── serving in this process ──────────────────────────────────────────────────

_serving: Serving | None = None
_serving_lock = threading.Lock()
_synced_at = 0.0
_sync_lock = threading.Lock()
SYNC_SECONDS = 1.0


def backbone_sessions(units: int) -> int:
    """How many backbone sessions serve ``units`` inference units (Minimum-Inference-Units): at least one
    single-thread session per core. While one session runs its batch the next is being decoded for another,
    where one session of two threads left a core idle (quiet machine, README Performance, sixth pass: 8 clients
    0.68–0.78 of raw batch 32 against 0.60–0.66 in the same runs; one client's p50 15–16 → 20–22 ms)."""
    return max(units, default_threads())


def serving() -> Serving:
    """This process's model server (created on first use; builds the backbone ONNX file if missing)."""
    global _serving
    with _serving_lock:
        if _serving is None:
            path = backbone_path()
            with db.session() as session:
                units = parameters.value(parameters.MINIMUM_INFERENCE_UNITS, session=session)
            _serving = Serving(lambda threads: Embedder(path, threads=threads), units=backbone_sessions(units),
                               idle_work=_prepare_pending)
        return _serving


def close_serving() -> None:
    """Stop this process's inference units."""
    global _serving
    with _serving_lock:
        if _serving is not None:
            _serving.close()
        _serving = None


def load(version: str) -> LoadedVersion:
    """Load and warm ``version`` in this process without switching to it (with the head of the version it
    replaced, when it has a warm start)."""
    with db.session() as session:
        row = get_version(version, session=session)
        head = head_of(row)
        embedder = None if row.backbone_fingerprint is None else version_embedder(row)[0]
        previous = _previous_head(row, session=session)
        view = view_key(row.input_view)
    return serving().warm(version, head, embedder, previous, view)


def _previous_head(row: ModelVersion, *, session: Session) -> PreviousHead | None:
    """The head of the version ``row``'s warm start was built against, when it reads the same embeddings (the
    same backbone and input view)."""
    name = (row.warm_start or {}).get("previous")
    if name is None:
        return None
    previous = session.scalar(select(ModelVersion).where(ModelVersion.version == name))
    if (previous is None or not previous.has_head or previous.backbone_fingerprint != row.backbone_fingerprint
            or previous.input_view != row.input_view):
        return None
    return PreviousHead(name, head_of(previous))


def switch_to(version: str) -> None:
    """Serve ``version`` here (loading it unless it already serves)."""
    loaded = serving().active
    if loaded is None or loaded.version != version:
        serving().switch(load(version))


def stop_serving(version: str) -> None:
    """Stop serving ``version`` here, if it is what serves."""
    active = serving().active
    if active is not None and active.version == version:
        serving().stop()


def sync_serving(force: bool = False) -> str | None:
    """Make this process serve what the database says is RUNNING (other processes may have switched).

    Checked at most once a second on the request path; callers that arrive while a check loads a version
    wait for it, so none of them is told that nothing serves. Returns the version now serving here.
    """
    global _synced_at
    server = serving()
    if not force and time.monotonic() - _synced_at < SYNC_SECONDS:
        return server.active.version if server.active else None
    with _sync_lock:
        if not force and time.monotonic() - _synced_at < SYNC_SECONDS:
            return server.active.version if server.active else None
        with db.session() as session:
            wanted_name = serving_version_name(session=session)  # not the row: its head is megabytes
            units = parameters.value(parameters.MINIMUM_INFERENCE_UNITS, session=session)
        server.set_units(backbone_sessions(units))
        active = server.active
        if wanted_name is None and active is not None:
            server.stop()
        elif wanted_name is not None and (active is None or active.version != wanted_name):
            server.switch(load(wanted_name))
        _synced_at = time.monotonic()
        return wanted_name


def prepare_image(data: bytes, view: str = "orig") -> np.ndarray:
    """Decode and preprocess one uploaded image into a 1×3×224×224 batch as ``view`` (an images.VIEWS key: a
    version's input view, ``serving_view``); raises ``ImageRejected``."""
    return prepare(data, view=view)[None, ...]


def serving_view() -> str:
    """The input view (images.VIEWS key) of the version serving here, after picking up a switch made by another
    process ('orig' when nothing serves: the request then gets ``NoModelServing``)."""
    sync_serving()
    active = serving().active
    return active.view if active is not None else "orig"


def labels_of(labels: list[str], probabilities: np.ndarray) -> list[dict[str, Any]]:
    """Every label with its confidence (0–100), best first, as the API answers."""
    return [{"name": name, "confidence": round(confidence, 4)} for name, confidence in ranked(labels, probabilities)]


def detect_inputs(inputs: np.ndarray) -> tuple[str, list[list[dict[str, Any]]]]:
    """Detect preprocessed images (N×3×224×224): the version used and, per image, every label best first."""
    sync_serving()
    loaded, probabilities = serving().submit(inputs).result(timeout=120)
    return loaded.version, [labels_of(loaded.labels, row) for row in probabilities]


def detect_compared(inputs: np.ndarray, view: str | None = None) -> Compared:
    """Detect preprocessed images with the serving version, and the previous version's top label and
    confidence on each when the serving one has a warm start (``Compared.previous``). ``view``: the view the
    inputs were prepared with (``ViewChanged`` when the serving version has another)."""
    sync_serving()
    return serving().submit_compared(inputs, view).result(timeout=120)


def detect_image_compared(data: bytes) -> Compared:
    """:func:`detect_compared` on one image's bytes, prepared with the input view of the version that runs it
    (prepared again when a switch to a version with another view came in between); raises ``ImageRejected``,
    ``NoModelServing``."""
    retries = 0
    while True:
        try:
            return submit_image_compared(data).result(timeout=120)
        except ViewChanged:
            retries = _retry_view(retries)


def submit_image_compared(data: bytes) -> Future[Compared]:
    """Prepare one image's bytes with the input view of the version serving now and queue it (``Compared``
    answer); the future raises ``ViewChanged`` when a version with another view takes over before it runs.
    Raises ``ImageRejected``, ``NoModelServing``."""
    view = serving_view()
    return serving().submit_compared(prepare_image(data, view), view)


def prepare_threads() -> int:
    """Threads that decode and preprocess sync detections: half the cores, at least one. A photo's decode and
    preprocessing cost about a fifth of its backbone run, so half the cores keep every inference unit fed; a
    decoder per core beside a unit per core cost more server CPU per image (on 2 cores at 8 clients, 1 decoder
    against 2: -1.7 % as the median of 20 same-run pairs, lower in 13: README Performance, item 30)."""
    return max(1, default_threads() // 2)


# Uploads waiting to be decoded: taken by the decode threads (their own, not the server's 40-thread pool: more
# concurrent decodes only add context switches and per-thread allocator memory) or by an idle inference unit.
_PENDING: queue.SimpleQueue[tuple[bytes, Future[tuple[LoadedVersion, np.ndarray]]]] = queue.SimpleQueue()
_decoders: list[threading.Thread] = []
_decoders_lock = threading.Lock()


def _decode_pending() -> None:
    """A decode thread: every pending upload it takes is prepared, with the serving check, and queued."""
    while True:
        data, answer = _PENDING.get()
        _prepare_and_queue(data, answer)


def _start_decoders() -> None:
    """Start the decode threads on first use (``prepare_threads`` of them)."""
    with _decoders_lock:
        while len(_decoders) < prepare_threads():
            thread = threading.Thread(target=_decode_pending, name=f"detect-prepare_{len(_decoders)}", daemon=True)
            thread.start()
            _decoders.append(thread)


def _prepare_and_queue(data: bytes, answer: Future[tuple[LoadedVersion, np.ndarray]]) -> None:
    """Decode and preprocess, pick up a version switched by another process, and queue the image for its
    batch with ``answer`` as its future; a failure (a rejected image, nothing serving) goes into ``answer``.
    Runs on a decode thread."""
    try:
        view = serving_view()
        _queue_prepared(serving(), data, view, answer)
    except BaseException as exc:  # handed to the awaiting request, which raises it
        _fail_answer(answer, exc)


def _prepare_pending(server: Serving) -> bool:
    """An inference unit's idle work: prepare one pending upload for the version serving on ``server`` and queue
    it (without the database check, which a decode thread makes at most once a second: a unit must not wait on
    the database or on the serving lock); False when none is pending (README Performance, the units' feed)."""
    try:
        data, answer = _PENDING.get_nowait()
    except queue.Empty:
        return False
    try:
        active = server.active
        _queue_prepared(server, data, active.view if active is not None else "orig", answer)
    except Exception as exc:  # handed to the awaiting request, which raises it
        _fail_answer(answer, exc)
    return True


def _queue_prepared(server: Serving, data: bytes, view: str, answer: Future[tuple[LoadedVersion, np.ndarray]]) -> None:
    """Prepare ``data`` as ``view`` and queue it on ``server`` with ``answer`` as its future."""
    server.submit(prepare_image(data, view), future=answer, view=view)


def _fail_answer(answer: Future[Any], exc: BaseException) -> None:
    """``exc`` into ``answer`` unless its caller gave up on it."""
    if answer.set_running_or_notify_cancel():
        answer.set_exception(exc)


def _submit_pending(data: bytes, answer: Future[tuple[LoadedVersion, np.ndarray]]) -> None:
    """Queue one upload for a decode thread, and wake an idle inference unit to take it if it is quicker."""
    if not _decoders:
        _start_decoders()
    _PENDING.put((data, answer))
    server = _serving  # read without the lock: made once, and never made on the event loop
    if server is not None:
        server.nudge()


async def detect_upload(data: bytes) -> tuple[str, list[dict[str, Any]]]:
    """Detect one uploaded image for an async caller: decoded and queued by a decode thread or an idle inference
    unit, its batch awaited without holding a thread (one wake-up of the event loop per request: the answer). The
    version used and every label best first (raises ``ImageRejected``)."""
    retries = 0
    while True:
        answer: Future[tuple[LoadedVersion, np.ndarray]] = Future()
        _submit_pending(data, answer)
        try:
            loaded, probabilities = await asyncio.wrap_future(answer)
        except ViewChanged:
            retries = _retry_view(retries)
            continue
        return loaded.version, labels_of(loaded.labels, probabilities[0])


def _retry_view(retries: int) -> int:
    """One more preparation of a request whose version changed view (re-raises after VIEW_RETRIES)."""
    if retries >= VIEW_RETRIES:
        raise
    log.info("the serving version's input view changed while a request waited; preparing it again",
             extra={"retry": retries + 1})
    return retries + 1
