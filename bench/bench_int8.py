"""An int8 backbone: statically quantized variants against fp32, speed and accuracy on real photographs, one run.

    PYTHONPATH=src .venv/bin/python bench/bench_int8.py [--quick] [--seconds 4] [--rounds 2]

Needs the photographs of `make bench-photos`. The fp32 backbone is the project's ONNX export
(`ensure_backbone_onnx`). Each variant is built with ONNX Runtime's `quantize_static`, calibrated on
preprocessed crops of the real photographs (``--calibration`` images, their own seed), after
`quant_pre_process`. Variants: QDQ and QOperator formats, per-channel or per-tensor weights, u8 or s8
activations, with or without ``reduce_range`` (7-bit weights: the AVX2 u8×s8 kernels without VNNI can saturate
in full range).

Accuracy, on other crops of the same photographs (``--eval`` images): agreement of the ImageNet top-1 class
with fp32, cosine between int8 and fp32 embeddings, and macro-F1 of a logistic-regression head on the three
hand-labelled scenes of bench/photos.py (plant / landscape / object), cross-validated with whole photographs
held out (GroupKFold), both for a head trained on the variant's own embeddings and for the fp32 head applied
to the variant's embeddings; plus the error rate among confident answers (≥ 70 %), the silent-error proxy.
Speed: batch 1, 8 and 32 on both cores with the serving session options, fp32 and variants alternated in
each round; speed-up = variant images/s ÷ fp32 images/s of the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import uploads

from labelloop.modeling.embedding import default_threads, session_options
from labelloop.modeling.export import ensure_backbone_onnx
from labelloop.modeling.images import prepare

OUT = Path(__file__).resolve().parent / "out"
CONFIDENT = 0.70


@dataclass(frozen=True)
class Variant:
    name: str
    quant_format: str  # "QDQ" or "QOperator"
    per_channel: bool
    activation: str  # "u8" or "s8"
    reduce_range: bool = False
    float_tail: bool = True  # pooling, flatten and the ImageNet classifier stay fp32 (the embedding is not rounded)
    float_stem: bool = False  # the first convolution stays fp32
    method: str = "MinMax"  # or "Percentile"


VARIANTS = [
    Variant("QDQ u8s8 per-channel, all int8", "QDQ", True, "u8", float_tail=False),
    Variant("QDQ u8s8 per-channel", "QDQ", True, "u8"),
    Variant("QDQ u8s8 per-channel reduce-range", "QDQ", True, "u8", True),
    Variant("QDQ s8s8 per-channel", "QDQ", True, "s8"),
    Variant("QOperator u8s8 per-channel reduce-range", "QOperator", True, "u8", True),
]
# Tried beside these with --variants all: a fp32 first convolution, Percentile calibration, per-tensor weights.
MORE_VARIANTS = [
    Variant("QDQ u8s8 per-channel reduce-range fp32 stem", "QDQ", True, "u8", True, float_stem=True),
    Variant("QDQ u8s8 per-channel reduce-range percentile", "QDQ", True, "u8", True, method="Percentile"),
    Variant("QDQ u8s8 per-tensor reduce-range", "QDQ", False, "u8", True),
]


def excluded_nodes(model: Path, variant: Variant) -> list[str]:
    """Names of the nodes the variant keeps in fp32."""
    import onnx

    nodes = onnx.load(str(model)).graph.node
    names = []
    if variant.float_tail:
        names += [n.name for n in nodes if n.op_type in ("GlobalAveragePool", "Flatten", "Gemm")]
    if variant.float_stem:
        names.append(next(n.name for n in nodes if n.op_type == "Conv"))
    return names


class Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed photos (batches of 8)."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.batches = iter([{"input": inputs[i:i + 8]} for i in range(0, len(inputs), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def build(variant: Variant, fp32: Path, calibration: np.ndarray) -> Path:
    """The quantized file of ``variant`` (cached beside the fp32 file)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = OUT / "int8"
    folder.mkdir(parents=True, exist_ok=True)
    prepared = folder / "backbone-prepared.onnx"
    if not prepared.is_file():
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    out = folder / (variant.name.replace(" ", "_") + f"-{len(calibration)}.onnx")
    if out.is_file():
        return out
    started = time.perf_counter()
    quantize_static(
        str(prepared), str(out), Calibration(calibration),
        quant_format=QuantFormat.QDQ if variant.quant_format == "QDQ" else QuantFormat.QOperator,
        per_channel=variant.per_channel, reduce_range=variant.reduce_range,
        activation_type=QuantType.QUInt8 if variant.activation == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, variant.method),
        nodes_to_exclude=excluded_nodes(prepared, variant),
    )
    print(f"built {variant.name} in {time.perf_counter() - started:.0f} s ({out.stat().st_size / 1e6:.1f} MB)",
          flush=True)
    return out


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(default_threads()), providers=["CPUExecutionProvider"])


def outputs(sess, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [sess.run(["embedding", "logits"], {"input": inputs[i:i + 32]}) for i in range(0, len(inputs), 32)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def rate(sess, inputs: np.ndarray, batch: int, seconds: float) -> float:
    x = np.ascontiguousarray(inputs[:batch])
    sess.run(["embedding"], {"input": x})
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        sess.run(["embedding"], {"input": x})
        done += batch
    return done / (time.perf_counter() - started)


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def head_scores(train_x: np.ndarray, test_x: np.ndarray, y: np.ndarray, splits: list
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated probabilities: heads fitted on ``train_x`` folds, applied to ``test_x`` held-out rows."""
    from sklearn.linear_model import LogisticRegression

    proba = np.zeros((len(y), len(set(y))))
    for train, test in splits:
        model = LogisticRegression(C=1.0, max_iter=3000).fit(normalize(train_x[train]), y[train])
        proba[test] = model.predict_proba(normalize(test_x[test]))
    return proba, proba.argmax(axis=1)


def quality(proba: np.ndarray, predicted: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """(macro-F1, error rate among confident answers, number of confident answers)."""
    from sklearn.metrics import f1_score

    confident = proba.max(axis=1) >= CONFIDENT
    errors = float(np.mean(predicted[confident] != y[confident])) if confident.any() else float("nan")
    return float(f1_score(y, predicted, average="macro")), errors, int(confident.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two variants, fewer images, short timings")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--eval", type=int, default=750)
    parser.add_argument("--variants", choices=["main", "all"], default="main")
    parser.add_argument("--speed-only", action="store_true", help="skip the accuracy table")
    args = parser.parse_args()
    variants = VARIANTS if args.variants == "main" else VARIANTS + MORE_VARIANTS
    if args.quick:
        variants, args.seconds, args.rounds, args.calibration, args.eval = VARIANTS[1:3], 2.0, 1, 64, 250
    print(f"load average at start: {os.getloadavg()}; {default_threads()} threads per session")
    fp32 = ensure_backbone_onnx(OUT / "cache")
    calibration = np.stack([prepare(data) for _, _, data in uploads(args.calibration, seed=2)])
    evaluation = uploads(args.eval, seed=3)
    inputs = np.stack([prepare(data) for _, _, data in evaluation])
    scenes = sorted({scene for _, scene, _ in evaluation})
    y = np.array([scenes.index(scene) for _, scene, _ in evaluation])
    groups = np.array([name.split("-", 1)[1] for name, _, _ in evaluation])  # the source photograph
    photo_names = sorted(set(groups))
    photo = np.array([photo_names.index(g) for g in groups])
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    tasks = {  # task -> (labels, cross-validation folds)
        "scene": (y, list(GroupKFold(n_splits=5).split(inputs, y, groups))),  # unseen photographs
        "photo": (photo, list(StratifiedKFold(5, shuffle=True, random_state=0).split(inputs, photo))),
    }
    paths = {"fp32": fp32, **{v.name: build(v, fp32, calibration) for v in variants}}
    sessions = {name: session(path) for name, path in paths.items()}

    if not args.speed_only:
        accuracy(sessions, inputs, tasks, groups, len(calibration))
    speed(sessions, inputs, args.rounds, args.seconds)
    print(f"\nload average at end: {os.getloadavg()}")


def accuracy(sessions: dict, inputs: np.ndarray, tasks: dict, groups: np.ndarray, calibrated: int) -> None:
    """Agreement with fp32 and macro-F1 of heads, per variant."""
    reference_embedding, reference_logits = outputs(sessions["fp32"], inputs)
    print(f"\naccuracy on {len(inputs)} crops of {len(set(groups))} photographs; {calibrated} calibration "
          "crops (other seed). scene: plant/landscape/object, whole photographs held out; photo: which of the "
          "photographs a crop comes from, crops held out. F1 = macro-F1 (own head: trained on the variant's "
          "embeddings; fp32 head: trained on fp32 embeddings, applied to the variant's)")
    print(f"{'model':<46} {'top-1 = fp32':>12} {'cos mean':>8} {'cos p1':>7} {'scene F1':>8} {'photo F1':>8} "
          f"{'photo F1 fp32 head':>18} {'err@≥70%':>8} {'confident':>9}")
    for name, sess in sessions.items():
        embedding, logits = outputs(sess, inputs)
        agree = float(np.mean(logits.argmax(1) == reference_logits.argmax(1)))
        cosine = np.sum(normalize(embedding) * normalize(reference_embedding), axis=1)
        scene_labels, scene_folds = tasks["scene"]
        scene = quality(*head_scores(embedding, embedding, scene_labels, scene_folds), scene_labels)
        labels, folds = tasks["photo"]
        own = quality(*head_scores(embedding, embedding, labels, folds), labels)
        crossed = quality(*head_scores(reference_embedding, embedding, labels, folds), labels)
        print(f"{name:<46} {agree:>12.3f} {cosine.mean():>8.4f} {np.percentile(cosine, 1):>7.4f} {scene[0]:>8.3f} "
              f"{own[0]:>8.3f} {crossed[0]:>18.3f} {own[1]:>8.3f} {own[2]:>9}", flush=True)


def speed(sessions: dict, inputs: np.ndarray, rounds: int, seconds: float) -> None:
    """images/s at batch 1, 8 and 32, fp32 and the variants alternated; speed-up within each round."""
    print(f"\nspeed, images/s (both cores, {rounds} rounds of {seconds:.0f} s, fp32 and variants "
          "alternated; speed-up against fp32 in the same round, median)")
    speedups: dict[tuple[str, int], list[float]] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for batch in (1, 8, 32):
            base = rate(sessions["fp32"], inputs, batch, seconds)
            rates.setdefault(("fp32", batch), []).append(base)
            for name in sessions:
                if name != "fp32":
                    value = rate(sessions[name], inputs, batch, seconds)
                    rates.setdefault((name, batch), []).append(value)
                    speedups.setdefault((name, batch), []).append(value / base)
    print(f"{'model':<42} {'batch 1':>14} {'batch 8':>14} {'batch 32':>14}")
    for name in sessions:
        cells = []
        for batch in (1, 8, 32):
            value = statistics.median(rates[(name, batch)])
            ratio = statistics.median(speedups[(name, batch)]) if name != "fp32" else 1.0
            cells.append(f"{value:6.1f} ({ratio:4.2f}×)")
        print(f"{name:<42} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
