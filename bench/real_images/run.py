"""Real-image benchmark: closed-set macro-F1, silent errors, confident share and calibration per model recipe.

    make bench-data    # once: the Debian icon themes, wallpapers and photo stamps the benchmark reads
    PYTHONPATH=src nice -n 10 .venv/bin/python -m bench.real_images [--seeds 3] [--quick]

Tasks and sources: data.py (licences in README.md). Features are cached in bench/out/real_images/features/,
so a rerun embeds nothing. Writes bench/out/real_images/results.{json,md} and reliability.png; prints the
tables. Every figure is the mean over seeded draws of the training images (the test and open sets are fixed).

Protocol: for each task and training size k, k images per known label are drawn from its training pool; the
head is the product's (training.py); each recipe gives (label, confidence) for the known test images and the
open-set images (kinds never trained on; together they weigh as much as the known test images). Reported at
threshold 70 (Minimum-Label-Detection-Confidence's default): the silent-error rate (wrong answers among those
at ≥ 70, open-set images always wrong), the share of correct answers at ≥ 70, the share of open-set images
at ≥ 70, and the expected calibration error. "pasted" evaluates the same heads on the test and open-set images
pasted at an angle onto a photo.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bench.real_images import metrics
from bench.real_images.data import CLOSED_TASKS, OUT, TASKS, Task, missing_sources
from bench.real_images.features import Features, backbone_speed, extract
from bench.real_images.recipes import Data, Recipe, fit_classifier, fit_with_out_of_fold, predict

from labelloop.modeling import training
from labelloop.modeling.backbone import LITE0, LITE2, Variant

PRODUCT = "labelloop now (Head.predict_proba)"
CONFIDENCE_RECIPES = (
    Recipe("softmax", None),
    Recipe("previous rule (centroid familiarity)", "centroid"),
    Recipe("nearest neighbour", "knn"),
    Recipe("Mahalanobis (Ledoit-Wolf)", "mahalanobis"),
    Recipe("patch nearest neighbour", "patch"),
    Recipe("centroid, contrast", "centroid", "contrast"),
    Recipe("nearest neighbour, contrast (previous product rule)", "knn", "contrast"),
    Recipe("nearest neighbour, contrast + coverage", "knn", "coverage"),
    Recipe("centroid, contrast + coverage", "centroid", "coverage"),
    Recipe("patch nearest neighbour, contrast", "patch", "contrast"),
    Recipe("held-out labels, nearest neighbour", "knn", "held-out"),
    Recipe(PRODUCT, "current"),
)


PATCH_MAX_K = 5
VIEWS_OF = {name: ("crop",) for name in CLOSED_TASKS}  # closed-set tasks: square or near-square, crop only
LETTERBOX_RECIPES = ("softmax", "previous rule (centroid familiarity)", PRODUCT, "patch nearest neighbour")


@dataclass
class Prepared:
    """A task's features under every (variant, view) used, and the index of each item."""

    task: Task
    features: dict[tuple[str, str], Features] = field(default_factory=dict)

    def data(self, variant: str, view: str, keys: list[str], with_map: bool = True) -> Data:
        f = self.features[(variant, view)]
        rows = f.rows(keys)
        return Data(f.embedding[rows], f.fmap[rows] if with_map and f.fmap is not None else None, f.mid[rows])


def prepare(task: Task, plan: tuple[tuple[Variant, tuple[str, ...]], ...], closed_only: bool = False,
            open_set: bool = False) -> Prepared:
    """Features of the task's items for each (variant, views) of the plan (extracted when not cached);
    `closed_only`: just the training pool (up to the task's `closed_pool` per label) and the known test images;
    `open_set`: those and the open-set images (no pasted variants)."""
    prepared = Prepared(task)
    items = task.items()
    if closed_only or open_set:
        items = [i for pool in task.pool.values() for i in pool[:task.closed_pool]] + task.test
        items += task.open if open_set else []
    for variant, views in plan:
        for view in views:
            prepared.features[(variant.name, view)] = extract(task.name, items, variant, view)
    return prepared


CLOSED_POOL = 20


def draw(task: Task, k: int, seed: int) -> tuple[list[str], np.ndarray]:
    """k training keys per known label (pool order for seed 0, else a seeded draw), and their label indices."""
    keys, ys = [], []
    for index, label in enumerate(task.labels):
        pool = task.pool[label]
        first = max(k, min(CLOSED_POOL, len(pool)))  # a seeded draw among the pool's first 20 (or k)
        order = np.random.default_rng([seed, index]).permutation(first) if seed else np.arange(len(pool))
        chosen = [pool[i].key for i in order[:k]]
        keys += chosen
        ys += [index] * len(chosen)
    return keys, np.array(ys)


def eval_sets(task: Task) -> dict[str, tuple[list[str], np.ndarray]]:
    """'plain' and (when the task has one) 'pasted': keys and labels (-1 for the open set)."""
    index = {label: i for i, label in enumerate(task.labels)}
    out = {"plain": ([i.key for i in task.test + task.open],
                     np.array([index[i.label] for i in task.test] + [-1] * len(task.open)))}
    if task.pasted_test:
        out["pasted"] = ([i.key for i in task.pasted_test + task.pasted_open],
                         np.array([index[i.label] for i in task.pasted_test] + [-1] * len(task.pasted_open)))
    return out


@dataclass
class Draw:
    """One seeded draw of a task at k training images per label: the product head on Lite0 crop features, its
    training data, and the plain evaluation set (known test images and the open set)."""

    task: Task
    k: int
    seed: int
    train: Data
    y: np.ndarray
    head: training.Head
    test: Data
    eval_y: np.ndarray


def seeded_draws(task_name: str, seeds: int, sizes: list[int]) -> Iterator[Draw]:
    """Every (seed, size) draw of a task with its product head, seed by seed (features prepared once a seed)."""
    for seed in range(seeds):
        task = TASKS[task_name](seed)
        prepared = prepare(task, ((LITE0, ("crop",)),))
        eval_keys, eval_y = eval_sets(task)["plain"]
        test = prepared.data(LITE0.name, "crop", eval_keys, with_map=False)
        for k in sizes:
            keys, y = draw(task, k, seed)
            train = prepared.data(LITE0.name, "crop", keys, with_map=False)
            yield Draw(task, k, seed, train, y, fit_classifier(train.embedding, y, task.labels, seed=seed), test,
                       eval_y)


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}


def score_outcome(o: metrics.Outcome, f1: float) -> dict[str, float]:
    return {"macro_f1": f1, "silent_error": metrics.silent_error_rate(o), "confident": metrics.confident_share(o),
            "open_accepted": metrics.open_accepted(o), "ece": metrics.ece(o),
            "best_confident": metrics.best_confident_share(o)}


Found = dict[tuple, list[dict[str, float]]]


def run_confidence(prepared: Prepared, seed: int, view: str, found: Found, plots: dict[str, metrics.Outcome]
                   ) -> None:
    """Every confidence recipe on one view of Lite0, at every training size, for one seeded task."""
    task = prepared.task
    sets = eval_sets(task)
    for k in task.sizes:
        keys, y = draw(task, k, seed)
        train = prepared.data(LITE0.name, view, keys)
        head = fit_classifier(train.embedding, y, task.labels, seed=seed)
        for set_name, (eval_keys, eval_y) in sets.items():
            test = prepared.data(LITE0.name, view, eval_keys)
            known = eval_y >= 0
            for recipe in CONFIDENCE_RECIPES:
                if recipe.score is not None and recipe.score != "current" and k < 2:
                    continue  # no leave-one-out score from a single image
                if recipe.score == "patch" and k > PATCH_MAX_K:
                    continue  # 49 patches × 100 images per label: too slow on two cores
                if view != "crop" and recipe.name not in LETTERBOX_RECIPES:
                    continue
                pred, conf = predict(recipe, head, train, y, test)
                o = metrics.outcome(eval_y, pred, conf, len(task.labels))
                f1 = metrics.macro_f1(eval_y[known], pred[known], len(task.labels))
                found.setdefault((task.name, k, view, recipe.name, set_name), []).append(score_outcome(o, f1))
                if seed == 0 and k == _plot_size(task):
                    plots[f"{task.name}/{set_name}/{view}/{recipe.name}"] = o


def confidence_rows(found: Found) -> list[dict[str, Any]]:
    return [{"task": t, "k": k, "view": v, "recipe": r, "set": s, "draws": len(rows), **summarise(rows)}
            for (t, k, v, r, s), rows in found.items()]


def _plot_size(task: Task) -> int:
    return 5 if 5 in task.sizes else task.sizes[0]


# ── features: closed-set accuracy per unit of cost ──────────────────────────────────────────────────────


FEATURE_RECIPES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    # name: (variant, views averaged, with mid-level features)
    "Lite0 crop (default)": (LITE0.name, ("crop",), False),
    "Lite0 letterbox": (LITE0.name, ("letterbox",), False),
    "Lite0 TTA crop+flip": (LITE0.name, ("crop", "flip"), False),
    "Lite0 TTA crop+letterbox": (LITE0.name, ("crop", "letterbox"), False),
    "Lite0 TTA crop+flip+letterbox": (LITE0.name, ("crop", "flip", "letterbox"), False),
    "Lite0 multi-layer": (LITE0.name, ("crop",), True),
    "Lite2 crop": (LITE2.name, ("crop",), False),
    "Lite2 letterbox": (LITE2.name, ("letterbox",), False),
    "Lite2 TTA crop+flip": (LITE2.name, ("crop", "flip"), False),
    "Lite2 TTA crop+letterbox": (LITE2.name, ("crop", "letterbox"), False),
}


# Train-time augmentation: the product head on Lite0 embeddings of the served view, with each *training* image's
# other views as extra rows (weighted 1/V, as train_head's `augment`); served on one view, so inference costs
# nothing more. name: (served view, extra training views)
AUGMENT_RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Lite0 crop, train-time flip": ("crop", ("flip",)),
    "Lite0 crop, train-time flip+letterbox": ("crop", ("flip", "letterbox")),
    "Lite0 letterbox, train-time crop": ("letterbox", ("crop",)),
}


def features_of(prepared: Prepared, recipe: str, keys: list[str]) -> np.ndarray:
    variant, views, with_mid = FEATURE_RECIPES[recipe]
    parts = [prepared.data(variant, view, keys, with_map=False) for view in views]
    x = np.mean([_unit(p.embedding) for p in parts], axis=0)
    if with_mid:
        x = np.concatenate([_unit(x), _unit(parts[0].mid)], axis=1)
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def plain_logistic_regression(x: np.ndarray, y: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The reference: scikit-learn's LogisticRegression with its defaults on the raw embeddings."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000).fit(x, y).predict(test)


def run_features(prepared: Prepared, seed: int, found: dict[tuple, list[float]]) -> None:
    """Closed-set macro-F1 of each feature recipe (product head) and of plain logistic regression, for the
    recipes whose features this run prepared."""
    recipes = tuple(name for name, (variant, views, _) in FEATURE_RECIPES.items()
                    if all((variant, view) in prepared.features for view in views))
    task = prepared.task
    keys_test = [i.key for i in task.test]
    index = {label: i for i, label in enumerate(task.labels)}
    y_test = np.array([index[i.label] for i in task.test])
    for k in task.sizes:
        if k < 2 or k > task.closed_pool:
            continue
        keys, y = draw(task, k, seed)
        raw = prepared.data(LITE0.name, "crop", keys, with_map=False).embedding
        raw_test = prepared.data(LITE0.name, "crop", keys_test, with_map=False).embedding
        pred = plain_logistic_regression(raw, y, raw_test)
        found.setdefault((task.name, k, PLAIN_LR), []).append(metrics.macro_f1(y_test, pred, len(task.labels)))
        for name in recipes:
            head = fit_classifier(features_of(prepared, name, keys), y, task.labels, seed=seed)
            pred = head.logits(features_of(prepared, name, keys_test)).argmax(axis=1)
            found.setdefault((task.name, k, name), []).append(metrics.macro_f1(y_test, pred, len(task.labels)))
        for name, (served, extra) in AUGMENT_RECIPES.items():
            if all((LITE0.name, view) in prepared.features for view in (served, *extra)):
                x, *views = (prepared.data(LITE0.name, view, keys, with_map=False).embedding
                             for view in (served, *extra))
                head = fit_classifier(x, y, task.labels, seed=seed, extra_views=tuple(views))
                pred = head.logits(prepared.data(LITE0.name, served, keys_test, with_map=False).embedding).argmax(1)
                found.setdefault((task.name, k, name), []).append(metrics.macro_f1(y_test, pred, len(task.labels)))


PLAIN_LR = "plain logistic regression (Lite0 crop)"


def costs(speed: dict[str, float]) -> dict[str, float]:
    """Backbone passes per image of each feature recipe, in Lite0-crop units (measured speeds)."""
    out = {PLAIN_LR: 1.0}
    for name, (variant, views, _) in FEATURE_RECIPES.items():
        if variant in speed:  # a variant left out of the run (--no-lite2) has no cost
            out[name] = len(views) * speed[LITE0.name] / speed[variant]
    return out | {name: 1.0 for name in AUGMENT_RECIPES}  # extra views at training only


# ── suspect labels ────────────────────────────────────────────────────────────────────────────────────


def run_suspects(prepared: Prepared, k: int, share: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Flip `share` of the training labels; flag images as the product does (`training.suspect_labels`: the
    training's calibrated out-of-fold prediction names another label at ≥ 70); precision and recall."""
    task = prepared.task
    keys, y = draw(task, k, seed)
    rng = np.random.default_rng([seed, 5])
    n_flip = max(1, round(share * len(y)))
    flipped = rng.choice(len(y), n_flip, replace=False)
    noisy = y.copy()
    n_labels = len(task.labels)
    for i in flipped:
        noisy[i] = (y[i] + 1 + rng.integers(n_labels - 1)) % n_labels
    x = prepared.data(LITE0.name, "crop", keys, with_map=False).embedding
    _, oof = fit_with_out_of_fold(x, noisy, task.labels, seed=seed)
    flagged = np.zeros(len(y), dtype=bool) if oof is None else (
        (oof.argmax(axis=1) != noisy) & (oof.max(axis=1) >= training.SUSPECT_CONFIDENCE))
    truth = np.zeros(len(y), dtype=bool)
    truth[flipped] = True
    found = int((flagged & truth).sum())
    return {"task": task.name, "seed": seed, "k": k, "images": len(y), "flipped": int(truth.sum()),
            "flagged": int(flagged.sum()), "found": found,
            "precision": found / max(1, int(flagged.sum())), "recall": found / int(truth.sum())}


# ── main ──────────────────────────────────────────────────────────────────────────────────────────────


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeded tasks (known/open split, training draw)")
    parser.add_argument("--scene-seeds", type=int, default=1, help="seeds for the (slow) scenes task")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--part", choices=("all", "confidence", "features"), default="all",
                        help="run a part only; results.json keeps the other parts of an earlier run")
    parser.add_argument("--no-lite2", action="store_true", help="leave Lite2 out (it needs its PyPI package)")
    parser.add_argument("--report", action="store_true",
                        help="only merge the results of earlier runs (one per part and task list) into the report")
    args = parser.parse_args()
    if args.report:
        from bench.real_images.report import merge_and_write

        merge_and_write()
        return
    missing = missing_sources()
    if missing:
        raise SystemExit(f"missing benchmark data, run `make bench-data` first: {missing[:5]}")
    started = time.perf_counter()
    partial = OUT / f"results-{args.part}-{args.tasks.replace(',', '+')}-seeds{args.seeds}.json"
    result: dict[str, Any] = {}
    plots: dict[str, metrics.Outcome] = {}
    found: Found = {}
    found_features: dict[tuple, list[float]] = {}
    suspects = []
    result[f"load_average_start_{args.part}"] = os.getloadavg()
    for name in args.tasks.split(","):
        for seed in range(args.scene_seeds if name == "scenes" else args.seeds):
            task = TASKS[name](seed)
            print(f"{name} seed {seed}: {len(task.labels)} known labels, {len(task.test)} test, "
                  f"{len(task.open)} open-set images", flush=True)
            if args.part in ("all", "confidence"):
                prepared = prepare(task, ((LITE0, VIEWS_OF.get(name, ("crop", "letterbox"))),))
                for view in VIEWS_OF.get(name, ("crop", "letterbox")):
                    run_confidence(prepared, seed, view, found, plots)
                suspects.append(run_suspects(prepared, max(task.sizes), seed=seed))
            if args.part in ("all", "features"):
                plan = ((LITE0, ("crop", "letterbox", "flip")),) if args.no_lite2 else (
                    (LITE0, ("crop", "letterbox", "flip")), (LITE2, ("crop",)))
                prepared = prepare(task, plan, closed_only=True)
                run_features(prepared, seed, found_features)
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.part in ("all", "confidence"):
        result["confidence"] = confidence_rows(found)
        result["suspects"] = suspects
    if args.part in ("all", "features"):
        result["features"] = [{"task": t, "k": k, "recipe": r, "macro_f1": float(np.mean(v)), "draws": len(v)}
                              for (t, k, r), v in found_features.items()]
        result["speed_images_per_s"] = backbone_speed((LITE0.name,) if args.no_lite2 else (LITE0.name, LITE2.name))
        result["cost"] = costs(result["speed_images_per_s"])
    result[f"load_average_end_{args.part}"] = os.getloadavg()
    result[f"seconds_{args.part}"] = time.perf_counter() - started
    OUT.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps({"part": args.part, "tasks": args.tasks, **result}, indent=1))
    metrics.save_outcomes(plots, partial.with_suffix(".npz"))
    from bench.real_images.report import merge_and_write

    merge_and_write()
