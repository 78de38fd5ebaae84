"""The F1 gate's measures: the production estimate (a stratified F1 from human-reviewed test images and
human-sampling answers) and the order in which the three measures pass a version."""

from __future__ import annotations

import math
import random

import pytest
from sklearn.metrics import f1_score

from labelloop.modeling.evaluation import (
    MIN_AUDIT_ANSWERS,
    MIN_REVIEWED_TEST_IMAGES,
    production_estimate,
    weighted_f1,
)
from labelloop.modeling.gate import _verdict


def test_weighted_f1_with_equal_weights_is_macro_f1() -> None:
    rng = random.Random(3)
    truth = [rng.choice("abc") for _ in range(200)]
    predicted = [t if rng.random() < 0.7 else rng.choice("abcd") for t in truth]
    expected = f1_score(truth, predicted, labels=sorted(set(truth)), average="macro")
    assert weighted_f1(truth, predicted, [2.5] * len(truth)) == pytest.approx(expected)


def test_weighted_f1_counts_an_image_as_often_as_its_weight() -> None:
    truth, predicted = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    repeated = weighted_f1(["a", "a", "a", "b", "b"], ["a", "a", "b", "b", "b"], [1] * 5)
    assert weighted_f1(truth, predicted, [2, 1, 1, 1]) == pytest.approx(repeated)


def test_estimate_weighs_each_sample_by_its_share_of_traffic() -> None:
    # Reviewed images: half right. Confident ones: all right. 10 % of traffic is reviewed.
    reviewed = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "a")] * 5
    audit = [("a", "a"), ("b", "b")] * 10
    estimate = production_estimate(reviewed, audit, review_share=0.1)
    assert estimate.reviewed_f1 == pytest.approx(0.5) and estimate.audit_f1 == pytest.approx(1.0)
    # The same traffic as one sample of 200 images: 20 reviewed (10 right), 180 confident (all right).
    cells = {("a", "a"): 5 + 90, ("a", "b"): 5, ("b", "b"): 5 + 90, ("b", "a"): 5}
    traffic = [pair for pair, count in cells.items() for _ in range(count)]
    assert estimate.f1 == pytest.approx(weighted_f1([t for t, _ in traffic], [p for _, p in traffic], [1] * 200))
    assert estimate.reviewed_f1 < estimate.f1 < estimate.audit_f1
    # More traffic going to review moves the estimate toward the reviewed sample's F1.
    assert production_estimate(reviewed, audit, review_share=0.9).f1 < estimate.f1


def test_each_stratum_needs_answers_in_proportion_to_its_traffic() -> None:
    right = [("a", "a"), ("b", "b")]
    # Half the traffic reviewed: half the full numbers of each, rounded up.
    need_reviewed, need_audit = math.ceil(MIN_REVIEWED_TEST_IMAGES / 2), math.ceil(MIN_AUDIT_ANSWERS / 2)
    short = production_estimate([("a", "a")] * (need_reviewed - 1), [("a", "a")] * (need_audit - 1), 0.5)
    assert short.f1 is None
    assert f"needs {need_reviewed})" in short.reason and f"needs {need_audit})" in short.reason, short.reason
    assert production_estimate([("a", "a")] * need_reviewed, [("a", "a")] * need_audit, 0.5).f1 == 1.0
    # Most traffic reviewed (a young model): two sampling answers are enough for the confident tenth.
    assert production_estimate(right * 3, right, review_share=0.9).f1 == pytest.approx(1.0)
    assert production_estimate(right * 3, [], review_share=0.9).f1 is None
    # A paired comparison may ask for fewer sampling answers.
    assert production_estimate(right * 3, right, 0.5).f1 is None
    assert production_estimate(right * 3, right, 0.5, min_audit=4).f1 == pytest.approx(1.0)
    # A stratum with no traffic needs no answers: nothing went to review, so the audit alone decides.
    only_audit = production_estimate([], [("a", "a"), ("b", "a")] * (MIN_AUDIT_ANSWERS // 2), review_share=0.0)
    assert only_audit.f1 == pytest.approx(weighted_f1(["a", "b"], ["a", "a"], [1, 1]))
    assert production_estimate(right * 3, [], review_share=1.0).f1 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="from 0 to 1"):
        production_estimate([], [], review_share=1.5)


def test_a_version_passes_on_the_first_measure_that_holds() -> None:
    none = {"f1": None}
    low, high = {"f1": 0.6}, {"f1": 0.85}

    def compared(new: float | None, old: float | None) -> dict:
        return {"serving_version": "v4", "f1": new, "serving_f1": old}

    assert _verdict(0.81, 0.8, none, None) == "test split"
    assert _verdict(0.5, 0.8, high, compared(0.1, 0.9)) == "production estimate"
    assert _verdict(0.5, 0.8, low, compared(0.7, 0.7)) == "better than the serving version v4"
    assert _verdict(0.5, 0.8, low, compared(0.69, 0.7)) is None
    assert _verdict(0.5, 0.8, none, compared(None, None)) is None  # too few answers to compare
    assert _verdict(0.5, 0.8, low, None) is None
    assert _verdict(0.0, 0.0, none, None) == "test split"  # Minimum-F1-Score 0 passes everything
