"""Quantize-Backbone: an int8 backbone calibrated on a version's training images, its own head, served together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from labelloop.modeling import int8
from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.images import prepare
from labelloop.modeling.serving import Serving
from labelloop.modeling.training import TrainingResult, train_head

from .conftest import pick

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fp32_and_int8(digits, embedder: Embedder, cache: EmbeddingCache, backbone_onnx: Path,  # type: ignore[no-untyped-def]
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingResult, Path, TrainingResult]:
    """A head trained on fp32 embeddings, the int8 backbone calibrated on its training split, and the head
    trained on that backbone's embeddings with the same test split."""
    folder = tmp_path_factory.mktemp("int8")
    examples = pick(digits, 4, skip=40, prefix="int8")
    fp32 = train_head(examples, embedder, cache)
    path = int8.ensure_backbone(backbone_onnx, embedder.fingerprint, fp32, folder)
    quantized = Embedder(path)
    twin = train_head(examples, quantized, EmbeddingCache.for_embedder(folder / "embeddings", quantized),
                      test_split=fp32.test_keys)
    return fp32, path, twin


def test_the_int8_backbone_is_quantized_and_fingerprinted_by_its_calibration(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult], embedder: Embedder, backbone_onnx: Path) -> None:
    fp32, path, twin = fp32_and_int8
    graph = onnx.load(str(path)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 50
    calibration = int8.calibration_images(fp32)
    assert {image.key for image in calibration} <= set(fp32.train_keys) and len(calibration) == len(fp32.train_keys)
    expected = int8.fingerprint(embedder.fingerprint, [fp32.digests[image.key] for image in calibration])
    assert int8.stored_fingerprint(path) == expected == Embedder(path).fingerprint != embedder.fingerprint
    assert twin.head.meta["backbone_fingerprint"] == expected  # the head knows which backbone it was trained on
    assert twin.test_keys == fp32.test_keys
    built_at = path.stat().st_mtime_ns
    assert int8.ensure_backbone(backbone_onnx, embedder.fingerprint, fp32, path.parent) == path
    assert path.stat().st_mtime_ns == built_at  # a retried training reuses the file


def test_a_version_on_int8_serves_its_int8_head_on_int8_embeddings(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult], backbone_onnx: Path, embedder: Embedder) -> None:
    fp32, path, twin = fp32_and_int8
    quantized = Embedder(path)
    inputs = np.stack([prepare(image.data()) for image in twin.split.test[:6]])
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=1)
    try:
        serving.switch(serving.warm("v-int8", twin.head, quantized))
        _, served = serving.submit(inputs).result(timeout=120)
        serving.switch(serving.warm("v-fp32", fp32.head))  # a version without its own backbone: the units' fp32
        _, served_fp32 = serving.submit(inputs).result(timeout=120)
    finally:
        serving.close()
    np.testing.assert_allclose(served, twin.head.predict_proba(quantized.embed(inputs)), atol=1e-5)
    int8_head_on_fp32 = twin.head.predict_proba(embedder.embed(inputs))
    assert np.abs(served - int8_head_on_fp32).max() > 1e-3  # not the int8 head on the fp32 backbone
    np.testing.assert_allclose(served_fp32, fp32.head.predict_proba(embedder.embed(inputs)), atol=1e-5)


def test_the_twin_serves_only_within_half_a_point_and_without_more_confident_errors(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult]) -> None:
    fp32, _, twin = fp32_and_int8

    def with_f1(result: TrainingResult, f1: float) -> TrainingResult:
        return dataclasses.replace(result, evaluation=dataclasses.replace(result.evaluation, f1=f1))

    assert int8.compare(fp32, fp32, 70.0)["serves"]
    assert int8.compare(fp32, with_f1(fp32, fp32.evaluation.f1 - 0.005), 70.0)["serves"]
    refused = int8.compare(fp32, with_f1(fp32, fp32.evaluation.f1 - 0.006), 70.0)
    assert not refused["serves"] and "at most 0.5 point" in refused["reason"]
    wrong = next(key for key in fp32.test_keys)
    truth = next(image.label for image in fp32.split.test if image.key == wrong)
    other = next(label for label in fp32.head.labels if label != truth)
    confidently_wrong = dataclasses.replace(fp32, test_decisions={**fp32.test_decisions, wrong: (other, 99.0)})
    added = int8.confident_errors(confidently_wrong, 70.0) - int8.confident_errors(fp32, 70.0)
    assert added >= 1
    assert not int8.compare(fp32, confidently_wrong, 70.0)["serves"]
    measured = int8.compare(fp32, twin, 70.0)  # the real twin: the verdict follows the rule
    loss_ok = fp32.evaluation.f1 - twin.evaluation.f1 <= int8.MAX_F1_LOSS + 1e-12
    errors_ok = int8.confident_errors(twin, 70.0) <= int8.confident_errors(fp32, 70.0)
    assert measured["serves"] == (loss_ok and errors_ok)
