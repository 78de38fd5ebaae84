"""Familiarity: images unlike any training image get low confidence instead of a confident wrong label."""

from __future__ import annotations

import numpy as np

from images import blend, box_logo, smile_logo, unseen
from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.predict import Predictor
from labelloop.modeling.training import Head, LabeledImage, train_head


def _logo_head(embedder: Embedder, cache: EmbeddingCache) -> Head:
    examples = [LabeledImage(f"{label}/{i}.png", label, draw(i)) for i in range(6)
                for label, draw in (("amazon_logo", smile_logo), ("aws_logo", box_logo))]
    return train_head(examples, embedder, cache).head


def test_unseen_kinds_get_low_confidence_and_known_kinds_stay_high(embedder: Embedder,
                                                                   cache: EmbeddingCache) -> None:
    predictor = Predictor(embedder, _logo_head(embedder, cache))
    known = predictor.predict_bytes([smile_logo(40 + i) for i in range(4)] + [box_logo(40 + i) for i in range(4)])
    strangers = predictor.predict_bytes([unseen(i) for i in range(6)])
    assert all(answer[0][1] >= 90 for answer in known), [a[0] for a in known]
    assert [a[0][0] for a in known] == ["amazon_logo"] * 4 + ["aws_logo"] * 4
    assert all(answer[0][1] < 20 for answer in strangers), [a[0] for a in strangers]


def test_familiarity_is_saved_and_loaded(embedder: Embedder, cache: EmbeddingCache, tmp_path) -> None:  # type: ignore[no-untyped-def]
    head = _logo_head(embedder, cache)
    assert head.centroids is not None and head.centroids.shape == (2, 1280)
    assert np.allclose(np.linalg.norm(head.centroids, axis=1), 1.0, atol=1e-5)
    assert np.all(head.familiar_at < 1.0) and np.all(head.familiar_scale >= 0.03)
    loaded = Head.load(__import__("io").BytesIO(head.to_bytes()))
    x = embedder.embed_images([blend(1), unseen(2), smile_logo(3)])
    assert np.allclose(loaded.predict_proba(x), head.predict_proba(x), atol=1e-6)
    assert np.all(head.predict_proba(x).sum(axis=1) <= 1.0 + 1e-9)
