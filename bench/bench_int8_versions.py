"""Quantize-Backbone as the product does it, on real photographs: per task, a version trained on fp32 embeddings
and its int8 twin (backbone calibrated on the version's own training images), judged on held-out photos.

    PYTHONPATH=src nice -n 10 .venv/bin/python -m bench.bench_int8_versions [--tasks objects scenes] [--seeds 3]
        [--first-seed 0] [--recipes reduce-range full-range] [--rounds 3 (0: no speed)]
    PYTHONPATH=src .venv/bin/python -m bench.bench_int8_versions --summary   # pooled, from versions.jsonl

Needs `make bench-data` (the Debian packages of bench/real_images). For each task and seed: the training pool of
bench/real_images (objects: 10 Tux Paint photo stamps per label, 5 labels; scenes: 100 crops of the left 65 % of
each of 9 wallpaper photographs) trains a head with `train_head` (labels balanced, no final refit, so the
deployed head is the evaluated one) on the fp32 backbone, then `int8.ensure_backbone` quantizes the backbone
calibrated on that training split (up to 256 images) and the same head is trained on its embeddings, with the
task's test images as the explicit test split of both. Reported per backbone: macro-F1 on the known test photos,
the silent-error rate (wrong answers among those ≥ 70 %, the open set of never-trained kinds weighing as much as
the known test images, as bench/real_images does), the share of never-seen images reaching 70 %, the product's
verdict (`int8.compare`), the speed-up at batch 1, 8 and 32 (fp32 and int8 alternated, median of rounds), and the
seconds to build each int8 file and to train each head (embedding included: from an empty embedding cache only
when bench/out/int8_versions/embeddings is moved away first).
With several recipes (reduce-range, the one for a CPU without VNNI; full-range, the one for a CPU with it; and
the two full-range refinements tried in session 20: float-ends, the stem and head convolutions kept fp32, and
moving-average, MinMax ranges averaged over the calibration batches), each version gets every twin, and fp32 and
every int8 file alternate in the same speed rounds. Every version's figures are also appended to
bench/out/int8_versions/versions.jsonl (one line per version and recipe); ``--summary`` pools them per task and
recipe: paired ΔF1 mean ± standard error, median, share beyond ±0.5 point, silent-error Δ alike, and the size of
one flipped test answer in F1 points (the mean over the fp32 head's right answers of flipping one to another
label), which says how much of a task's spread is its test split's size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench.real_images import data as tasks
from bench.real_images.metrics import open_accepted, outcome, silent_error_rate

from labelloop.modeling import int8
from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached, session_options
from labelloop.modeling.export import ensure_backbone_onnx
from labelloop.modeling.images import prepare
from labelloop.modeling.training import LabeledImage, TrainingResult, train_head

OUT = Path(__file__).resolve().parent / "out" / "int8_versions"
TASKS = {"objects": tasks.object_task, "scenes": tasks.scene_task, "logos": tasks.logo_task,
         "animals": tasks.animal_task, "living": tasks.living_task}
RECIPES = {"reduce-range": int8.REDUCE_RANGE, "full-range": int8.FULL_RANGE,
           "float-ends": int8.Recipe("QDQ, u8 activations, s8 per-channel weights, full range (needs VNNI), MinMax; "
                                     "stem and head convolutions, pooling and classifier fp32", reduce_range=False,
                                     float_ends=True),
           "moving-average": int8.Recipe("QDQ, u8 activations, s8 per-channel weights, full range (needs VNNI), "
                                         "MinMax averaged over batches; pooling and classifier fp32",
                                         reduce_range=False, moving_average=True)}
RECORDS = OUT / "versions.jsonl"


def labeled(items: list[tasks.Item]) -> list[LabeledImage]:
    """The benchmark's images as training examples (bytes read when embedded)."""
    return [LabeledImage(item.key, item.label, item.load) for item in items]


def trained(task: tasks.Task, embedder: Embedder) -> TrainingResult:
    """A version's head on ``embedder``: the task's pool trains, its known test photos are the test split."""
    pool = [item for items in task.pool.values() for item in items]
    cache = EmbeddingCache.for_embedder(OUT / "embeddings", embedder)
    return train_head(labeled(pool + task.test), embedder, cache, test_split=[item.key for item in task.test],
                      balance_labels=True)


def open_set_scores(task: tasks.Task, embedder: Embedder, result: TrainingResult) -> dict[str, float]:
    """Silent-error rate and never-seen share at ≥ 70 % over the known test photos and the open set."""
    images = task.test + task.open
    cache = EmbeddingCache.for_embedder(OUT / "embeddings", embedder)
    digests = {item.key: result.digests.get(item.key) or _digest(item) for item in images}
    vectors = embed_cached(embedder, cache, {digests[item.key]: item.load for item in images})
    kept = [item for item in images if digests[item.key] not in vectors.rejected]
    proba = result.head.predict_proba(np.stack([vectors.get(digests[item.key]) for item in kept]))
    labels = result.head.labels
    y = np.array([labels.index(item.label) if item in task.test else -1 for item in kept])
    scores = outcome(y, proba.argmax(1), proba.max(1), len(labels))
    return {"silent": silent_error_rate(scores), "open70": open_accepted(scores)}


def flip_size(result: TrainingResult) -> float:
    """Mean change of macro-F1 (points) when one of the head's right test answers is flipped to another label."""
    truth = {image.key: image.label for image in result.split.test}
    keys = sorted(result.test_decisions)
    labels = sorted(set(truth.values()) | {label for label, _ in result.test_decisions.values()})
    y = np.array([labels.index(truth[key]) for key in keys])
    pred = np.array([labels.index(result.test_decisions[key][0]) for key in keys])
    base = _macro_f1(y, pred)
    changes = []
    for i in np.flatnonzero(pred == y):
        flipped = pred.copy()
        flipped[i] = (y[i] + 1) % len(labels)
        changes.append(base - _macro_f1(y, flipped))
    return 100 * float(np.mean(changes)) if changes else math.nan


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over the labels with test images, as ``evaluation`` computes a version's."""
    scores = [2 * np.sum((pred == k) & (y == k)) / (np.sum(pred == k) + np.sum(y == k)) for k in np.unique(y)]
    return float(np.mean(scores))


def summary(path: Path = RECORDS) -> None:
    """Pooled paired figures per task and recipe (and over all tasks) from the records at ``path``."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in records:  # a rerun version counts once, as first run: its build and embedding then were from scratch
        latest.setdefault((r["task"], r["seed"], r["recipe"]), r)
    print("task     recipe          n | ΔF1 pt mean ± se  median  <-0.5 >+0.5 | silent Δ pt mean ± se  median  "
          "higher lower | twin serves | one flip pt | ΔF1 in flips, answers changed | build s | fp32 train s twin s | "
          "peak MiB fp32 twin build child")
    for recipe in sorted({r for _, _, r in latest}):
        rows = [r for (_, _, name), r in latest.items() if name == recipe]
        for task in [*sorted({r["task"] for r in rows}), "all"]:
            chosen = [r for r in rows if task in ("all", r["task"])]
            print(f"{task:<8} {recipe:<14} {len(chosen):>2} | " + _pooled(chosen), flush=True)


def _pooled(rows: list[dict[str, Any]]) -> str:
    df1 = np.array([r["int8_f1"] - r["fp32_f1"] for r in rows]) * 100
    dsil = np.array([r["int8_silent"] - r["fp32_silent"] for r in rows]) * 100
    return (f"{_mean_se(df1)} {np.median(df1):+6.2f} {np.sum(df1 < -0.5):>5} {np.sum(df1 > 0.5):>5} | "
            f"{_mean_se(dsil)} {np.median(dsil):+6.2f} {np.sum(dsil > 0):>6} {np.sum(dsil < 0):>5} | "
            f"{sum(r['serves'] for r in rows):>5} of {len(rows):<3} | {np.median([r['flip'] for r in rows]):11.2f} | "
            f"{np.mean(df1 / np.array([r['flip'] for r in rows])):+12.2f} {_median(rows, 'changed'):7.0f} | "
            f"{np.median([r['build_s'] for r in rows]):7.1f} | {np.median([r['fp32_train_s'] for r in rows]):12.1f} "
            f"{np.median([r['int8_train_s'] for r in rows]):6.1f} | {_median(rows, 'peak_mib_fp32'):8.0f} "
            f"{_median(rows, 'peak_mib_twin'):4.0f} {_median(rows, 'peak_mib_build_child'):11.0f}")


def _median(rows: list[dict[str, Any]], key: str) -> float:
    """The median of ``key`` over the rows that have it (records before a column was added lack it)."""
    values = [r[key] for r in rows if key in r]
    return float(np.median(values)) if values else math.nan


def _mean_se(values: np.ndarray) -> str:
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return f"{values.mean():+6.2f} ± {se:4.2f}"


def peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    """This process's peak RSS so far in MiB (after the fp32 head, then after each twin: what a build adds), or
    with ``RUSAGE_CHILDREN`` the largest of its finished children's (the int8 builds run in a child process)."""
    return resource.getrusage(who).ru_maxrss / 1024


def _digest(item: tasks.Item) -> str:
    from labelloop.modeling.images import content_hash

    return content_hash(item.load())


def speed(fp32: Path, quantized: list[Path], inputs: np.ndarray, rounds: int, seconds: float
          ) -> list[dict[int, float]]:
    """Median speed-up of each int8 session over fp32 at batch 1, 8 and 32 (all alternated within each round)."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
                for path in (fp32, *quantized)]
    ratios: list[dict[int, list[float]]] = [{1: [], 8: [], 32: []} for _ in quantized]
    for done in range(rounds):
        for batch in (1, 8, 32):
            fp32_rate, *int8_rates = (_rate(session, inputs[:batch], seconds) for session in sessions)
            for rate, into in zip(int8_rates, ratios, strict=True):
                into[batch].append(rate / fp32_rate)
            print(f"  round {done + 1} batch {batch:>2}: fp32 {fp32_rate:6.1f} images/s, speed-ups "
                  + " ".join(f"{rate / fp32_rate:.2f}" for rate in int8_rates), flush=True)
    return [{batch: statistics.median(values) for batch, values in each.items()} for each in ratios]


def _rate(session, batch: np.ndarray, seconds: float) -> float:  # type: ignore[no-untyped-def]
    session.run(["embedding"], {"input": batch})
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(["embedding"], {"input": batch})
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["objects", "scenes"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (more seeds later)")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["reduce-range", "full-range"])
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds (0: accuracy only)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--summary", action="store_true", help="only pool the records of earlier runs")
    args = parser.parse_args()
    if args.summary:
        return summary()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}; this CPU has VNNI: {int8.has_vnni(int8.cpu_flags())}; "
          f"load average at start {os.getloadavg()}", flush=True)
    fp32_path = ensure_backbone_onnx(OUT / "cache")
    fp32 = Embedder(fp32_path)
    print("task     seed recipe        train test open | fp32 F1 int8 F1 ΔF1(pt) | silent % fp32 int8 | "
          "open≥70 % fp32 int8 | verdict      | speed-up b1 b8 b32 | build s train s fp32 int8  load | "
          "peak MiB fp32 twin child", flush=True)
    for name in args.tasks:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            task = TASKS[name](seed)
            started = time.perf_counter()
            base = trained(task, fp32)
            base_s = time.perf_counter() - started
            base_scores = open_set_scores(task, fp32, base)
            base_scores["peak_mib"] = peak_mib()
            twins = [twin(task, fp32_path, fp32, base, RECIPES[recipe]) for recipe in args.recipes]
            inputs = np.stack([prepare(item.load()) for item in task.test[:32]])
            ups = (speed(fp32_path, [each["path"] for each in twins], inputs, args.rounds, args.seconds)
                   if args.rounds else [dict.fromkeys((1, 8, 32), math.nan) for _ in twins])
            flip = flip_size(base)
            for recipe, each, up in zip(args.recipes, twins, ups, strict=True):
                record(commit, name, seed, recipe, base, base_scores, base_s, each, up, flip)
                loss = 100 * (each["result"].evaluation.f1 - base.evaluation.f1)
                print(f"{name:<8} {seed:>4} {recipe:<12} {len(base.train_keys):>6} {len(task.test):>4} "
                      f"{len(task.open):>4} | {base.evaluation.f1:7.3f} {each['result'].evaluation.f1:7.3f} "
                      f"{loss:+7.1f} | {100 * base_scores['silent']:13.1f} {100 * each['scores']['silent']:4.1f} | "
                      f"{100 * base_scores['open70']:14.1f} {100 * each['scores']['open70']:4.1f} | "
                      f"{'int8' if each['verdict']['serves'] else 'fp32':<12} | {up[1]:11.2f} {up[8]:.2f} "
                      f"{up[32]:.2f} | {each['built']:7.0f} {base_s:6.0f} {each['trained']:5.0f}  "
                      f"{os.getloadavg()[0]:.1f} | {base_scores['peak_mib']:8.0f} {each['peak_mib']:4.0f} "
                      f"{each['child_peak_mib']:5.0f}", flush=True)
    print(f"load average at end {os.getloadavg()}")


def record(commit: str, task: str, seed: int, recipe: str, base: TrainingResult, base_scores: dict[str, float],
           base_s: float, each: dict[str, Any], up: dict[int, float], flip: float) -> None:
    """Append one version's paired figures to ``RECORDS`` (what ``--summary`` pools)."""
    RECORDS.parent.mkdir(parents=True, exist_ok=True)
    line = {"commit": commit, "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "task": task, "seed": seed,
            "recipe": recipe, "test": len(base.split.test), "fp32_f1": base.evaluation.f1,
            "int8_f1": each["result"].evaluation.f1, "fp32_silent": base_scores["silent"],
            "int8_silent": each["scores"]["silent"], "fp32_open70": base_scores["open70"],
            "int8_open70": each["scores"]["open70"], "serves": each["verdict"]["serves"], "flip": flip,
            "changed": sum(each["result"].test_decisions.get(key, ("",))[0] != label
                           for key, (label, _) in base.test_decisions.items()),
            "build_s": each["built"], "fp32_train_s": base_s, "int8_train_s": each["trained"],
            "speedup": {str(batch): value for batch, value in up.items()}, "load": os.getloadavg()[0],
            "peak_mib_fp32": base_scores["peak_mib"], "peak_mib_twin": each["peak_mib"],
            "peak_mib_build_child": each["child_peak_mib"]}
    with RECORDS.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def twin(task: tasks.Task, fp32_path: Path, fp32: Embedder, base: TrainingResult, recipe: int8.Recipe
         ) -> dict[str, Any]:
    """``base``'s int8 twin built with ``recipe``: its file, build and training seconds, result, open-set
    scores, verdict."""
    started = time.perf_counter()
    path = int8.ensure_backbone(fp32_path, fp32.fingerprint, base, OUT / "int8", recipe=recipe)
    built = time.perf_counter() - started
    quantized = Embedder(path)
    started = time.perf_counter()
    result = trained(task, quantized)
    trained_s = time.perf_counter() - started
    return {"path": path, "built": built, "trained": trained_s, "result": result, "peak_mib": peak_mib(),
            "child_peak_mib": peak_mib(resource.RUSAGE_CHILDREN),
            "scores": open_set_scores(task, quantized, result),
            "verdict": int8.compare(base, result, 70.0)}


if __name__ == "__main__":
    sys.exit(main())
