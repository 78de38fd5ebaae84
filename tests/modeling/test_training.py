"""Training on real data: accuracy on load_digits, the embedding cache, the split and clear errors."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest

from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.training import (
    Head,
    LabeledImage,
    TrainingDataError,
    softmax,
    split_examples,
    train_head,
)

from .conftest import pick


def test_load_digits_macro_f1(digits_result) -> None:
    evaluation = digits_result.evaluation
    print(f"\nload_digits, 20 train/label, {evaluation.test_images} held-out: macro-F1 {evaluation.f1:.3f}, "
          f"accuracy {evaluation.accuracy:.3f}, T {digits_result.head.temperature:.3f}, "
          f"C {digits_result.head.meta['C']:g}, ECE {evaluation.calibration['ece']:.3f}, "
          f"timings {({k: round(v, 2) for k, v in digits_result.timings.items()})}")
    assert len(evaluation.labels) == 10
    assert evaluation.train_images == 200 and evaluation.test_images == 400
    assert evaluation.f1 >= 0.80
    assert not set(digits_result.train_keys) & set(digits_result.test_keys)
    assert "out-of-fold" in evaluation.calibration["method"]


def test_softmax_is_calibrated_and_familiarity_only_lowers_confidence(digits_result, digits_split,
                                                                      embedder: Embedder) -> None:
    """The temperature makes the softmax track accuracy; familiarity then lowers confidence where the image is
    not clearly its label's (on load_digits, whose labels sit close together, most images): the deployed
    confidence is conservative (never above the accuracy), never over-confident."""
    from labelloop.modeling.evaluation import calibration_stats

    head = digits_result.head
    _, test = digits_split
    x = embedder.embed_images([e.data() for e in test])
    y = np.array([head.labels.index(e.label) for e in test])
    plain = softmax(head.logits(x))
    assert calibration_stats(y, plain)["ece"] < 0.1, "calibrated softmax should track accuracy"
    confidence = head.predict_proba(x)
    accuracy = float((confidence.argmax(1) == y).mean())
    assert confidence.max(1).mean() <= accuracy + 0.02
    assert np.all(confidence <= plain + 1e-9)


def test_retrain_embeds_only_new_images(digits, digits_split, digits_result, embedder: Embedder,
                                        cache: EmbeddingCache) -> None:
    train, test = digits_split
    assert digits_result.images_embedded + digits_result.images_from_cache == len(train) + len(test)
    new = pick(digits, 1, skip=60, prefix="new")
    assert len(new) == 10
    before = embedder.embedded
    again = train_head(train + test + new, embedder, cache, test_split={e.key for e in test})
    assert again.images_embedded == 10
    assert again.images_from_cache == len(train) + len(test)
    assert embedder.embedded - before == 10
    assert again.evaluation.train_images == 210


def test_known_hashes_skip_reading_cached_images(digits_split, digits_result, embedder: Embedder,
                                                 cache: EmbeddingCache) -> None:
    train, test = digits_split

    def unreadable() -> bytes:
        raise AssertionError("a cached image must not be read")

    hashed = [LabeledImage(e.key, e.label, unreadable, digits_result.digests[e.key]) for e in train + test]
    result = train_head(hashed, embedder, cache, test_split={e.key for e in test})
    assert result.images_embedded == 0
    np.testing.assert_allclose(result.head.W, digits_result.head.W)


def test_head_round_trips_through_file_and_bytes(digits_result, tmp_path) -> None:
    head = digits_result.head
    path = tmp_path / "head.npz"
    head.save(path)
    buffer = io.BytesIO()
    head.save(buffer)
    x = np.random.default_rng(1).normal(size=(4, 1280)).astype(np.float32)
    for loaded in (Head.load(path), Head.load(io.BytesIO(buffer.getvalue()))):
        assert loaded.labels == head.labels and loaded.temperature == head.temperature
        np.testing.assert_array_equal(loaded.predict_proba(x), head.predict_proba(x))


def _examples(counts: dict[str, int]) -> list[LabeledImage]:
    return [LabeledImage(f"images_labeled_by_folder/{label}/{i}.jpg", label, f"{label}-{i}".encode())
            for label, n in counts.items() for i in range(n)]


def _digests(examples: list[LabeledImage]) -> dict[str, str]:
    return {e.key: e.digest() for e in examples}


def test_split_is_stratified_deterministic_and_80_20() -> None:
    examples = _examples({"a": 50, "b": 10, "c": 2, "d": 3})
    digests = _digests(examples)
    split = split_examples(examples, digests)
    shuffled = examples[:]
    random.Random(3).shuffle(shuffled)
    again = split_examples(shuffled, digests)
    assert sorted(split.test_keys) == sorted(again.test_keys)
    for label, n_test in {"a": 10, "b": 2, "c": 1, "d": 1}.items():
        assert sum(e.label == label for e in split.test) == n_test
        assert any(e.label == label for e in split.train)
    assert split_examples(examples, digests, seed=1).test_keys != split.test_keys


def test_duplicate_content_stays_on_one_side() -> None:
    examples = _examples({"a": 20, "b": 5})
    copies = [LabeledImage(e.key + ".copy", e.label, e.content) for e in examples]
    everything = examples + copies
    split = split_examples(everything, _digests(everything))
    test = set(split.test_keys)
    assert all((e.key in test) == (e.key + ".copy" in test) for e in examples)


def test_explicit_test_split_is_used_and_checked() -> None:
    examples = _examples({"a": 5, "b": 5})
    digests = _digests(examples)
    chosen = {examples[0].key, examples[5].key}
    assert set(split_examples(examples, digests, test_keys=chosen).test_keys) == chosen
    with pytest.raises(TrainingDataError, match="no training image"):
        split_examples(examples, digests, test_keys={e.key for e in examples if e.label == "b"})


def test_clear_errors_for_too_little_data(embedder: Embedder, cache: EmbeddingCache) -> None:
    with pytest.raises(TrainingDataError, match="at least 2 labels") as one_label:
        train_head(_examples({"cat": 10}), embedder, cache)
    assert "images_labeled_by_folder/<label>/" in str(one_label.value)
    with pytest.raises(TrainingDataError, match=r"at least 2 distinct images.*'dog' \(1\)"):
        train_head(_examples({"cat": 10, "dog": 1}), embedder, cache)
    with pytest.raises(TrainingDataError, match="at least 2 labels"):
        train_head([], embedder, cache)


def test_unreadable_images_are_left_out_and_reported(digits, embedder: Embedder, cache: EmbeddingCache) -> None:
    examples = pick(digits, 3, skip=70, prefix="small")
    broken = LabeledImage("images_labeled_by_folder/digit-0/broken.png", "digit-0", b"not an image")
    result = train_head([*examples, broken], embedder, cache)
    assert list(result.rejected) == [broken.key] and "not a recognised image" in result.rejected[broken.key]
    assert broken.key not in result.train_keys + result.test_keys
    assert {row["split"] for row in result.manifest()} == {"train", "test", "rejected"}
    assert result.evaluation.test_images == 10  # round(0.2 × 3) = 1 per label


def test_tiny_labels_train_without_calibration(digits, embedder: Embedder, cache: EmbeddingCache) -> None:
    result = train_head(pick(digits, 2, skip=80, prefix="tiny"), embedder, cache)
    assert result.head.temperature == 1.0 and "single training image" in result.head.meta["calibration"]
    assert result.evaluation.test_images == 10 and result.evaluation.train_images == 10
