"""A served batch's head runs on the BLAS threads the setting says, and the process's count comes back after."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from labelloop.modeling.embedding import Embedder
from labelloop.modeling.serving import Serving
from labelloop.modeling.training import Head

BLAS = ThreadpoolController().select(user_api="blas")


def blas_threads() -> int:
    """numpy's BLAS thread count now (the largest over the BLAS libraries loaded)."""
    return max(info["num_threads"] for info in BLAS.info())


@pytest.fixture
def several_blas_threads() -> int:
    """numpy's BLAS thread count, when it is more than one (OpenBLAS's default: one per core)."""
    threads = blas_threads()
    if threads < 2:
        pytest.skip("OpenBLAS runs on one thread here already")
    return threads


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
          inputs: np.ndarray) -> list[np.ndarray]:
    """Serve ``inputs`` (one request each, concurrently) through a unit; each request's probabilities."""
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=1, max_batch=8,
                      head_blas_threads=head_blas_threads)
    try:
        serving.switch(serving.warm("v1", head))
        futures = [serving.submit(x) for x in inputs]
        return [future.result(timeout=120)[1] for future in futures]
    finally:
        serving.close()


def test_a_batch_head_runs_on_one_blas_thread_and_the_count_is_restored(backbone_onnx: Path,
                                                                        several_blas_threads: int) -> None:
    head = ThreadsSeenHead()
    inputs = np.random.default_rng(1).uniform(-1, 1, (12, 1, 3, 224, 224)).astype(np.float32)
    answers = serve(backbone_onnx, head, 1, inputs)
    served = head.seen[1:]  # after the warm-up, which runs outside a batch
    assert served and set(served) == {1}, head.seen
    assert blas_threads() == several_blas_threads  # the process's own count again once no batch is inside
    embeddings = Embedder(backbone_onnx).embed(np.concatenate(inputs))
    np.testing.assert_allclose(np.concatenate(answers), head.head.predict_proba(embeddings), rtol=1e-5, atol=1e-6)


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
