"""The content-addressed embedding cache and cache-aware embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached, session_options
from labelloop.modeling.images import content_hash, prepare


def test_cache_round_trip_and_damaged_files(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "fingerprint-a")
    vector = np.arange(1280, dtype=np.float32)
    cache.put("ab" * 32, vector)
    np.testing.assert_array_equal(cache.get("ab" * 32), vector)
    assert cache.get("cd" * 32) is None and cache.get("ab" * 32, "flip") is None
    cache.path("ab" * 32).write_bytes(b"half a file")
    assert cache.get("ab" * 32) is None, "a damaged entry is a miss, not an error"
    assert EmbeddingCache(tmp_path, "fingerprint-b").get("ab" * 32) is None, "namespaced by backbone"


def test_embed_cached_counts_reads_and_rejects(digits, embedder: Embedder, tmp_path: Path) -> None:
    cache = EmbeddingCache.for_embedder(tmp_path, embedder)
    images = [data for _, data in digits[:5]]
    sources = {content_hash(d): d for d in images}
    sources["0" * 64] = b"not an image"
    first = embed_cached(embedder, cache, sources, batch_size=2)
    assert (first.embedded, first.from_cache, list(first.rejected)) == (5, 0, ["0" * 64])
    expected = embedder.embed(np.stack([prepare(d) for d in images]))
    got = np.stack([first.get(content_hash(d)) for d in images])
    np.testing.assert_allclose(got, expected, atol=1e-5)

    reads = []
    lazy = {k: (lambda v=v: reads.append(1) or v) for k, v in sources.items() if k != "0" * 64}
    second = embed_cached(embedder, cache, lazy, views=("orig", "flip"))
    assert (second.embedded, second.from_cache, len(reads)) == (5, 0, 5), "flip views were missing"
    third = embed_cached(embedder, cache, lazy, views=("orig", "flip"))
    assert (third.embedded, third.from_cache, len(reads)) == (0, 5, 5), "nothing read or embedded"


def test_the_memory_pattern_leaves_embeddings_bit_for_bit_the_same(backbone_onnx: Path) -> None:
    """The serving sessions plan each batch size's buffers as one block (README Performance, item 55): the same
    kernels run, so every batch size's embeddings equal those of a session that allocates tensor by tensor."""
    planned = Embedder(backbone_onnx, threads=1)
    options = session_options(1)
    options.enable_mem_pattern = False
    by_tensor = ort.InferenceSession(str(backbone_onnx), options, providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(3).uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)
    for size in (1, 3, 8, 3, 1):  # a size's second run is the first on its planned block
        expected = by_tensor.run(["embedding"], {"input": inputs[:size]})[0]
        assert np.array_equal(planned.embed(inputs[:size]), expected)
