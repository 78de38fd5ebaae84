"""Backbone embeddings served by ONNX Runtime, and a content-addressed embedding cache.

Importing this module does not import torch: the backbone ONNX file is built once by
`export.ensure_backbone_onnx` (the only torch user) and everything else runs in ONNX Runtime.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labelloop.files import atomic_write_bytes
from labelloop.modeling.backbone import EMBEDDING_DIM, FINGERPRINT_KEY
from labelloop.modeling.images import DEFAULT_MAX_PIXELS, ImageRejected, prepare, prepare_views

if TYPE_CHECKING:
    import onnxruntime as ort

DEFAULT_BATCH = 32


def default_threads() -> int:
    """Intra-op threads for one session: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, *, shared_arena: bool = True) -> ort.SessionOptions:
    """ONNX Runtime options for a backbone session (CPU, ``threads`` intra-op threads).

    Intra-op threads do not spin while waiting for work: on a machine whose cores are shared (with the web
    server's own threads, or with other processes) a spinning pool burns the CPU the other threads need; here it
    cost 1.6-1.9× the CPU per image at batch 1 to 32 (README, Performance).

    ``shared_arena``: the session takes its buffers from the process's one shared arena, which keeps what the
    largest batch any of its sessions ran needed for the life of the process (the serving sessions); else from an
    arena of its own, given back with the session (a training's session, which embeds at batch 32). Either way
    each run's buffers are one block planned from the first run of its shape (ONNX Runtime's memory pattern):
    about 0.2-0.3 ms of CPU per image less than tensor by tensor at batches of 1 to 4 (README Performance, items
    52 and 55).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.enable_mem_pattern = True
    if shared_arena:
        # Every serving backbone session of the process takes its buffers from one shared arena: each session's
        # own arena kept the peak of every batch it had run, so one session per core after the upload pipeline's
        # full batches put the serving process over 1 GiB (README Performance).
        _share_one_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


# The shared arena's first region: room for two units' planned blocks at the micro-batcher's largest batch (about
# 75 MiB each at 8) beside each other, and for the first, tensor-by-tensor run of every other batch size.
ARENA_FIRST_REGION = 192 << 20
# A free chunk handed out is split when it is this much larger than asked (ONNX Runtime's default, 128 MB, hands a
# chunk of less than twice the request out whole; 0 crashed ONNX Runtime 1.32).
ARENA_MAX_DEAD_BYTES = 1 << 20


@functools.cache
def _share_one_arena() -> None:
    """Register the process's one arena for the serving sessions: a first region of ``ARENA_FIRST_REGION``, any
    later one twice the last (pages are resident only once used). Regions of exactly what was asked held every
    batch size's planned block in a region of its own that no other size could reuse: two units serving batches
    of 1 to 8 kept 330-360 MiB that way against about 185 in one region (README Performance, items 44 and 55)."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    next_power_of_two = 0  # the arena's extend strategy
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, next_power_of_two, ARENA_FIRST_REGION,
                                                              ARENA_MAX_DEAD_BYTES))


class Embedder:
    """The backbone as an ONNX Runtime session (CPU).

    `embedded` counts the images run through the backbone since creation (thread-safe), so callers and
    tests can see how much work a cache saved. ``shared_arena``: see :func:`session_options` (False for a
    session that lives only as long as one big piece of work, such as a training).
    """

    def __init__(self, onnx_path: str | Path, *, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, shared_arena: bool = True):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(self.path), session_options(threads, shared_arena=shared_arena),
                                            providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.fingerprint: str = meta.get(FINGERPRINT_KEY, "unknown")
        self.max_pixels = max_pixels
        self.embedded = 0
        self._count_lock = threading.Lock()

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.embedded += n

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embedding N×1280, ImageNet logits N×1000) for a preprocessed N×3×224×224 batch."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        embedding, logits = self.session.run(["embedding", "logits"], {"input": x})
        self._count(len(x))
        return embedding, logits

    def embed(self, batch: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """N×1280 float32 embeddings of a preprocessed N×3×224×224 array, run in chunks of batch_size."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        parts = []
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            parts.append(self.session.run(["embedding"], {"input": chunk})[0])
            self._count(len(chunk))
        return np.concatenate(parts)

    def embed_images(self, images: Sequence[bytes], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Decode, preprocess and embed image bytes; raises images.ImageRejected on a bad one."""
        out = np.zeros((len(images), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = [prepare(data, self.max_pixels) for data in images[start:start + batch_size]]
            if chunk:
                out[start:start + len(chunk)] = self.embed(np.stack(chunk), batch_size)
        return out


class EmbeddingCache:
    """Embeddings on disk, one `.npy` per (content hash, view), namespaced by backbone fingerprint.

    Layout: `<root>/<fingerprint[:16]>/<hash[:2]>/<hash>.<view>.npy`. A new backbone export gets a new
    namespace, so stale embeddings are never mixed in. Writes are atomic (no fsync: a file lost in a crash is
    a cache miss, and a damaged one is detected on load and treated as one).
    `hits`/`misses` count lookups.
    """

    def __init__(self, root: str | Path, namespace: str = "default"):
        self.root = Path(root) / namespace[:16]
        self.hits = 0
        self.misses = 0
        self._made: set[Path] = set()

    @classmethod
    def for_embedder(cls, root: str | Path, embedder: Embedder) -> EmbeddingCache:
        """A cache namespaced by the embedder's backbone fingerprint."""
        return cls(root, embedder.fingerprint)

    def path(self, digest: str, view: str = "orig") -> Path:
        """File of one cached embedding."""
        return self.root / digest[:2] / f"{digest}.{view}.npy"

    def get(self, digest: str, view: str = "orig") -> np.ndarray | None:
        """The cached vector, or None (a corrupt file counts as missing)."""
        try:
            vector = np.load(self.path(digest, view), allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        if vector.shape != (EMBEDDING_DIM,):
            self.misses += 1
            return None
        self.hits += 1
        return vector

    def put(self, digest: str, vector: np.ndarray, view: str = "orig") -> None:
        """Store one vector atomically."""
        path = self.path(digest, view)
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vector, dtype=np.float32).reshape(EMBEDDING_DIM), allow_pickle=False)
        try:
            atomic_write_bytes(path, buffer.getvalue(), durable=False, make_parents=False)
        except FileNotFoundError:  # the folder was removed behind our back
            atomic_write_bytes(path, buffer.getvalue(), durable=False)

    def put_many(self, entries: Sequence[tuple[str, str, np.ndarray]]) -> None:
        """Store (hash, view, vector) entries."""
        for digest, view, vector in entries:
            self.put(digest, vector, view)

    def __contains__(self, key: tuple[str, str]) -> bool:
        digest, view = key
        return self.path(digest, view).is_file()


@dataclass
class CachedEmbeddings:
    """Result of `embed_cached`: vectors by (content hash, view), and what it cost."""

    vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    embedded_digests: set[str] = field(default_factory=set)  # images run through the backbone this time
    cached_digests: set[str] = field(default_factory=set)  # images whose every view came from the cache
    rejected: dict[str, str] = field(default_factory=dict)  # content hash -> reason

    @property
    def embedded(self) -> int:
        """How many distinct images were run through the backbone."""
        return len(self.embedded_digests)

    @property
    def from_cache(self) -> int:
        """How many distinct images were served entirely from the cache."""
        return len(self.cached_digests)

    def update(self, other: CachedEmbeddings) -> None:
        """Merge another result into this one (an image embedded in either counts as embedded)."""
        self.vectors.update(other.vectors)
        self.embedded_digests |= other.embedded_digests
        self.rejected.update(other.rejected)
        self.cached_digests = (self.cached_digests | other.cached_digests) - self.embedded_digests

    def get(self, digest: str, view: str = "orig") -> np.ndarray:
        """One vector (KeyError when the image was rejected or not requested)."""
        return self.vectors[(digest, view)]


Source = bytes | Callable[[], bytes]


def _read(source: Source) -> bytes:
    return source() if callable(source) else source


def embed_cached(embedder: Embedder, cache: EmbeddingCache, sources: Mapping[str, Source],
                 views: Sequence[str] = ("orig",), batch_size: int = DEFAULT_BATCH,
                 progress: Callable[[int, int], None] | None = None) -> CachedEmbeddings:
    """Embeddings for each content hash in `sources` and each view, embedding only what the cache lacks.

    `sources` maps content hash -> bytes or a zero-argument loader (called only for images that must be
    embedded, so a retrain reads no bytes of cached images). Images that fail to decode are reported in
    `rejected` instead of raising. Pipelined: the next batch is decoded and the previous one written to the
    cache while ONNX Runtime embeds the current one. `progress(done, total)` is told after each batch how
    many of the images are done (embedded, found in the cache or rejected).
    """
    result = CachedEmbeddings()
    embedded: set[str] = set()

    def report() -> None:
        if progress is not None:
            progress(len(result.cached_digests) + len(embedded) + len(result.rejected), len(sources))

    batches = _pending_batches(embedder, cache, sources, views, batch_size, result)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="embed-pipeline") as pool:
        upcoming = pool.submit(next, batches, None)
        writes = []
        while (batch := upcoming.result()) is not None:
            upcoming = pool.submit(next, batches, None)
            vectors = embedder.embed(np.stack([arr for _, _, arr in batch]), batch_size)
            entries = [(digest, view, vector) for (digest, view, _), vector in zip(batch, vectors, strict=True)]
            result.vectors.update({(digest, view): vector for digest, view, vector in entries})
            writes.append(pool.submit(cache.put_many, entries))
            embedded.update(digest for digest, _, _ in batch)
            report()
        for write in writes:
            write.result()
    report()
    return result


def _pending_batches(embedder: Embedder, cache: EmbeddingCache, sources: Mapping[str, Source],
                     views: Sequence[str], batch_size: int, result: CachedEmbeddings
                     ) -> Iterator[list[tuple[str, str, np.ndarray]]]:
    """Batches of (hash, view, preprocessed input) the cache lacks; cached vectors go into `result`."""
    pending: list[tuple[str, str, np.ndarray]] = []
    for digest, source in sources.items():
        missing = _lookup(cache, digest, views, result)
        if not missing:
            result.cached_digests.add(digest)
            continue
        try:
            stack = prepare_views(_read(source), tuple(missing), embedder.max_pixels)
        except ImageRejected as exc:
            result.rejected[digest] = exc.reason
            continue
        result.embedded_digests.add(digest)
        pending.extend((digest, view, arr) for view, arr in zip(missing, stack, strict=True))
        if len(pending) >= batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def _lookup(cache: EmbeddingCache, digest: str, views: Sequence[str], result: CachedEmbeddings) -> list[str]:
    """Fill cached views into `result`; return the views still missing."""
    missing = []
    for view in views:
        vector = cache.get(digest, view)
        if vector is None:
            missing.append(view)
        else:
            result.vectors[(digest, view)] = vector
    return missing
