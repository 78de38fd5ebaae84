"""Predictor answers, and the one-file ONNX export that must reproduce them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labelloop.modeling.embedding import Embedder
from labelloop.modeling.export import build_full_model_onnx
from labelloop.modeling.images import prepare
from labelloop.modeling.predict import Predictor, ranked
from labelloop.modeling.training import Head


@pytest.fixture(scope="module")
def predictor(embedder: Embedder, digits_result) -> Predictor:
    return Predictor(embedder, digits_result.head)


@pytest.fixture(scope="module")
def sample(digits_split) -> list[bytes]:
    _, test = digits_split
    return [e.data() for e in test[:12]]


def test_predict_bytes_ranks_every_label(predictor: Predictor, sample: list[bytes]) -> None:
    answers = predictor.predict_bytes(sample)
    assert len(answers) == len(sample)
    for answer in answers:
        assert sorted(label for label, _ in answer) == sorted(predictor.labels)
        confidences = [c for _, c in answer]
        assert confidences == sorted(confidences, reverse=True)
        # Softmax × familiarity: at most 100 in all (less for images unlike the training data).
        assert sum(confidences) <= 100.0 + 1e-6 and all(0 <= c <= 100 for c in confidences)
    assert predictor.predict_bytes([]) == []


def test_predict_batch_matches_predict_bytes(predictor: Predictor, sample: list[bytes]) -> None:
    proba = predictor.predict_batch(np.stack([prepare(d) for d in sample]))
    assert [ranked(predictor.labels, row) for row in proba] == predictor.predict_bytes(sample)


def test_full_model_onnx_reproduces_the_predictor(predictor: Predictor, sample: list[bytes], backbone_onnx: Path,
                                                  tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    out = build_full_model_onnx(backbone_onnx, predictor.head, tmp_path / "model.onnx", model_version="7")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("input", "probabilities")
    assert inp.shape[1:] == [3, 224, 224] and isinstance(inp.shape[0], str)
    batch = np.stack([prepare(d) for d in sample])
    for rows in (batch[:1], batch[:5], batch):  # dynamic batch size
        (got,) = session.run(["probabilities"], {"input": rows})
        assert got.shape == (len(rows), len(predictor.labels))
        np.testing.assert_allclose(got, predictor.predict_batch(rows), atol=1e-4, rtol=0)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == predictor.labels and meta["model_version"] == "7"
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["probabilities"]
    onnx.checker.check_model(model)


def test_export_without_normalisation_or_version(embedder: Embedder, backbone_onnx: Path, sample: list[bytes],
                                                 tmp_path: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(2)
    head = Head(["x", "y", "z"], rng.normal(size=(3, 1280)) * 0.01, rng.normal(size=3), 1.7, normalize=False)
    out = build_full_model_onnx(backbone_onnx, head, tmp_path / "plain.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = np.stack([prepare(d) for d in sample[:4]])
    (got,) = session.run(None, {"input": batch})
    np.testing.assert_allclose(got, Predictor(embedder, head).predict_batch(batch), atol=1e-4, rtol=0)
    assert "model_version" not in session.get_modelmeta().custom_metadata_map
