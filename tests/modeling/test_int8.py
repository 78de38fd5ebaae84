"""Quantize-Backbone: an int8 backbone calibrated on a version's training images, its own head, served together."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from labelloop.modeling import int8
from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.images import prepare
from labelloop.modeling.serving import Serving
from labelloop.modeling.training import TrainingResult, train_head
from labelloop.modeling.versions import ModelError

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
    recipe = int8.recipe_for(int8.cpu_flags())  # the default: the recipe for the CPU that builds the file
    expected = int8.fingerprint(embedder.fingerprint, [fp32.digests[image.key] for image in calibration],
                                recipe=recipe)
    assert int8.stored_fingerprint(path) == expected == Embedder(path).fingerprint != embedder.fingerprint
    assert int8.recipe_of(Embedder(path)) == recipe.words and int8.recipe_of(embedder) is None
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


AVX2_ONLY = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2"  # the earlier sessions' EPYC
WITH_AVX512_VNNI = AVX2_ONLY + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
WITH_AVX_VNNI = AVX2_ONLY + " avx_vnni"  # Intel's client cores: the VEX-encoded VNNI without AVX-512


def test_the_recipe_is_full_range_only_on_a_cpu_with_vnni() -> None:
    assert int8.recipe_for(WITH_AVX512_VNNI) == int8.recipe_for(WITH_AVX_VNNI) == int8.FULL_RANGE
    assert not int8.FULL_RANGE.reduce_range
    assert int8.recipe_for(AVX2_ONLY) == int8.recipe_for(AVX2_ONLY + " avx512f avx512bw") == int8.REDUCE_RANGE
    assert int8.recipe_for("") == int8.REDUCE_RANGE  # flags unknown (no /proc/cpuinfo): the safe recipe
    assert int8.recipe_for(AVX2_ONLY + " avx512_vnnix") == int8.REDUCE_RANGE  # whole flags only
    assert int8.has_vnni(int8.cpu_flags()) == any(flag in int8.cpu_flags().split()
                                                   for flag in ("avx512_vnni", "avx_vnni"))


def test_the_int8_weights_setting_names_a_recipe_or_leaves_it_to_the_cpu() -> None:
    from pydantic import ValidationError

    from labelloop.config import Settings

    assert int8.recipe_named("auto", WITH_AVX512_VNNI) == int8.FULL_RANGE
    assert int8.recipe_named("auto", AVX2_ONLY) == int8.REDUCE_RANGE
    assert int8.recipe_named("reduce-range", WITH_AVX512_VNNI) == int8.REDUCE_RANGE  # a fleet without VNNI
    assert int8.recipe_named("full-range", AVX2_ONLY) == int8.FULL_RANGE
    with pytest.raises(ValueError, match="auto, full-range, reduce-range are allowed"):
        int8.recipe_named("int4", AVX2_ONLY)
    assert Settings(int8_weights="reduce-range").int8_weights == "reduce-range"
    assert Settings().int8_weights == "auto"
    with pytest.raises(ValidationError, match="int8_weights"):
        Settings(int8_weights="fast")


def test_the_recipe_is_in_the_fingerprint_so_a_file_is_reused_only_with_its_recipe(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult], embedder: Embedder, backbone_onnx: Path) -> None:
    fp32, path, _ = fp32_and_int8
    digests = [fp32.digests[image.key] for image in int8.calibration_images(fp32)]
    prints = {recipe: int8.fingerprint(embedder.fingerprint, digests, recipe=recipe)
              for recipe in (int8.REDUCE_RANGE, int8.FULL_RANGE)}
    assert len(set(prints.values())) == 2
    assert prints[int8.REDUCE_RANGE] == int8.fingerprint(embedder.fingerprint, digests)  # files built before
    here = int8.recipe_for(int8.cpu_flags())
    other = int8.FULL_RANGE if here == int8.REDUCE_RANGE else int8.REDUCE_RANGE
    rebuilt = int8.ensure_backbone(backbone_onnx, embedder.fingerprint, fp32, path.parent, recipe=other)
    assert rebuilt != path and int8.stored_fingerprint(rebuilt) == prints[other]
    assert int8.recipe_of(Embedder(rebuilt)) == other.words


def test_a_worker_without_vnni_warns_when_it_loads_a_full_range_backbone(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    _, path, _ = fp32_and_int8
    files = {}
    for recipe in (int8.REDUCE_RANGE, int8.FULL_RANGE):  # the same graph, labelled as built by each recipe
        proto = onnx.load(str(path))
        next(p for p in proto.metadata_props if p.key == int8.RECIPE_KEY).value = recipe.words
        files[recipe] = tmp_path / f"{recipe.reduce_range}.onnx"
        onnx.save(proto, str(files[recipe]))
    full, reduced = Embedder(files[int8.FULL_RANGE]), Embedder(files[int8.REDUCE_RANGE])
    with caplog.at_level(logging.WARNING, logger="labelloop.modeling.int8"):
        assert int8.check_cpu(full, "v7", WITH_AVX512_VNNI) and int8.check_cpu(full, "v7", WITH_AVX_VNNI)
        assert int8.check_cpu(reduced, "v7", AVX2_ONLY)
        assert not caplog.records
        assert not int8.check_cpu(full, "v7", AVX2_ONLY)
    [warning] = caplog.records
    assert warning.levelname == "WARNING" and warning.version == "v7"  # type: ignore[attr-defined]
    assert warning.recipe == int8.FULL_RANGE.words and "saturate" in warning.meaning  # type: ignore[attr-defined]


def test_a_recipe_with_float_ends_keeps_the_stem_and_head_convolutions_fp32(backbone_onnx: Path) -> None:
    graph = onnx.load(str(backbone_onnx)).graph
    tail = set(int8.float_nodes(graph, int8.FULL_RANGE))
    assert {node.op_type for node in graph.node if node.name in tail} == {"GlobalAveragePool", "Flatten", "Gemm"}
    ends = int8.Recipe("full range, float ends", reduce_range=False, float_ends=True)
    added = [node for node in graph.node if node.name in set(int8.float_nodes(graph, ends)) - tail]
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert [node.name for node in added if node.op_type == "Conv"] == [convs[0].name, convs[-1].name]
    assert sorted(node.input[0] for node in added if node.op_type == "Clip") == sorted(
        [convs[0].output[0], convs[-1].output[0]])  # each end's activation stays with it
    assert int8.fingerprint("fp", ["a"], recipe=ends) != int8.fingerprint("fp", ["a"], recipe=int8.FULL_RANGE)


def test_the_child_builds_the_same_file_as_a_build_in_this_process(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult], embedder: Embedder, backbone_onnx: Path,
        tmp_path: Path) -> None:
    fp32, path, _ = fp32_and_int8  # built by ensure_backbone, in a child process
    recipe = int8.recipe_for(int8.cpu_flags())
    here = int8.build(backbone_onnx, int8.calibration_images(fp32), tmp_path / "here.onnx",
                      int8.stored_fingerprint(path) or "", recipe=recipe)
    assert here.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no scratch left


def test_a_failing_child_raises_its_own_error_and_leaves_no_file(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult], backbone_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    with pytest.raises(ModelError, match=r"(?s)could not build the int8 backbone: .*ValueError: an int8 backbone "
                                         r"needs at least one calibration image"):
        int8.build_in_child(backbone_onnx, [], out, "print")
    fp32, _, _ = fp32_and_int8
    with pytest.raises(ModelError, match=r"(?s)could not build the int8 backbone: .*missing\.onnx"):
        int8.build_in_child(tmp_path / "missing.onnx", int8.calibration_images(fp32)[:1], out, "print")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a scratch folder


def test_a_killed_child_fails_the_build_and_a_retry_builds_the_same_file(
        fp32_and_int8: tuple[TrainingResult, Path, TrainingResult], embedder: Embedder, backbone_onnx: Path,
        tmp_path: Path) -> None:
    fp32, path, _ = fp32_and_int8
    outcome: list[BaseException | Path] = []

    def ensure() -> None:
        try:
            outcome.append(int8.ensure_backbone(backbone_onnx, embedder.fingerprint, fp32, tmp_path))
        except Exception as exc:  # the test reads it below
            outcome.append(exc)

    building = threading.Thread(target=ensure)
    building.start()
    pid = _quantizing_child(tmp_path)
    os.kill(pid, signal.SIGKILL)
    building.join(timeout=60)
    [failure] = outcome
    assert isinstance(failure, ModelError) and "killed by SIGKILL" in str(failure)
    assert list(tmp_path.iterdir()) == []  # nothing half-built where a retry looks, no scratch folder
    rebuilt = int8.ensure_backbone(backbone_onnx, embedder.fingerprint, fp32, tmp_path)
    assert rebuilt.name == path.name and rebuilt.read_bytes() == path.read_bytes()


def _quantizing_child(folder: Path, timeout: float = 60.0) -> int:
    """The pid of this process's child that builds an int8 file in ``folder``, once its build has begun (its
    quantization's temporary folder exists in the scratch folder)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(temporary.name.startswith("labelloop-int8-") for scratch in folder.glob(".int8-build-*")
               for temporary in scratch.iterdir()):
            return next(pid for pid in _children() if b"build_requested" in Path(f"/proc/{pid}/cmdline").read_bytes())
        time.sleep(0.05)
    raise AssertionError(f"no int8 build began in {folder} within {timeout} s")


def _children() -> list[int]:
    """This process's child processes, from /proc (the parent pid is the 2nd field after the command's name)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found
