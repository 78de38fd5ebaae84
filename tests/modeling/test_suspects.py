"""Suspect training labels: images whose folder label the out-of-fold model confidently disagrees with."""

from __future__ import annotations

from dataclasses import replace

from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.training import train_head

from .conftest import pick


def test_mislabeled_training_images_are_listed_as_suspects(digits, embedder: Embedder, cache: EmbeddingCache) -> None:
    clean = [e for e in pick(digits, 12, skip=140, prefix="audit") if e.label in ("digit-0", "digit-1", "digit-4")]
    wrong = {next(e.key for e in clean if e.label == "digit-0"): "digit-1"}  # a 0 in the folder of the 1s
    examples = [replace(e, label=wrong[e.key]) if e.key in wrong else e for e in clean]
    result = train_head(examples, embedder, cache, final_on_all=True, balance_labels=True)
    found = {s["key"]: s for s in result.suspects}
    assert set(wrong) <= set(found), f"mislabeled images not found: {result.suspects}"
    for key in wrong:
        assert found[key]["label"] == wrong[key]
        assert found[key]["predicted"] == next(e.label for e in clean if e.key == key)
        assert found[key]["confidence"] >= 70
    assert len(found) <= len(wrong) + 2, f"too many false alarms: {result.suspects}"
    confidences = [s["confidence"] for s in result.suspects]
    assert confidences == sorted(confidences, reverse=True)


def test_clean_well_separated_labels_have_no_suspect(digits, embedder: Embedder, cache: EmbeddingCache) -> None:
    clean = [e for e in pick(digits, 12, skip=140, prefix="audit") if e.label in ("digit-0", "digit-1")]
    assert train_head(clean, embedder, cache, final_on_all=True).suspects == []
