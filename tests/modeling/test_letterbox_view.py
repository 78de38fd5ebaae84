"""The letterbox view, the input view of new model versions (issue 13, item 3), on real photographs.

Issue 13's target: the product's training path at least 1 point of macro-F1 above a plain logistic regression on
the default backbone's embeddings. The reference is what a user would try first and what DESIGN.md's
preprocessing gives: scikit-learn's `LogisticRegression()` with its defaults on the raw centre-crop embeddings.
The product trains and serves new versions on the letterbox view (`train_head(view="letterbox")`, what
`train_version` does for a version whose `input_view` is letterbox). The photos and draws are those of
test_head_vs_plain_lr.py (Tux Paint photo stamps, animals against every other photo stamp, 10 training photos per
class, the rest held out).
"""

from __future__ import annotations

import numpy as np

from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.images import content_hash
from labelloop.modeling.training import train_head

from .test_head_vs_plain_lr import draws, photos, plain_macro_f1  # noqa: F401 (a fixture)

TARGET = 0.01  # issue 13: at least 1 point of macro-F1 above plain logistic regression


def test_letterbox_training_beats_plain_logistic_regression_on_crop_by_a_point(photos, embedder: Embedder,  # noqa: F811
                                                                                  cache: EmbeddingCache) -> None:
    everything = [e for items in photos.values() for e in items]
    crops = embed_cached(embedder, cache, {content_hash(e.data()): e.content for e in everything})
    gains = []
    for draw, train, test in draws(photos):
        result = train_head(everything, embedder, cache, test_split={e.key for e in test}, seed=draw,
                            view="letterbox")
        assert result.head.meta["views"] == ["letterbox"]
        gains.append(result.evaluation.f1 - plain_macro_f1(result.head.labels, train, test, crops))
    # Measured: 0.023, 0.053, 0.014, −0.018, 0.032, 0.075, 0.006, 0.019 (mean +0.026); the crop head of
    # test_head_vs_plain_lr.py on the same draws: mean +0.012.
    assert np.mean(gains) >= TARGET, f"letterbox head − plain LR on crop, macro-F1 per draw: {np.round(gains, 3)}"
