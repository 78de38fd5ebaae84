"""Evaluation of a model version on its test split, in Rekognition Custom Labels' terms.

* Per label: precision, recall, F1 and support (test images whose true label it is), for the decision the
  model actually makes: the label with the highest confidence (argmax).
* `threshold` per label — Rekognition's "assumed threshold": the confidence above which the label's metrics
  hold. With argmax decisions that is the **lowest confidence (0–1) at which a test image was assigned that
  label**; None when no test image was assigned it. Any confidence cut-off at or below it gives the same
  precision and recall for the label.
* `f1`: the macro average of the per-label F1 over labels with at least one test image, as Rekognition's
  "average F1 score" (every label counts equally, whatever its size). Labels with no test image cannot be
  measured and are left out of the average (their F1 is reported as 0 with support 0).
* Confusion matrix: rows are true labels, columns predicted labels, both in `labels` order.
* Calibration on the test split: negative log-likelihood and expected calibration error (10 equal-width
  bins of the top confidence); the temperature itself is fitted on training data only (see training.py).
* **Intervals** (95 %, **Wilson score**), so a figure from a handful of test images says how little it
  knows: precision, recall and accuracy are proportions; a label's F1 = TP / (TP + ½(FP + FN)) is taken as
  one over TP + ½(FP + FN) trials (an approximation); the average F1's interval is the mean of its labels'
  bounds (conservative). Not a bootstrap: with every test image right a bootstrap gives [1, 1], which is
  exactly the false certainty to avoid. Each figure's test-set size is beside it (`support`, `predicted`,
  `test_images`). "F1 1.000" from 3 test images of 3 labels reads 0.21–1.00.
* `assumed_threshold` per label — the confidence (0–1) at which the label's F1 on the test split is best when
  only answers at or above it count as the label (those below go to a human, so they are neither a hit nor a
  false alarm of the model): Rekognition Custom Labels' "assumed threshold" in its routing sense. Ties go to
  the lowest such confidence (the most answers kept); `assumed_threshold_f1` is the F1 there. The option
  Use-Label-Assumed-Thresholds routes detections by it instead of Minimum-Label-Detection-Confidence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ECE_BINS = 10
Z_95 = 1.959964
INTERVAL_METHOD = ("95 % Wilson score intervals (a label's F1 over TP + ½(FP + FN) trials; the average F1's "
                   "interval is the mean of its labels' bounds)")


@dataclass
class LabelMetrics:
    """Metrics of one label on the test split (precision/recall/F1/threshold on a 0–1 scale)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    threshold: float | None
    precision_interval: list[float] | None = None  # Wilson, over the `predicted` images given this label
    recall_interval: list[float] | None = None  # Wilson, over the `support` images of this label
    f1_interval: list[float] | None = None  # Wilson, over TP + ½(FP + FN) (see f1_wilson_interval)
    assumed_threshold: float | None = None  # confidence (0–1) at which its F1 is best (see assumed_threshold)
    assumed_threshold_f1: float | None = None


FEW_TEST_IMAGES = 30  # below this, an F1 comes with a caution (the pages mark it "few test images" too)


@dataclass
class Evaluation:
    """A model version's evaluation; `to_json()` is what goes to `evaluation/<version>.json`."""

    labels: list[str]
    per_label: list[LabelMetrics]
    f1: float
    accuracy: float
    confusion_matrix: list[list[int]]
    train_images: int = 0
    test_images: int = 0
    training_time_s: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)
    f1_interval: list[float] | None = None  # 95 %, mean of the labels' F1 intervals
    accuracy_interval: list[float] | None = None  # 95 %, Wilson
    interval_method: str = INTERVAL_METHOD

    def label(self, name: str) -> LabelMetrics:
        """The metrics of one label by name."""
        return next(m for m in self.per_label if m.label == name)

    def caution(self) -> str | None:
        """What a reader must know before quoting the F1: set when the test split is small (fewer than
        FEW_TEST_IMAGES images), else None."""
        if self.test_images >= FEW_TEST_IMAGES:
            return None
        plural = "" if self.test_images == 1 else "s"
        interval = (f" its 95 % interval is {self.f1_interval[0]:.2f}–{self.f1_interval[1]:.2f}, and"
                    if self.f1_interval else "")
        return (f"F1 from {self.test_images} test image{plural}:{interval} the model on new images may be far "
                "from it; add labeled images for a firmer figure.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, with `caution` (see `caution`)."""
        return {**asdict(self), "caution": self.caution()}

    def to_json(self, **extra: Any) -> str:
        """JSON text; `extra` keys (e.g. model_version, created_at) are added at the top level."""
        return json.dumps({**extra, **self.to_dict()}, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        """Inverse of to_dict (extra top-level keys are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in names}
        values["per_label"] = [LabelMetrics(**m) for m in data["per_label"]]
        return cls(**values)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (or summed `weights`), rows = true label index, columns = predicted label index."""
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64 if weights is None else np.float64)
    np.add.at(matrix, (y_true, y_pred), 1 if weights is None else weights)
    return matrix


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _precision_recall_f1(matrix: np.ndarray, i: int) -> tuple[float, float, float]:
    """Label i's precision, recall and F1 from a confusion matrix (0 where undefined)."""
    tp = matrix[i, i]
    precision, recall = _safe_div(tp, matrix[:, i].sum()), _safe_div(tp, matrix[i, :].sum())
    return precision, recall, _safe_div(2 * precision * recall, precision + recall)


def _label_metrics(name: str, i: int, matrix: np.ndarray, pred: np.ndarray, conf: np.ndarray,
                   y: np.ndarray) -> LabelMetrics:
    predicted = int(matrix[:, i].sum())
    support = int(matrix[i, :].sum())
    precision, recall, f1 = _precision_recall_f1(matrix, i)
    assigned = conf[pred == i]
    threshold = float(assigned.min()) if assigned.size else None
    tp = int(matrix[i, i])
    assumed, assumed_f1 = assumed_threshold(assigned, y[pred == i] == i, support)
    return LabelMetrics(name, precision, recall, f1, support, predicted, threshold,
                        precision_interval=wilson_interval(tp, predicted), recall_interval=wilson_interval(tp, support),
                        f1_interval=f1_wilson_interval(tp, predicted - tp, support - tp) if support else None,
                        assumed_threshold=assumed, assumed_threshold_f1=assumed_f1)


def assumed_threshold(confidences: np.ndarray, correct: np.ndarray, support: int) -> tuple[float | None, float | None]:
    """The cut-off (0–1) among ``confidences`` of the test images given a label at which the label's F1 is
    best, counting only answers at or above it (``correct``: whether each was right; ``support``: test images
    whose true label it is), and that F1. Ties go to the lowest cut-off; (None, None) without answers."""
    if confidences.size == 0:
        return None, None
    order = np.argsort(-confidences, kind="stable")
    ranked, hits = confidences[order], np.cumsum(correct[order])
    kept = np.arange(1, ranked.size + 1)  # answers at or above each cut-off, most confident first
    scores = 2 * hits / (kept + support)  # F1 = 2TP / (2TP + FP + FN) = 2TP / (kept + support)
    last_of_value = np.append(ranked[1:] != ranked[:-1], True)  # a cut-off keeps every answer of its value
    scores = np.where(last_of_value, scores, -1.0)
    best = int(np.flatnonzero(scores == scores.max())[-1])
    return float(ranked[best]), round(float(scores[best]), 4)


def wilson_interval(successes: float, n: float, z: float = Z_95) -> list[float] | None:
    """Wilson score interval of a proportion ``successes / n`` ([low, high]); None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def f1_wilson_interval(tp: int, fp: int, fn: int) -> list[float] | None:
    """A label's F1 = TP / (TP + ½(FP + FN)), taken as a proportion over TP + ½(FP + FN) trials: its Wilson
    interval (an approximation: F1 is not a plain proportion). None when the label was never true nor given."""
    trials = tp + (fp + fn) / 2
    return wilson_interval(tp, trials) if trials > 0 else None


def macro_interval(intervals: Sequence[list[float] | None]) -> list[float] | None:
    """The macro average's interval: the mean of the labels' bounds. Conservative (it takes every label's
    error to go the same way); wide on few test images, as it should be."""
    given = [interval for interval in intervals if interval is not None]
    if not given:
        return None
    return [round(float(np.mean([low for low, _ in given])), 4), round(float(np.mean([high for _, high in given])), 4)]


def calibration_stats(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """Negative log-likelihood and expected calibration error of probabilities vs true labels."""
    if len(y_true) == 0:
        return {"nll": 0.0, "ece": 0.0}
    p_true = np.clip(proba[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    conf, pred = proba.max(axis=1), proba.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(float((pred[mask] == y_true[mask]).mean()) - float(conf[mask].mean()))
    return {"nll": float(-np.log(p_true).mean()), "ece": float(ece)}


def evaluate(labels: Sequence[str], y_true: Sequence[int] | np.ndarray, proba: np.ndarray, *,
             train_images: int = 0, training_time_s: float = 0.0,
             calibration: dict[str, Any] | None = None) -> Evaluation:
    """Evaluate probabilities (N×labels, columns in `labels` order) against true label indices."""
    y = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64).reshape(len(y), len(labels))
    pred, conf = proba.argmax(axis=1), proba.max(axis=1)
    matrix = confusion_matrix(y, pred, len(labels))
    per_label = [_label_metrics(name, i, matrix, pred, conf, y) for i, name in enumerate(labels)]
    measured = [m.f1 for m in per_label if m.support > 0]
    return Evaluation(
        labels=list(labels),
        per_label=per_label,
        f1=float(np.mean(measured)) if measured else 0.0,
        accuracy=_safe_div(float(np.trace(matrix)), len(y)),
        confusion_matrix=matrix.tolist(),
        train_images=train_images,
        test_images=len(y),
        training_time_s=training_time_s,
        calibration={**(calibration or {}), **calibration_stats(y, proba)},
        f1_interval=macro_interval([m.f1_interval for m in per_label if m.support > 0]),
        accuracy_interval=wilson_interval(int(np.trace(matrix)), len(y)),
    )


def weighted_f1(truth: Sequence[str], predicted: Sequence[str], weights: Sequence[float]) -> float:
    """Macro F1 over the labels in `truth`, from a confusion matrix in which each image counts its weight."""
    labels = sorted(set(truth) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    matrix = confusion_matrix(np.array([index[t] for t in truth], dtype=np.int64),
                              np.array([index[p] for p in predicted], dtype=np.int64), len(labels),
                              np.asarray(weights, dtype=np.float64))
    scores = [_precision_recall_f1(matrix, index[label])[2] for label in sorted(set(truth))]
    return float(np.mean(scores)) if scores else 0.0


@dataclass
class ProductionEstimate:
    """F1 estimated for the images the model is asked about in production, from two human-labeled samples.

    Detections fall in two strata by how the serving model treated them: *reviewed* (top confidence below
    Minimum-Label-Detection-Confidence, so a human labeled it and it became training data; a share
    `review_share` of detections) and *confident* (the rest). The version's test images that came from human
    review are a random sample of the first stratum (the split is random within each label); the
    human-sampling answers to confident detections are a random sample of the second (sampled detections that
    were also reviewed are in the first). Weighting each sample by its stratum's share gives an unbiased
    picture of production traffic, which the test split alone is not: under the loop it holds mostly the
    images the model found hardest.
    """

    f1: float | None
    reason: str
    review_share: float
    reviewed_test_images: int
    audit_answers: int
    reviewed_f1: float | None = None
    audit_f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, F1 values rounded to 4 places."""
        data = asdict(self)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}


MIN_REVIEWED_TEST_IMAGES = 5
MIN_AUDIT_ANSWERS = 10


def production_estimate(reviewed: Sequence[tuple[str, str]], audit: Sequence[tuple[str, str]],
                        review_share: float, *, min_audit: int = MIN_AUDIT_ANSWERS) -> ProductionEstimate:
    """Stratified F1 from (true, predicted) label pairs of both samples (see `ProductionEstimate`).

    No estimate (f1 None, `reason` says why) while a stratum has fewer images than MIN_REVIEWED_TEST_IMAGES /
    `min_audit` times its share of traffic (rounded up): its error in the estimate scales with its share
    over the square root of its sample, so a stratum that carries little traffic needs few answers, one that
    carries all of it the full number. A comparison of two versions on the same answers may ask for fewer
    (`min_audit`): an answer both get right, or both wrong, cannot tip it.
    """
    if not 0 <= review_share <= 1:
        raise ValueError(f"review_share is a share of detections from 0 to 1, got {review_share}")
    counts = {"review_share": review_share, "reviewed_test_images": len(reviewed), "audit_answers": len(audit)}
    need_reviewed = math.ceil(MIN_REVIEWED_TEST_IMAGES * review_share)
    need_audit = math.ceil(min_audit * (1 - review_share))
    missing = []
    if len(reviewed) < need_reviewed:
        missing.append(f"{len(reviewed)} test image(s) from human review (needs {need_reviewed})")
    if len(audit) < need_audit:
        missing.append(f"{len(audit)} human-sampling answer(s) to confident detections (needs {need_audit})")
    if missing:
        return ProductionEstimate(None, "not enough human answers yet: " + " and ".join(missing), **counts)
    parts = [(reviewed, review_share), (audit, 1 - review_share)]
    truth = [t for pairs, share in parts if share > 0 for t, _ in pairs]
    predicted = [p for pairs, share in parts if share > 0 for _, p in pairs]
    weights = [share / len(pairs) for pairs, share in parts if share > 0 for _ in pairs]

    def alone(pairs: Sequence[tuple[str, str]]) -> float | None:
        return weighted_f1([t for t, _ in pairs], [p for _, p in pairs], [1.0] * len(pairs)) if pairs else None

    return ProductionEstimate(weighted_f1(truth, predicted, weights),
                              f"{review_share:.0%} of detections went to human review", **counts,
                              reviewed_f1=alone(reviewed), audit_f1=alone(audit))
