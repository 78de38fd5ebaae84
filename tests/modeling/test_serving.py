"""The micro-batcher: concurrent requests share backbone runs, never more than max_batch, answers unchanged."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from labelloop.modeling.embedding import Embedder
from labelloop.modeling.serving import Serving


class RecordingHead:
    """A linear softmax head on the embedding that records the batch sizes it was given."""

    labels = ["a", "b", "c"]

    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).normal(size=(1280, 3)).astype(np.float32)
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(len(embeddings))
        z = embeddings @ self.weights
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def test_concurrent_requests_share_batches_of_at_most_max_batch(backbone_onnx: Path) -> None:
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=1, max_batch=8)
    head = RecordingHead()
    try:
        serving.switch(serving.warm("v1", head))
        head.sizes.clear()
        inputs = np.random.default_rng(1).uniform(-1, 1, (24, 1, 3, 224, 224)).astype(np.float32)
        futures = [serving.submit(x) for x in inputs]  # queued faster than the unit empties the queue
        results = [future.result(timeout=120) for future in futures]
        alone = serving.submit(inputs[5]).result(timeout=120)
    finally:
        serving.close()
    assert sum(head.sizes[:-1]) == 24 and head.sizes[-1] == 1
    assert max(head.sizes) <= 8 and len(head.sizes) - 1 < 24, head.sizes  # batched, capped
    assert all(version.version == "v1" for version, _ in results)
    np.testing.assert_allclose(results[5][1], alone[1], atol=1e-5)  # a batched answer is the lone answer


class GatedHead(RecordingHead):
    """A head whose first batch waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(timeout=120)
        return super().predict_proba(embeddings)


def test_a_request_its_caller_gave_up_is_dropped_and_the_unit_keeps_serving(backbone_onnx: Path) -> None:
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=1, max_batch=8)
    head = GatedHead()
    try:
        head.gate.set()
        serving.switch(serving.warm("v1", head))
        head.gate.clear()
        head.entered.clear()
        head.sizes.clear()
        x = np.zeros((1, 3, 224, 224), dtype=np.float32)
        first = serving.submit(x)
        assert head.entered.wait(timeout=120)  # the unit is busy with the first batch
        abandoned = serving.submit(x)
        assert abandoned.cancel()  # e.g. the HTTP client went away while it was queued
        head.gate.set()
        later = serving.submit(x).result(timeout=120)
        assert first.result(timeout=120)[0].version == later[0].version == "v1"
    finally:
        serving.close()
    assert head.sizes == [1, 1]  # the abandoned request never ran


class GatedEmbedder:
    """The real backbone session, whose first run after ``hold()`` waits until the test opens the gate."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.entered, self.gate = threading.Event(), threading.Event()
        self.gate.set()

    def hold(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(timeout=120)
        return self.embedder.embed(batch)


def test_a_batch_that_finishes_while_requests_wait_shares_the_next_batchs_head_call(backbone_onnx: Path) -> None:
    gated = GatedEmbedder(Embedder(backbone_onnx, threads=1))
    serving = Serving(lambda threads: gated, units=1, max_batch=8)  # type: ignore[arg-type, return-value]
    head = RecordingHead()
    inputs = np.random.default_rng(2).uniform(-1, 1, (3, 1, 3, 224, 224)).astype(np.float32)
    try:
        serving.switch(serving.warm("v1", head))
        alone = [serving.submit(x).result(timeout=120)[1] for x in inputs[:2]]
        head.sizes.clear()
        gated.hold()
        first = serving.submit(inputs[0])
        assert gated.entered.wait(timeout=120)  # the unit runs the first batch's backbone
        second = serving.submit(inputs[1])  # waits in the queue meanwhile
        gated.gate.set()
        answers = [first.result(timeout=120)[1], second.result(timeout=120)[1]]
        lone = serving.submit(inputs[2]).result(timeout=120)  # nothing queued: answered at once, never held
    finally:
        serving.close()
    assert head.sizes == [2, 1]  # one head call for both batches, then the lone request's own
    for answer, expected in zip(answers, alone, strict=True):
        np.testing.assert_allclose(answer, expected, atol=1e-6)
    assert lone[0].version == "v1"


def test_a_batch_that_finishes_while_only_wake_ups_wait_is_answered_at_once(backbone_onnx: Path) -> None:
    """Wake-up markers (``Serving.nudge``) are not requests: no unit runs another batch for them, so a batch that
    finishes while only they wait gets its head call at once, before its unit goes back to the queue. The old code
    held it and answered it only after emptying the queue of them (or after a whole backbone run, when a request
    came in between)."""
    gated = GatedEmbedder(Embedder(backbone_onnx, threads=1))
    serving = Serving(lambda threads: gated, units=1, max_batch=8,  # type: ignore[arg-type, return-value]
                      idle_work=lambda server: False)
    queued_at_head: list[int] = []

    class QueueWatchingHead(RecordingHead):
        def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
            queued_at_head.append(serving._requests.qsize())
            return super().predict_proba(embeddings)

    head = QueueWatchingHead()
    x = np.zeros((1, 3, 224, 224), dtype=np.float32)
    try:
        serving.switch(serving.warm("v1", head))
        queued_at_head.clear()
        head.sizes.clear()
        gated.hold()
        first = serving.submit(x)
        assert gated.entered.wait(timeout=120)  # the unit runs the batch's backbone
        for _ in range(3):
            serving.nudge()  # uploads arriving: their markers wait in the queue
        gated.gate.set()
        assert first.result(timeout=120)[0].version == "v1"
        later = serving.submit(x).result(timeout=120)  # the unit serves on
    finally:
        serving.close()
    assert queued_at_head[0] == 3, queued_at_head  # answered with the three markers still queued: never held
    assert head.sizes == [1, 1] and later[0].version == "v1"
