"""A serving process runs its heads on the BLAS threads the setting says, and an image's answer does not depend on
the batch it came in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from labelloop.modeling.embedding import Embedder
from labelloop.modeling.serving import Serving
from labelloop.modeling.training import Head

BLAS = ThreadpoolController().select(user_api="blas")


def blas_threads() -> int:
    """numpy's BLAS thread count now (the largest over the BLAS libraries loaded)."""
    return max(info["num_threads"] for info in BLAS.info())


@pytest.fixture
def several_blas_threads() -> Iterator[int]:
    """numpy's BLAS thread count, when it is more than one (OpenBLAS's default: one per core); given back to this
    test process afterwards (a serving process keeps its limit for good)."""
    threads = blas_threads()
    if threads < 2:
        pytest.skip("OpenBLAS runs on one thread here already")
    yield threads
    threadpool_limits(limits=threads, user_api="blas")


class ThreadsSeenHead:
    """A real familiarity head (10 labels × 256 bank rows) that records numpy's BLAS threads while it runs."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        bank = rng.standard_normal((10, 256, 1280)).astype(np.float32)
        bank /= np.linalg.norm(bank, axis=2, keepdims=True)
        self.head = Head([f"label{i}" for i in range(10)], rng.standard_normal((10, 1280)),
                         rng.standard_normal(10), bank=bank, familiar_slope=12.0,
                         familiar_offset=rng.standard_normal(10), format=3)
        self.labels = self.head.labels
        self.seen: list[int] = []
        self.lock = threading.Lock()

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        with self.lock:
            self.seen.append(blas_threads())
        return self.head.predict_proba(embeddings)


def serve(backbone_onnx: Path, head: ThreadsSeenHead, head_blas_threads: int | None,
          inputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Serve ``inputs`` through two units, each alone and then all at once (the batches the units form); each
    request's probabilities both ways."""
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=2, max_batch=8,
                      head_blas_threads=head_blas_threads)
    try:
        serving.switch(serving.warm("v1", head))
        alone = [serving.submit(x).result(timeout=120)[1] for x in inputs]
        futures = [serving.submit(x) for x in inputs]
        return alone, [future.result(timeout=120)[1] for future in futures]
    finally:
        serving.close()


def test_a_serving_process_runs_every_head_on_one_blas_thread(backbone_onnx: Path, several_blas_threads: int) -> None:
    head = ThreadsSeenHead()
    inputs = np.random.default_rng(1).uniform(-1, 1, (16, 1, 3, 224, 224)).astype(np.float32)
    alone, together = serve(backbone_onnx, head, 1, inputs)
    assert len(head.seen) > len(inputs) and set(head.seen) == {1}, head.seen  # the warm-up, alone, in batches
    assert blas_threads() == 1  # for the process, not per batch: two units' batches never see another count
    for i, (single, batched) in enumerate(zip(alone, together, strict=True)):
        np.testing.assert_array_equal(single, batched, err_msg=f"request {i}: alone and in a batch differ")
    embeddings = Embedder(backbone_onnx).embed(np.concatenate(inputs))
    with BLAS.limit(limits=several_blas_threads):
        reference = head.head.predict_proba(embeddings)
    np.testing.assert_allclose(np.concatenate(together), reference, rtol=1e-5, atol=1e-6)


def test_head_blas_threads_0_leaves_openblas_its_own_count(backbone_onnx: Path, several_blas_threads: int) -> None:
    head = ThreadsSeenHead()
    serve(backbone_onnx, head, 0, np.zeros((3, 1, 3, 224, 224), dtype=np.float32))
    assert set(head.seen) == {several_blas_threads}, head.seen


def test_the_head_on_one_blas_thread_agrees_with_two_to_float32_rounding() -> None:
    head = ThreadsSeenHead().head
    embeddings = np.random.default_rng(2).standard_normal((8, 1280)).astype(np.float32)
    with BLAS.limit(limits=2):
        two = head.nearest_similarity(embeddings), head.predict_proba(embeddings)
    with BLAS.limit(limits=1):
        one = head.nearest_similarity(embeddings), head.predict_proba(embeddings)
    np.testing.assert_allclose(one[0], two[0], rtol=0, atol=3e-7)  # cosines: a float32 sum in another order
    np.testing.assert_allclose(one[1], two[1], rtol=1e-5, atol=1e-9)
