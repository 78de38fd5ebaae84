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

from .test_head_vs_plain_lr import DRAWS, TRAIN_PER_CLASS, _macro_f1, photos  # noqa: F401 (a fixture)

TARGET = 0.01  # issue 13: at least 1 point of macro-F1 above plain logistic regression


def test_letterbox_training_beats_plain_logistic_regression_on_crop_by_a_point(photos, embedder: Embedder,  # noqa: F811
                                                                                  cache: EmbeddingCache) -> None:
    from sklearn.linear_model import LogisticRegression

    everything = [e for items in photos.values() for e in items]
    crops = embed_cached(embedder, cache, {content_hash(e.data()): e.content for e in everything})
    gains = []
    for draw in range(DRAWS):
        rng = np.random.default_rng(draw)
        train_keys = {items[i].key for items in photos.values()
                      for i in rng.permutation(len(items))[:TRAIN_PER_CLASS]}
        test = [e for e in everything if e.key not in train_keys]
        train = [e for e in everything if e.key in train_keys]
        result = train_head(everything, embedder, cache, test_split={e.key for e in test}, seed=draw,
                            view="letterbox")
        assert result.head.meta["views"] == ["letterbox"]
        x_train, x_test = ([crops.get(content_hash(e.data())) for e in part] for part in (train, test))
        y_train, y_test = (np.array([result.head.labels.index(e.label) for e in part]) for part in (train, test))
        plain = _macro_f1(y_test, LogisticRegression(max_iter=5000).fit(x_train, y_train).predict(x_test))
        gains.append(result.evaluation.f1 - plain)
    # Measured: 0.023, 0.053, 0.014, −0.018, 0.032, 0.075, 0.006, 0.019 (mean +0.026); the crop head of
    # test_head_vs_plain_lr.py on the same draws: mean +0.012.
    assert np.mean(gains) >= TARGET, f"letterbox head − plain LR on crop, macro-F1 per draw: {np.round(gains, 3)}"
