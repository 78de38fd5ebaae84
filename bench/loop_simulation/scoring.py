"""Score a serving version on the held-out digits with the model the server exports (ONNX), not a re-implementation.

`GET /api/v1/models/{version}/export?format=onnx` is one file: backbone → `embedding` → head → `probabilities`.
Running the whole file on 540 images per version would spend most of the run in the (unchanging) backbone, so:
the backbone half of the first exported file embeds the held-out images once, and each version's own file is
cut at `embedding` (onnx.utils.Extractor) and its head half runs on those embeddings. Every version is also
checked end to end: its whole file on a few held-out images must give the same probabilities (1e-4), so what
is scored is exactly what the exported model answers. The decision is the server's: the top-confidence label.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np

from labelloop.modeling.images import prepare

from .data import Digit

SPOT_CHECK = 8
ATOL = 1e-4


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _cut(model, inputs: list[str], outputs: list[str]) -> bytes:
    from onnx.utils import Extractor

    return Extractor(model).extract_model(inputs, outputs).SerializeToString()


@dataclass
class Score:
    version: str
    macro_f1: float
    accuracy: float
    max_spot_check_diff: float


class HoldoutScorer:
    """Macro-F1 of exported models on the fixed held-out images."""

    def __init__(self, holdout: list[Digit]):
        self.holdout = holdout
        self.inputs = np.stack([prepare(d.png) for d in holdout]).astype(np.float32)
        self.embeddings: np.ndarray | None = None
        self.backbone_fingerprint: str | None = None
        self._lock = threading.Lock()  # arms run in threads; the held-out embeddings are computed once

    def score(self, version: str, onnx_bytes: bytes) -> Score:
        import onnx
        from sklearn.metrics import accuracy_score, f1_score

        model = onnx.load_from_string(onnx_bytes)
        meta = {p.key: p.value for p in model.metadata_props}
        labels = json.loads(meta["labels"])
        with self._lock:
            if self.embeddings is None or meta.get("backbone_fingerprint") != self.backbone_fingerprint:
                backbone = _session(_cut(model, ["input"], ["embedding"]))
                self.embeddings = np.concatenate([backbone.run(["embedding"], {"input": self.inputs[i:i + 32]})[0]
                                                  for i in range(0, len(self.inputs), 32)])
                self.backbone_fingerprint = meta.get("backbone_fingerprint")
            embeddings = self.embeddings
        head = _session(_cut(model, ["embedding"], ["probabilities"]))
        probabilities = head.run(["probabilities"], {"embedding": embeddings})[0]
        whole = _session(onnx_bytes).run(["probabilities"], {"input": self.inputs[:SPOT_CHECK]})[0]
        diff = float(np.abs(whole - probabilities[:SPOT_CHECK]).max())
        if diff > ATOL:
            raise AssertionError(f"{version}: the head half differs from the whole exported model by {diff}")
        predicted = [labels[i] for i in probabilities.argmax(axis=1)]
        truth = [d.label for d in self.holdout]
        every = sorted(set(truth))
        return Score(version, float(f1_score(truth, predicted, labels=every, average="macro", zero_division=0)),
                     float(accuracy_score(truth, predicted)), diff)
