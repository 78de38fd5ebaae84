"""Evaluation metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support

from labelloop.modeling.evaluation import Evaluation, evaluate, wilson_interval

LABELS = ["cat", "dog", "fox"]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
PROBA = np.array([
    [0.90, 0.05, 0.05],  # cat -> cat
    [0.60, 0.30, 0.10],  # cat -> cat
    [0.20, 0.70, 0.10],  # cat -> dog
    [0.10, 0.80, 0.10],  # dog -> dog
    [0.45, 0.40, 0.15],  # dog -> cat
    [0.10, 0.10, 0.80],  # fox -> fox
])


def test_per_label_metrics_match_sklearn() -> None:
    result = evaluate(LABELS, Y_TRUE, PROBA, train_images=24, training_time_s=1.5)
    pred = PROBA.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(Y_TRUE, pred, zero_division=0)
    for i, name in enumerate(LABELS):
        metrics = result.label(name)
        assert (metrics.precision, metrics.recall, metrics.f1, metrics.support) == (
            precision[i], recall[i], f1[i], support[i])
    assert result.f1 == f1_score(Y_TRUE, pred, average="macro")
    assert result.accuracy == 4 / 6
    assert result.confusion_matrix == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert (result.train_images, result.test_images, result.training_time_s) == (24, 6, 1.5)


def test_threshold_is_lowest_confidence_assigned_to_the_label() -> None:
    result = evaluate(LABELS, Y_TRUE, PROBA)
    assert result.label("cat").threshold == 0.45
    assert result.label("dog").threshold == 0.70
    assert result.label("fox").threshold == 0.80
    never = evaluate(LABELS, np.array([0, 1]), np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]))
    assert never.label("fox").threshold is None and never.label("fox").support == 0
    assert never.f1 == 1.0, "labels without test images are left out of the macro average"


def test_assumed_threshold_is_where_each_labels_f1_is_best() -> None:
    result = evaluate(LABELS, Y_TRUE, PROBA)
    # cat: answers 0.90 ✓, 0.60 ✓, 0.45 ✗ of 3 cats; cutting at 0.60 drops the false alarm: F1 2·2/(2+3).
    assert (result.label("cat").assumed_threshold, result.label("cat").assumed_threshold_f1) == (0.60, 0.8)
    assert (result.label("dog").assumed_threshold, result.label("dog").assumed_threshold_f1) == (0.80, 0.6667)
    assert (result.label("fox").assumed_threshold, result.label("fox").assumed_threshold_f1) == (0.80, 1.0)
    never = evaluate(LABELS, np.array([0, 1]), np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]))
    assert never.label("fox").assumed_threshold is None


def test_assumed_threshold_matches_a_search_over_every_cut_off() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    proba = rng.dirichlet(np.ones(3), 300) + np.eye(3)[y] * rng.uniform(0, 0.6, (300, 1))
    proba = np.round(proba / proba.sum(1, keepdims=True), 2)  # rounded: ties at a cut-off are kept together
    result = evaluate(LABELS, y, proba)
    pred, conf = proba.argmax(1), proba.max(1)
    for i, name in enumerate(LABELS):
        cuts = sorted(set(conf[pred == i]))
        scores = {cut: f1_score(y == i, (pred == i) & (conf >= cut), zero_division=0) for cut in cuts}
        best = max(scores.values())
        lowest_best = min(cut for cut, score in scores.items() if np.isclose(score, best))
        metrics = result.label(name)
        assert metrics.assumed_threshold == lowest_best and np.isclose(metrics.assumed_threshold_f1, best, atol=1e-4)
        assert metrics.assumed_threshold_f1 >= round(metrics.f1, 4)


def test_calibration_stats_and_json_round_trip() -> None:
    result = evaluate(LABELS, Y_TRUE, PROBA, calibration={"temperature": 0.7})
    assert result.calibration["temperature"] == 0.7
    assert result.calibration["nll"] > 0 and 0 <= result.calibration["ece"] <= 1
    data = json.loads(result.to_json(model_version="3"))
    assert data["model_version"] == "3" and data["f1"] == result.f1
    assert Evaluation.from_dict(data) == result


def test_small_test_sets_get_wide_intervals_that_narrow_with_more_images() -> None:
    # "F1 1.000" from 3 test images, one per label: the interval says how little that shows.
    few = evaluate(["a", "b", "c"], [0, 1, 2], np.eye(3))
    assert few.f1 == 1.0 and few.test_images == 3
    assert few.f1_interval[1] == 1.0 and few.f1_interval[0] < 0.3
    assert few.accuracy_interval[0] < 0.5 and "Wilson" in few.interval_method
    caution = few.to_dict()["caution"]  # the figure says how little it shows, in the API and evaluation JSON
    assert caution.startswith("F1 from 3 test images: its 95 % interval is 0.") and "–1.00" in caution
    # The same perfect score on 300 images: a narrow interval.
    many = evaluate(["a", "b", "c"], np.repeat([0, 1, 2], 100), np.repeat(np.eye(3), 100, axis=0))
    assert many.f1_interval[0] > 0.9
    assert many.to_dict()["caution"] is None
    # Each label: Wilson for precision and recall, F1 over TP + ½(FP + FN).
    mixed = evaluate(["a", "b"], [0, 0, 0, 1], np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float))
    a = mixed.label("a")
    assert a.support == 3 and a.recall_interval == wilson_interval(2, 3)
    assert a.precision_interval == wilson_interval(2, 2)
    assert a.f1_interval == wilson_interval(2, 2 + 0.5) and a.f1_interval[0] <= a.f1 <= a.f1_interval[1]
    assert wilson_interval(0, 0) is None
