"""Predictions of one model version: the backbone (ONNX Runtime) followed by a trained head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelloop.modeling.embedding import Embedder
from labelloop.modeling.images import prepare
from labelloop.modeling.training import Head


def ranked(labels: Sequence[str], probabilities: np.ndarray) -> list[tuple[str, float]]:
    """(label, confidence 0–100) pairs for one row of probabilities, best first (ties by label order)."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")
    return [(labels[i], float(probabilities[i]) * 100.0) for i in order]


class Predictor:
    """An embedder and a head; the library's own reference for what a model version answers."""

    def __init__(self, embedder: Embedder, head: Head):
        self.embedder = embedder
        self.head = head

    @property
    def labels(self) -> list[str]:
        """Label names, in probability-column order."""
        return self.head.labels

    @property
    def view(self) -> str:
        """The view images are prepared with: the head's primary training view (``train_head``'s ``view``, an
        images.VIEWS key; 'orig', the centre crop, for heads trained before input views)."""
        return str((self.head.meta.get("views") or ["orig"])[0])

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities N×labels for a preprocessed N×3×224×224 float32 batch."""
        return self.head.predict_proba(self.embedder.embed(batch))

    def predict_bytes(self, images: Sequence[bytes]) -> list[list[tuple[str, float]]]:
        """Every label with its confidence (0–100), best first, per image; raises ImageRejected."""
        if not images:
            return []
        view = self.view
        probabilities = self.predict_batch(np.stack([prepare(data, self.embedder.max_pixels, view) for data in images]))
        return [ranked(self.labels, row) for row in probabilities]
