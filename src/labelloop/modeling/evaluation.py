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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ECE_BINS = 10


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

    def label(self, name: str) -> LabelMetrics:
        """The metrics of one label by name."""
        return next(m for m in self.per_label if m.label == name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

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


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Counts, rows = true label index, columns = predicted label index."""
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def _label_metrics(name: str, i: int, matrix: np.ndarray, pred: np.ndarray, conf: np.ndarray) -> LabelMetrics:
    tp = matrix[i, i]
    predicted = int(matrix[:, i].sum())
    support = int(matrix[i, :].sum())
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    assigned = conf[pred == i]
    threshold = float(assigned.min()) if assigned.size else None
    return LabelMetrics(name, precision, recall, f1, support, predicted, threshold)


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
    per_label = [_label_metrics(name, i, matrix, pred, conf) for i, name in enumerate(labels)]
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
    )
