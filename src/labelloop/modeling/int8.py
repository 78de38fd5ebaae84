"""An int8 backbone per model version (``Quantize-Backbone``): build it, train the version's head on its
embeddings, and serve it only when it costs no accuracy that matters.

1. **Build**: ONNX Runtime's ``quant_pre_process`` then ``quantize_static`` on the fp32 backbone file, with
   the recipe ``bench/bench_int8.py`` measured best (QDQ, u8 activations, s8 per-channel weights, MinMax
   calibration; pooling, flatten and the ImageNet classifier stay fp32, so the embedding itself is not
   rounded), at full range on a CPU with VNNI and with ``reduce_range`` (7-bit weights) on one without:
   there ONNX Runtime's u8×s8 kernels add pairs of products in 16 bits, which can saturate at full range
   (``recipe_for``). Calibrated on up to ``CALIBRATION_IMAGES`` of the version's own training images, preprocessed
   as for serving: on the version's input view (a letterbox version calibrates on letterboxed images, whose
   padding a centre crop never shows). The file's fingerprint (fp32 fingerprint, recipe, calibration images and
   view) is written into its metadata with the recipe, so the embedding cache keeps its vectors apart and a
   retried training reuses the file only when built with the same recipe. The build runs in a child process
   (``build_in_child``): its calibration session, about 1 GiB at the peak, is never resident in the process that
   trains (a ``labelloop serve``); the parent gets the file once its fingerprint checks out, or the child's error.
2. **Train the twin** with the same code and split as the fp32 head (``train_head`` with the int8 embedder;
   the test split is passed explicitly, so both heads are judged on the same images).
3. **Check**: the int8 twin serves when its macro-F1 on the test split is within ``MAX_F1_LOSS`` of the fp32
   head's and it makes no more confident errors (wrong answers at or above the detection threshold, which
   nobody reviews: the silent errors). Both results go into the version's evaluation either way.
4. **Serve**: a worker without VNNI that loads a full-range file logs a warning naming the version
   (``check_cpu``): its answers may differ from the ones the check judged (a fleet of mixed CPUs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.files import atomic_write_bytes
from labelloop.modeling import child
from labelloop.modeling.backbone import FINGERPRINT_KEY
from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.images import prepare
from labelloop.modeling.training import LabeledImage, Progress, TrainingResult, train_head

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 8
MAX_F1_LOSS = 0.005  # half a point of macro-F1
_FLOAT_TAIL = ("GlobalAveragePool", "Flatten", "Gemm")
RECIPE_KEY = "quantization"  # the file's metadata entry naming its recipe
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


@dataclass(frozen=True)
class Recipe:
    """How a backbone is quantized: its words (in the file's metadata and its fingerprint) and its weight range."""

    words: str
    reduce_range: bool
    # Two refinements measured in session 20 (bench_int8_versions' float-ends and moving-average), neither
    # adopted: the stem and head convolutions (and their Clip) left fp32; MinMax ranges averaged over the
    # calibration batches instead of the extremes of all.
    float_ends: bool = False
    moving_average: bool = False


# The words of the reduce-range recipe are those every file before the full-range one was fingerprinted with.
REDUCE_RANGE = Recipe("QDQ, u8 activations, s8 per-channel weights, reduce_range, MinMax; pooling and classifier fp32",
                      reduce_range=True)
FULL_RANGE = Recipe("QDQ, u8 activations, s8 per-channel weights, full range (needs VNNI), MinMax; pooling and "
                    "classifier fp32", reduce_range=False)


def cpu_flags() -> str:
    """This CPU's feature flags as /proc/cpuinfo lists them ('' where there is no such file or line)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line.partition(":")[2] for line in info if line.startswith("flags")), "")
    except OSError:
        return ""


def has_vnni(flags: str) -> bool:
    """Whether a CPU with these /proc/cpuinfo ``flags`` has VNNI (AVX-512 VNNI or AVX-VNNI): its u8×s8 dot
    products add in 32 bits, so full-range weights cannot saturate."""
    return not VNNI_FLAGS.isdisjoint(flags.split())


def recipe_for(flags: str) -> Recipe:
    """The recipe for a CPU with these flags: full range with VNNI (closer to fp32), reduce_range without."""
    return FULL_RANGE if has_vnni(flags) else REDUCE_RANGE


WEIGHT_CHOICES = {"full-range": FULL_RANGE, "reduce-range": REDUCE_RANGE}


def recipe_named(choice: str, flags: str) -> Recipe:
    """The recipe the setting ``choice`` names (``LABELLOOP_INT8_WEIGHTS``): 'auto' is the one for a CPU with
    these ``flags`` (:func:`recipe_for`), 'full-range' or 'reduce-range' that recipe whatever the CPU."""
    if choice == "auto":
        return recipe_for(flags)
    if choice not in WEIGHT_CHOICES:
        raise ValueError(f"unknown int8 weights {choice!r}: auto, {', '.join(WEIGHT_CHOICES)} are allowed")
    return WEIGHT_CHOICES[choice]


def recipe_of(embedder: Embedder) -> str | None:
    """The recipe words in the metadata of the backbone ``embedder`` runs (None for an fp32 backbone)."""
    return embedder.session.get_modelmeta().custom_metadata_map.get(RECIPE_KEY)


def check_cpu(embedder: Embedder, version: str, flags: str | None = None) -> bool:
    """Whether this CPU (or one with ``flags``) computes ``version``'s int8 backbone as it was judged; when not
    (a full-range file on a CPU without VNNI), a warning naming the version says what that means."""
    recipe = recipe_of(embedder)
    if recipe != FULL_RANGE.words or has_vnni(cpu_flags() if flags is None else flags):
        return True
    log.warning("int8 backbone built for a CPU with VNNI, served without it",
                extra={"version": version, "backbone_fingerprint": embedder.fingerprint, "recipe": recipe,
                       "meaning": "this CPU adds u8×s8 products in 16 bits, which can saturate at full range: "
                                  "answers may differ from those the version's int8 check judged; serve it from "
                                  "workers with avx512_vnni or avx_vnni, or retrain it here"})
    return False


def fingerprint(fp32_fingerprint: str, calibration_digests: Sequence[str], view: str = "orig",
                recipe: Recipe = REDUCE_RANGE) -> str:
    """The int8 backbone's fingerprint: the fp32 backbone's, the recipe, the calibration images and their view
    (an `images.VIEWS` key; the centre crop's 'orig' adds nothing, so files built before views keep theirs)."""
    source = ":".join([fp32_fingerprint, "int8", recipe.words, *calibration_digests,
                       *([] if view == "orig" else [view])])
    return hashlib.sha256(source.encode()).hexdigest()


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint in an int8 backbone file's metadata, or None when there is no readable file."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError):  # a damaged file is rebuilt
        return None
    return next((p.value for p in proto.metadata_props if p.key == FINGERPRINT_KEY), None)


class _Calibration:
    """ONNX Runtime's calibration data reader: the images preprocessed as for serving, a few at a time."""

    def __init__(self, images: Sequence[LabeledImage], view: str = "orig") -> None:
        self._batches = self._read(images, view)

    @staticmethod
    def _read(images: Sequence[LabeledImage], view: str) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(images), CALIBRATION_BATCH):
            chunk = images[start:start + CALIBRATION_BATCH]
            yield {"input": np.stack([prepare(image.data(), view=view) for image in chunk])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def build(fp32_path: Path, calibration: Sequence[LabeledImage], out_path: Path, print_: str,
          view: str = "orig", recipe: Recipe = REDUCE_RANGE) -> Path:
    """Quantize the fp32 backbone at ``fp32_path`` with ``recipe`` into ``out_path`` (written atomically),
    calibrated on ``calibration`` prepared as ``view``, with the fingerprint ``print_`` in its metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("an int8 backbone needs at least one calibration image")
    with tempfile.TemporaryDirectory(prefix="labelloop-int8-") as folder:
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), _Calibration(calibration, view), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=recipe.reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=float_nodes(onnx.load(str(prepared)).graph, recipe),
                        extra_options={"CalibMovingAverage": recipe.moving_average})
        proto = onnx.load(str(quantized))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != FINGERPRINT_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (FINGERPRINT_KEY, print_), (RECIPE_KEY, recipe.words),
                       ("calibration_images", str(len(calibration)))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return atomic_write_bytes(out_path, proto.SerializeToString())


def float_nodes(graph: Any, recipe: Recipe) -> list[str]:
    """Names of the nodes of the backbone ``graph`` that ``recipe`` keeps in fp32: always the tail (pooling,
    flatten, ImageNet classifier); with ``float_ends`` also the first and last convolutions and their Clip."""
    nodes = list(graph.node)
    names = [node.name for node in nodes if node.op_type in _FLOAT_TAIL]
    if recipe.float_ends:
        convs = [node for node in nodes if node.op_type == "Conv"]
        ends = {convs[0].output[0], convs[-1].output[0]}
        names += [convs[0].name, convs[-1].name]
        names += [node.name for node in nodes if node.op_type == "Clip" and node.input[0] in ends]
    return names


def calibration_images(result: TrainingResult) -> list[LabeledImage]:
    """Up to ``CALIBRATION_IMAGES`` of the training split, a fixed choice (by content hash)."""
    train = sorted(result.split.train, key=lambda image: result.digests[image.key])
    return train[:CALIBRATION_IMAGES]


def ensure_backbone(fp32_path: Path, fp32_fingerprint: str, result: TrainingResult, folder: Path,
                    view: str = "orig", recipe: Recipe | None = None) -> Path:
    """The int8 backbone of a version trained as ``result`` on ``view``, built in ``folder`` with ``recipe``
    (by default the one for this CPU) unless already there."""
    recipe = recipe or recipe_for(cpu_flags())
    images = calibration_images(result)
    print_ = fingerprint(fp32_fingerprint, [result.digests[image.key] for image in images], view, recipe)
    path = backbone_file(folder, print_)
    if stored_fingerprint(path) != print_:
        build_in_child(fp32_path, images, path, print_, view, recipe)
    return path


REQUEST, BUILT, COST = "request.json", "int8.onnx", "cost.json"  # a child build's files in its scratch folder


def build_in_child(fp32_path: Path, calibration: Sequence[LabeledImage], out_path: Path, print_: str,
                   view: str = "orig", recipe: Recipe = REDUCE_RANGE) -> Path:
    """:func:`build` in a child process, so that quantization's memory (its calibration session: ~1 GiB at the
    peak) is never the training process's (a ``labelloop serve``). The calibration images' bytes go into a scratch
    folder beside ``out_path``, where the child builds the file (its temporary files too); the file is renamed to
    ``out_path`` once its fingerprint is ``print_``. A failed or killed child raises ``ModelError`` with its
    error and leaves no file at ``out_path`` and no scratch folder, so a retried training builds it again."""
    started = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".int8-build-", dir=out_path.parent) as name:
        scratch = Path(name)
        _write_request(scratch, fp32_path, calibration, print_, view, recipe)
        child.run(f"{__name__}:build_requested", name, failure="could not build the int8 backbone",
                  env={"TMPDIR": name})
        if (found := stored_fingerprint(scratch / BUILT)) != print_:
            raise RuntimeError(f"the int8 build's child wrote a file with fingerprint {found!r}, not {print_!r}")
        cost = json.loads((scratch / COST).read_text())
        os.replace(scratch / BUILT, out_path)
    log.info("int8 backbone built", extra={"path": str(out_path), "calibration_images": len(calibration),
                                           "recipe": recipe.words, "seconds": round(time.perf_counter() - started, 2),
                                           "child_seconds": cost["seconds"], "child_peak_mib": cost["peak_mib"]})
    return out_path


def _write_request(scratch: Path, fp32_path: Path, calibration: Sequence[LabeledImage], print_: str, view: str,
                   recipe: Recipe) -> None:
    """What the child builds, in ``scratch``: each calibration image's bytes in a file (in their order, which is
    the calibration batches'), and the request naming them, the fp32 file, fingerprint, view and recipe."""
    names = []
    for index, image in enumerate(calibration):
        names.append(f"calibration-{index:04d}")
        (scratch / names[-1]).write_bytes(image.data())
    request = {"fp32_path": str(fp32_path), "images": names, "fingerprint": print_, "view": view,
               "recipe": dataclasses.asdict(recipe)}
    (scratch / REQUEST).write_text(json.dumps(request))


def build_requested(scratch: str) -> None:
    """The child's side of :func:`build_in_child`: build the file the request in ``scratch`` asks for into it,
    and write its own seconds and peak RSS beside it."""
    folder = Path(scratch)
    request = json.loads((folder / REQUEST).read_text())
    images = [LabeledImage(name, "", (folder / name).read_bytes) for name in request["images"]]
    started = time.perf_counter()
    build(Path(request["fp32_path"]), images, folder / BUILT, request["fingerprint"], request["view"],
          Recipe(**request["recipe"]))
    cost = {"seconds": round(time.perf_counter() - started, 2),
            "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    (folder / COST).write_text(json.dumps(cost))


def backbone_file(folder: Path, print_: str) -> Path:
    """Where the int8 backbone with fingerprint ``print_`` lives in a cache folder."""
    return folder / f"backbone-int8-{print_[:16]}.onnx"


def confident_errors(result: TrainingResult, threshold: float) -> int:
    """Test images the evaluated head answered wrongly at or above ``threshold`` (0–100): silent errors."""
    truth = {image.key: image.label for image in result.split.test}
    return sum(1 for key, (label, confidence) in result.test_decisions.items()
               if confidence >= threshold and label != truth[key])


def compare(fp32: TrainingResult, int8: TrainingResult, threshold: float) -> dict[str, Any]:
    """Both heads on the same test split, and whether the int8 one may serve (and why, in words)."""
    errors = {"fp32": confident_errors(fp32, threshold), "int8": confident_errors(int8, threshold)}
    loss = fp32.evaluation.f1 - int8.evaluation.f1
    serves = loss <= MAX_F1_LOSS + 1e-12 and errors["int8"] <= errors["fp32"]
    reason = (f"macro-F1 {int8.evaluation.f1:.3f} against {fp32.evaluation.f1:.3f} (fp32) on "
              f"{len(fp32.split.test)} test images, {errors['int8']} against {errors['fp32']} confident errors "
              f"(≥ {threshold:g} %)")
    verdict = "serves int8" if serves else (f"serves fp32: int8 must lose at most {MAX_F1_LOSS * 100:g} point "
                                            "of macro-F1 and add no confident error")
    return {"f1": int8.evaluation.f1, "fp32_f1": fp32.evaluation.f1, "confident_errors": errors["int8"],
            "fp32_confident_errors": errors["fp32"], "threshold": threshold, "serves": serves,
            "reason": f"{reason}: {verdict}"}


@dataclass
class Twin:
    """The outcome of training a version's int8 twin: the result to keep, and the int8 file when it serves."""

    result: TrainingResult
    backbone: Path | None
    record: dict[str, Any]


def train_twin(examples: Sequence[LabeledImage], fp32: TrainingResult, fp32_path: Path, fp32_fingerprint: str, *,
               folder: Path, embeddings: Path, threshold: float, options: dict[str, Any],
               progress: Progress | None = None, recipe: Recipe | None = None) -> Twin:
    """Build the int8 backbone of the fp32 one at ``fp32_path`` calibrated on ``fp32``'s training split with
    ``recipe`` (by default the one for this CPU), train and evaluate the same head on its embeddings (same
    images, same test split, same ``options``), and keep whichever may serve. It needs no fp32 session: the
    caller's can go back first (its arena holds a batch of 32's buffers)."""
    started = time.perf_counter()
    path = ensure_backbone(fp32_path, fp32_fingerprint, fp32, folder, options.get("view", "orig"), recipe)
    built = time.perf_counter() - started
    embedder = Embedder(path, shared_arena=False)  # its own arena, given back with it (README Performance, item 44)
    told = None if progress is None else lambda phase, done, total: progress(f"int8 {phase}", done, total)
    int8 = train_head(examples, embedder, EmbeddingCache.for_embedder(embeddings, embedder),
                      test_split=fp32.test_keys, progress=told, **options)
    record = {**compare(fp32, int8, threshold), "backbone_fingerprint": embedder.fingerprint,
              "recipe": recipe_of(embedder),
              "calibration_images": len(calibration_images(fp32)), "build_s": round(built, 2),
              "train_s": round(time.perf_counter() - started - built, 2)}
    log.info("int8 twin trained", extra={"serves": record["serves"], "detail": record["reason"]})
    if record["serves"]:  # the version's evaluation becomes the int8 head's; the fp32 one is kept beside it
        return Twin(int8, path, {**record, "fp32_evaluation": fp32.evaluation.to_dict()})
    return Twin(fp32, None, {**record, "int8_evaluation": int8.evaluation.to_dict()})
