"""The two training options a human loop wants: label balance, and a final training on every image."""

from __future__ import annotations

import numpy as np

from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.training import _design, train_head
from labelloop.parameters import service as parameters

from .conftest import pick


def test_balanced_design_gives_every_label_the_same_weight(digits, embedder: Embedder, cache: EmbeddingCache) -> None:
    from labelloop.modeling.embedding import embed_cached
    from labelloop.modeling.images import content_hash

    examples = ([e for e in pick(digits, 12, prefix="many") if e.label == "digit-1"]
                + [e for e in pick(digits, 3, skip=20, prefix="few") if e.label == "digit-7"])
    digests = {e.key: content_hash(e.data()) for e in examples}
    vectors = embed_cached(embedder, cache, {digests[e.key]: e.content for e in examples})
    index = {"digit-1": 0, "digit-7": 1}
    counts = np.bincount([index[e.label] for e in examples])
    assert counts.min() < counts.max()
    plain = _design(examples, digests, vectors, index, ("orig",))
    balanced = _design(examples, digests, vectors, index, ("orig",), balance_labels=True)
    assert np.allclose(plain.weight, 1.0)
    per_label = np.bincount(balanced.y, weights=balanced.weight)
    assert np.allclose(per_label, per_label[0]) and np.isclose(balanced.weight.sum(), len(examples))


def test_final_training_on_all_images_keeps_the_evaluation(digits_split, digits_result, embedder: Embedder,
                                                          cache: EmbeddingCache) -> None:
    train, test = digits_split
    keys = {e.key for e in test}
    final = train_head(train + test, embedder, cache, test_split=keys, final_on_all=True, balance_labels=True)
    assert final.evaluation.f1 == digits_result.evaluation.f1  # metrics of the head trained on the training split
    assert final.test_keys == digits_result.test_keys
    assert final.head.meta["trained_on"] == "training and test split" and final.head.meta["balance_labels"]
    assert digits_result.head.meta["trained_on"] == "training split"
    assert not np.allclose(final.head.W, digits_result.head.W)
    assert "final_fit_s" in final.timings
    # The deployed head has learned the test images too: it classifies them at least as well.
    x = np.stack([np.load(cache.path(final.digests[e.key])) for e in test])
    truth = [e.label for e in test]
    before = np.mean([digits_result.head.labels[i] == t for i, t in
                      zip(digits_result.head.predict_proba(x).argmax(1), truth, strict=True)])
    after = np.mean([final.head.labels[i] == t for i, t in zip(final.head.predict_proba(x).argmax(1), truth,
                                                               strict=True)])
    assert after >= before and after > 0.95
    # The manifest keeps the evaluated head's decision on each test image (the F1 gate's reviewed stratum),
    # not the final head's: the final head has seen those images.
    decided = {row["key"]: row for row in final.manifest() if row["split"] == "test"}
    assert set(decided) == keys and all(0 <= row["confidence"] <= 100 for row in decided.values())
    assert np.mean([row["predicted"] == row["label"] for row in decided.values()]) == final.evaluation.accuracy
    assert not any("predicted" in row for row in final.manifest() if row["split"] == "train")


def test_two_images_per_label_calibrate_when_trained_on_all(digits, embedder: Embedder,
                                                            cache: EmbeddingCache) -> None:
    examples = pick(digits, 2, prefix="pair")
    split_only = train_head(examples, embedder, cache)
    final = train_head(examples, embedder, cache, final_on_all=True)
    assert split_only.head.meta["folds"] == 1 and split_only.head.temperature == 1.0
    assert final.head.meta["folds"] == 2 and "out-of-fold" in final.head.meta["calibration"]


def test_options_are_parameters_on_by_default() -> None:
    for name in (parameters.TRAIN_FINAL_MODEL_ON_ALL_IMAGES, parameters.BALANCE_LABELS_IN_TRAINING):
        spec = parameters.DEFINITIONS[name]
        assert spec.kind == "bool" and spec.default == "true"
        assert parameters.validate(name, "TRUE") == "true"
