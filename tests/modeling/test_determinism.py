"""Same images, same parameters, same head: whatever the order, the batching or the thread count (issue 19)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.training import Head, LabeledImage, train_head

from .conftest import pick


def _arrays(head: Head) -> dict[str, np.ndarray]:
    return {"W": head.W, "b": head.b, "T": np.float64(head.temperature), "bank": head.bank,
            "slope": np.float64(head.familiar_slope), "offset": head.familiar_offset}


def _train(examples: list[LabeledImage], backbone_onnx: Path, root: Path, threads: int, batch: int) -> Head:
    """Embed into a fresh cache (so nothing is shared) in `batch`-sized chunks on `threads` threads, then train."""
    embedder = Embedder(backbone_onnx, threads=threads)
    cache = EmbeddingCache.for_embedder(root, embedder)
    embed_cached(embedder, cache, {e.digest(): e.content for e in examples}, batch_size=batch)
    with threadpool_limits(limits=threads):
        return train_head(examples, embedder, cache, final_on_all=True, balance_labels=True).head


def test_order_batching_and_threads_do_not_change_the_head(digits, backbone_onnx: Path, tmp_path: Path) -> None:
    examples = pick(digits, 12, skip=100, prefix="det")
    shuffled = random.Random(1).sample(examples, len(examples))
    first = _train(examples, backbone_onnx, tmp_path / "a", threads=1, batch=32)
    second = _train(shuffled, backbone_onnx, tmp_path / "b", threads=2, batch=5)
    assert first.labels == second.labels
    for name, value in _arrays(first).items():
        assert np.array_equal(value, _arrays(second)[name]), f"{name} differs between the two trainings"
    assert first.to_bytes() == second.to_bytes()
