"""Open-set confidence recipes on cached Lite0 crop features: figures at 70 and the oracle ranking.

    PYTHONPATH=src nice -n 10 .venv/bin/python -m bench.real_images.openset_sweep \\
        --tasks objects:5,10 logos:5 scenes:5,20 digits:20,100 --seeds 3

For each task, training size and recipe (recipes.py; means over the seeded draws): the silent-error rate, the
share of right answers at ≥ 70, the share of never-seen images at ≥ 70, ECE, and three oracle figures: the
share of right answers the best single threshold keeps at ≤ 5 % silent errors on the whole stream, on its
closed part alone (known test images only: limited by confusions between known labels) and on its open part
alone (right answers and never-seen images: limited by how well the score tells never-seen kinds apart); and the
silent-error rate of the threshold that keeps 80 % of the right answers. The
target of issue 13 (≤ 5 % silent with ≥ 80 % of right answers confident) is reachable only where the whole-stream
oracle is ≥ 80 %. Prints Markdown tables (README.md, "Open-set confidence: new signals").

`--negatives`: the product after N None-of-the-Above answers (its hidden class), on the same draws per backbone
(`--backbones lite0 lite2 lite0+lite2`) and view (`--views crop letterbox crop+letterbox crop+flip+letterbox`)
(README.md, "The product after N None-of-the-Above answers" and "Lite2 and combinations under the hidden class").
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from bench.real_images import metrics
from bench.real_images.data import OUT, TASKS, Item, Task
from bench.real_images.features import VIEW_NAMES
from bench.real_images.recipes import Recipe, design_of, predict
from bench.real_images.run import PRODUCT, Prepared, draw, prepare, seeded_draws

from labelloop.modeling import training
from labelloop.modeling.backbone import LITE0, LITE2, Variant

RAW = ("knn", "rel_knn", "imagenet", "rel_imagenet", "rel_logits", "rel_mid")
RAW_NAMES = {"knn": "nearest neighbour", "rel_knn": "relative nearest neighbour",
             "imagenet": "ImageNet distribution (nearest)", "rel_imagenet": "relative ImageNet distribution",
             "rel_logits": "relative ImageNet logits", "rel_mid": "relative mid-level features"}
CEILING = "ceiling: softmax + all scores, fitted on the test stream itself (not a recipe)"
RECIPES = (
    Recipe("softmax", None),
    *(Recipe(f"{RAW_NAMES[name]}, score alone (ranking only)", name, "raw") for name in RAW),
    Recipe(PRODUCT, "current"),
    Recipe("relative nearest neighbour, contrast + coverage", "rel_knn", "coverage"),
    Recipe("ImageNet distribution (nearest), contrast + coverage", "imagenet", "coverage"),
    Recipe("relative ImageNet distribution, contrast + coverage", "rel_imagenet", "coverage"),
    Recipe("relative ImageNet logits, contrast + coverage", "rel_logits", "coverage"),
    Recipe("held-out labels, nearest neighbour", "knn", "held-out"),
    Recipe("held-out labels, relative nearest neighbour", "rel_knn", "held-out"),
    Recipe("held-out labels, relative NN + relative ImageNet", "rel_knn+rel_imagenet", "held-out"),
    Recipe("held-out labels, all signals", "knn+rel_knn+imagenet+rel_imagenet+rel_logits", "held-out"),
)
COLUMNS = ("silent_error", "confident", "open_accepted", "ece", "oracle", "oracle_closed", "oracle_open",
           "silent_at_target")
TARGET_KEPT = 0.8  # issue 13: ≥ 80 % of right answers confident …
TARGET_SILENT = 0.05  # … with ≤ 5 % silent errors


def _part(o: metrics.Outcome, keep: np.ndarray) -> metrics.Outcome:
    return metrics.Outcome(o.correct[keep], o.confidence[keep], o.weight[keep], o.is_open[keep])


def silent_at_kept(o: metrics.Outcome, kept: float = TARGET_KEPT) -> float:
    """The silent-error rate of the threshold that keeps `kept` of the right answers (the highest such)."""
    order = np.argsort(-o.confidence, kind="stable")
    right = np.cumsum(o.correct[order])
    if right[-1] == 0:
        return 1.0
    at = int(np.searchsorted(right, kept * right[-1]))  # first prefix holding that many right answers
    chosen = order[:at + 1]
    return float(o.weight[chosen][~o.correct[chosen]].sum() / o.weight[chosen].sum())


def measure(o: metrics.Outcome) -> dict[str, float]:
    """Figures at 70 and the oracle ranking figures of one outcome."""
    return {"silent_error": metrics.silent_error_rate(o), "confident": metrics.confident_share(o),
            "open_accepted": metrics.open_accepted(o), "ece": metrics.ece(o),
            "oracle": metrics.best_confident_share(o),
            "oracle_closed": metrics.best_confident_share(_part(o, ~o.is_open)),
            "oracle_open": metrics.best_confident_share(_part(o, o.is_open | o.correct)),
            "silent_at_target": silent_at_kept(o)}


def _ceiling(x: np.ndarray, eval_y: np.ndarray, pred: np.ndarray, task) -> metrics.Outcome:
    """The best a logistic combination of the signals x could rank, fitted on the evaluated stream itself."""
    from sklearn.linear_model import LogisticRegression

    o = metrics.outcome(eval_y, pred, np.zeros(len(pred)), len(task.labels))
    if o.correct.all() or not o.correct.any():
        return o
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-9)
    fit = LogisticRegression(C=10.0, max_iter=5000).fit(x, o.correct, sample_weight=o.weight)
    return metrics.Outcome(o.correct, fit.predict_proba(x)[:, 1], o.weight, o.is_open)


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means over the seeds, and the per-seed range of the silent-error rate and the confident share."""
    out = {c: float(np.mean([r[c] for r in rows])) for c in COLUMNS} | {"draws": len(rows)}
    for c in ("silent_error", "confident"):
        out[f"{c}_min"], out[f"{c}_max"] = min(r[c] for r in rows), max(r[c] for r in rows)
    return out


def sweep(task_name: str, sizes: list[int], seeds: int, recipes: tuple[Recipe, ...] = RECIPES
          ) -> dict[tuple[int, str], dict[str, float]]:
    """(size, recipe) → mean figures over the seeded draws."""
    found: dict[tuple[int, str], list[dict[str, float]]] = {}
    for d in seeded_draws(task_name, seeds, sizes):
        columns = []
        for recipe in recipes:
            pred, conf = predict(recipe, d.head, d.train, d.y, d.test)
            found.setdefault((d.k, recipe.name), []).append(
                measure(metrics.outcome(d.eval_y, pred, conf, len(d.task.labels))))
            if recipe.score is None or recipe.conversion == "raw":
                columns.append(np.log(np.clip(conf, 1e-6, None)) if recipe.score is None else conf)
        found.setdefault((d.k, CEILING), []).append(
            measure(_ceiling(np.stack(columns, 1), d.eval_y, pred, d.task)))
    return {key: _summary(rows) for key, rows in found.items()}


# ── negatives: the product after the loop has collected N None-of-the-Above answers ─────────────────────

NEGATIVE_COUNTS = (0, 10, 20, 40, 80)
NEVER_SEEN = "never-seen kinds"
SAME_KINDS = "same kinds, other images"
ROUTED = "never-seen kinds, routed negatives"
NEGATIVE_VIEWS = ("crop", "letterbox")
# Test-time augmentation: the mean of the views' L2-normalised embeddings ("flip" is the mirrored crop).
TTA_VIEWS = ("crop+letterbox", "crop+flip+letterbox")
PRODUCT_FIT = "as fitted now"
# Ways of fitting the hidden row (training.add_hidden_class options); "oof": the labels' training images enter
# the offset with their out-of-fold logits (training.out_of_fold_logits) instead of the head's own.
HIDDEN_FITS: dict[str, dict[str, Any]] = {
    PRODUCT_FIT: {},
    "out-of-fold offset": {"oof": True},
    "negatives weigh ½": {"share": 0.5},
    "out-of-fold offset, negatives weigh ½": {"oof": True, "share": 0.5},
    "out-of-fold offset, negatives weigh ¾": {"oof": True, "share": 0.75},
    "out-of-fold offset, negatives weigh ½, penalty × 0.1": {"oof": True, "share": 0.5, "penalty": 0.1},
    "penalty × 0.1": {"penalty": 0.1},
    "penalty × 10": {"penalty": 10.0},
}
RULES = ("product rule", "softmax")
# Backbones the head may sit on: one variant's pooled embedding, or several concatenated (each L2-normalised
# first, so each weighs alike in the head's own L2 normalisation). Cost, Lite0 = 1: Lite2 1.7–2.3.
BACKBONES: dict[str, tuple[Variant, ...]] = {"lite0": (LITE0,), "lite2": (LITE2,), "lite0+lite2": (LITE0, LITE2)}


def open_splits(task: Task, seed: int) -> dict[str, tuple[list[str], list[Item]]]:
    """protocol → (keys of the images None-of-the-Above answers may come from, in draw order; the open-set
    images evaluated). NEVER_SEEN: half the never-seen kinds give the negatives, the other half is evaluated
    (no kind in both). SAME_KINDS (tasks with several images of an open-set kind): a random half of the open-set
    images give the negatives, the other half is evaluated (kinds shared, no image in both)."""
    kinds = sorted({i.label for i in task.open})
    rng = np.random.default_rng([seed, 9])
    trained_kinds = set(rng.permutation(kinds)[:len(kinds) // 2].tolist())
    pool = [i.key for i in task.open if i.label in trained_kinds]
    pool = [pool[j] for j in rng.permutation(len(pool))]
    out = {NEVER_SEEN: (pool, [i for i in task.open if i.label not in trained_kinds])}
    if len(kinds) < len(task.open):
        order = rng.permutation(len(task.open))
        half = len(order) // 2
        out[SAME_KINDS] = ([task.open[j].key for j in order[:half]], [task.open[j] for j in sorted(order[half:])])
    return out


def hidden_fit(head: training.Head, design: training._Design, negatives: np.ndarray, oof: np.ndarray,
               options: dict[str, Any]) -> training.Head:
    """The head with its hidden row fitted on `negatives` as `options` say (unchanged below MIN_NEGATIVES)."""
    if len(negatives) < training.MIN_NEGATIVES:
        return head
    rest = {name: value for name, value in options.items() if name != "oof"}
    return training.add_hidden_class(head, design, list(negatives), known_logits=oof if options.get("oof") else None,
                                     **rest)


def rule_outcomes(head: training.Head, test: np.ndarray, eval_y: np.ndarray, n_labels: int
                  ) -> dict[str, metrics.Outcome]:
    """The product rule (`Head.predict_proba`) and the softmax alone (hidden column dropped after it): the
    answer is the best real label, never "none of the above"."""
    out = {}
    for rule, proba in (("product rule", head.predict_proba(test)),
                        ("softmax", training.visible_softmax(head.logits(test), head.hidden))):
        out[rule] = metrics.outcome(eval_y, proba.argmax(axis=1), proba.max(axis=1), n_labels)
    return out


NN_NEGATIVES = "nearest neighbour, labels against negatives (ranking only)"


def nearest_negative_outcome(head: training.Head, negatives: np.ndarray, test: np.ndarray, eval_y: np.ndarray
                             ) -> metrics.Outcome:
    """A non-linear ranking probe: the head's answer, scored by the cosine to the nearest training image of
    that label minus the cosine to the nearest None-of-the-Above image (as a confidence only its ranking
    means anything: the figures at 70 are not a recipe's)."""
    pred = head.logits(test)[:, :len(head.labels)].argmax(axis=1)
    score = head.nearest_similarity(test)[np.arange(len(test)), pred]
    if len(negatives):
        score = score - (training.l2_normalize(test) @ training.l2_normalize(negatives).T).max(axis=1)
    return metrics.outcome(eval_y, pred, 1.0 / (1.0 + np.exp(-10.0 * score)), len(head.labels))


Key = tuple[str, str, str, int, int, str, str]  # backbone, view, protocol, k, n, hidden fit, rule


def negatives_sweep(task_name: str, sizes: list[int], seeds: int, counts: tuple[int, ...] = NEGATIVE_COUNTS,
                    views: tuple[str, ...] = NEGATIVE_VIEWS, fits: dict[str, dict[str, Any]] = HIDDEN_FITS,
                    backbones: tuple[str, ...] = ("lite0",), negative_views: tuple[str, ...] = ()
                    ) -> dict[Key, dict[str, float]]:
    """The product as it runs in the loop after reviewers answered None of the Above on n images: its head
    (trained on k images per label, labels weighed equally as the server does) plus the hidden class fitted
    on those n images (`training.add_hidden_class`), evaluated on the known test images and on open-set images
    none of the n is (`open_splits`). ROUTED: the n images are drawn only among those the head without
    negatives puts below 70 (the ones a human sees under the seed's routing), from the NEVER_SEEN pool.
    `backbones`: BACKBONES keys, each measured on the same draws. `negative_views`: each of the n images also
    enters the hidden row's fit in these views (train-time augmentation of the negatives; the served view and
    the labels' rows unchanged), reported under the view "<view>, negatives also as <views>"."""
    found: dict[Key, list[dict[str, float]]] = {}
    variants = list(dict.fromkeys(v for name in backbones for v in BACKBONES[name]))
    for seed in range(seeds):
        task = TASKS[task_name](seed)
        extracted = tuple(dict.fromkeys([part for view in views for part in view.split("+")] + list(negative_views)))
        prepared = prepare(task, tuple((v, extracted) for v in variants), open_set=True)
        splits = open_splits(task, seed)
        for backbone in backbones:
            for view in views:
                for k in sizes:
                    extra = [v for v in negative_views if v != view]
                    served = f"{view}, negatives also as " + "+".join(extra) if extra else view
                    embed = _embedder(prepared, backbone, view)
                    embed_negatives = _stacked([embed, *(_embedder(prepared, backbone, v) for v in extra)])
                    _negatives_draw(found, (backbone, served), prepared.task, embed, splits, k, seed, counts, fits,
                                    embed_negatives)
    return {key: _summary(rows) for key, rows in found.items()}


def _embedder(prepared: Prepared, backbone: str, view: str) -> Callable[[list[str]], np.ndarray]:
    """keys → the backbone's embedding under the view (several variants: their L2-normalised concatenation;
    TTA_VIEWS: the mean of each view's L2-normalised embedding)."""
    variants, views = BACKBONES[backbone], view.split("+")

    def one(variant: Variant, keys: list[str]) -> np.ndarray:
        if len(views) == 1:
            return prepared.data(variant.name, view, keys, with_map=False).embedding
        return np.mean([training.l2_normalize(prepared.data(variant.name, v, keys, with_map=False).embedding)
                        for v in views], axis=0)

    def embed(keys: list[str]) -> np.ndarray:
        parts = [one(v, keys) for v in variants]
        return parts[0] if len(parts) == 1 else np.hstack([training.l2_normalize(p) for p in parts])

    return embed


def _stacked(embeds: list[Callable[[list[str]], np.ndarray]]) -> Callable[[list[str]], np.ndarray]:
    """keys → every embedder's rows of them, stacked (each image once per embedder)."""
    return lambda keys: np.vstack([e(keys) for e in embeds])


def _negatives_draw(found: dict[Key, list[dict[str, float]]], served: tuple[str, str], task: Task,
                    embed: Callable[[list[str]], np.ndarray], splits: dict[str, tuple[list[str], list[Item]]],
                    k: int, seed: int, counts: tuple[int, ...], fits: dict[str, dict[str, Any]],
                    embed_negatives: Callable[[list[str]], np.ndarray] | None = None) -> None:
    """One seeded draw at k per label on one (backbone, view): every protocol, count, hidden fit and rule into
    `found`. `embed_negatives`: the None-of-the-Above images' rows of the hidden fit (default: `embed`)."""
    embed_negatives = embed_negatives or embed
    keys, y = draw(task, k, seed)
    design = design_of(embed(keys), y, len(task.labels), balance=True)
    head = training._fit_head(design, task.labels, c_grid=training.DEFAULT_C_GRID, folds=training.DEFAULT_FOLDS,
                              seed=seed, meta={})[0]
    oof = training.out_of_fold_logits(design, len(task.labels), head.meta["C"], head.temperature, seed=seed)
    index = {label: j for j, label in enumerate(task.labels)}
    for protocol, pool, tested in _protocols(splits, head, embed):
        eval_y = np.array([index[i.label] for i in task.test] + [-1] * len(tested))
        test = embed([i.key for i in task.test + tested])
        for n in (n for n in counts if n <= len(pool)):
            negatives = embed_negatives(pool[:n]) if n else np.zeros((0, test.shape[1]))
            for fit_name, options in fits.items():
                fitted = hidden_fit(head, design, negatives, oof, options)
                for rule, o in rule_outcomes(fitted, test, eval_y, len(task.labels)).items():
                    found.setdefault((*served, protocol, k, n, fit_name, rule), []).append(measure(o))
            o = nearest_negative_outcome(head, negatives, test, eval_y)
            found.setdefault((*served, protocol, k, n, PRODUCT_FIT, NN_NEGATIVES), []).append(measure(o))


def _protocols(splits: dict[str, tuple[list[str], list[Item]]], head: training.Head, embed: Callable
               ) -> Iterator[tuple[str, list[str], list[Item]]]:
    """Each protocol's (name, negatives pool, evaluated open-set images), ROUTED added from NEVER_SEEN."""
    for protocol, (pool, tested) in splits.items():
        yield protocol, pool, tested
        if protocol == NEVER_SEEN:
            low = head.predict_proba(embed(pool)).max(axis=1) < metrics.THRESHOLD
            yield ROUTED, [key for key, below in zip(pool, low, strict=True) if below], tested


def print_compact(task_name: str, results: dict[Key, dict[str, float]], fits: tuple[str, ...] = (PRODUCT_FIT,)
                  ) -> None:
    """Per (k, protocol): a row per (view, hidden fit, rule), a column per count; each cell silent-error % /
    right ≥ 70 %, in bold where the mean meets the target (≤ 5 % silent with ≥ 80 % of right answers kept);
    then the ranking: the silent-error % of the threshold that keeps 80 % of the right answers."""
    groups = sorted({(k, protocol) for _, _, protocol, k, _, _, _ in results})
    counts = sorted({n for _, _, _, _, n, _, _ in results})
    served = list(dict.fromkeys((backbone, view) for backbone, view, *_ in results))
    for k, protocol in groups:
        header = "| backbone | view | hidden row | rule | " + " | ".join(f"N={n}" for n in counts) + " |\n" + \
            "|---" * (4 + len(counts)) + "|"
        print(f"\n{task_name} k={k}, {protocol} (silent err % / right ≥ 70 %)\n\n{header}")
        for backbone, view, fit_name, rule in _compact_rows(served, fits, RULES):
            cells = [results.get((backbone, view, protocol, k, n, fit_name, rule)) for n in counts]
            print(f"| {backbone} | {view} | {fit_name} | {rule} | " + " | ".join(map(_cell, cells)) + " |")
        print(f"\n{task_name} k={k}, {protocol}: silent err % at the threshold keeping 80 % of right answers\n\n"
              f"{header}")
        for backbone, view, fit_name, rule in (*_compact_rows(served, fits, RULES),
                                               *_compact_rows(served, (PRODUCT_FIT,), (NN_NEGATIVES,))):
            cells = [results.get((backbone, view, protocol, k, n, fit_name, rule)) for n in counts]
            print(f"| {backbone} | {view} | {fit_name} | {rule} | " + " | ".join(
                "—" if r is None else f"{100 * r['silent_at_target']:.1f}" for r in cells) + " |")


def _compact_rows(served: list[tuple[str, str]], fits: tuple[str, ...], rules: tuple[str, ...]
                  ) -> list[tuple[str, str, str, str]]:
    return [(backbone, view, fit_name, rule) for backbone, view in served for fit_name in fits for rule in rules]


def _cell(r: dict[str, float] | None) -> str:
    if r is None:
        return "—"
    text = f"{100 * r['silent_error']:.1f} / {100 * r['confident']:.1f}"
    return f"**{text}**" if r["silent_error"] <= TARGET_SILENT and r["confident"] >= TARGET_KEPT else text


def print_negatives(task_name: str, results: dict[Key, dict[str, float]]) -> None:
    """One Markdown row per (backbone, view, protocol, k, n, hidden fit, rule)."""
    for (backbone, view, protocol, k, n, fit_name, rule), r in sorted(results.items(), key=lambda item: item[0]):
        print(f"| {task_name} k={k} | {backbone} | {view} | {protocol} | {n} | {fit_name} | {rule} | "
              f"**{100 * r['silent_error']:.1f}** | {100 * r['confident']:.1f} | {100 * r['open_accepted']:.1f} | "
              f"{r['ece']:.3f} | {100 * r['oracle']:.1f} | {100 * r['silent_at_target']:.1f} | "
              f"{100 * r['silent_error_min']:.1f}–{100 * r['silent_error_max']:.1f} / "
              f"{100 * r['confident_min']:.1f}–{100 * r['confident_max']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["objects:5,10", "logos:5", "scenes:5,20", "digits:20,100"],
                        help="TASK:SIZE,SIZE…")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ranking-only", action="store_true", help="only softmax, the scores alone and the ceiling")
    parser.add_argument("--negatives", action="store_true",
                        help="instead: the product after 0/10/20/40/80 None-of-the-Above answers (its hidden class)")
    parser.add_argument("--views", nargs="+", default=list(NEGATIVE_VIEWS), choices=(*NEGATIVE_VIEWS, *TTA_VIEWS),
                        help="--negatives: the served views measured")
    parser.add_argument("--counts", nargs="+", type=int, default=list(NEGATIVE_COUNTS),
                        help="--negatives: None-of-the-Above answers (a count above a draw's pool is left out)")
    parser.add_argument("--fits", nargs="+", choices=list(HIDDEN_FITS), help="--negatives: hidden-row fits (all)")
    parser.add_argument("--negative-views", nargs="+", default=[], choices=list(VIEW_NAMES),
                        help="--negatives: each None-of-the-Above image also enters the hidden row in these views")
    parser.add_argument("--backbones", nargs="+", default=["lite0"], choices=list(BACKBONES),
                        help="--negatives: backbones the head sits on, measured on the same draws")
    parser.add_argument("--summarise", nargs="*", metavar="FIT",
                        help="only print compact tables from the --negatives runs' JSON (for these hidden fits)")
    args = parser.parse_args()
    if args.summarise is not None:
        for path in sorted(OUT.glob(f"openset-negatives-*-seeds{args.seeds}.json")):
            rows = json.loads(path.read_text())
            results = {(r.get("backbone", "lite0"), r["view"], r["protocol"], r["k"], r["n"], r["hidden_fit"],
                        r["rule"]): r for r in rows}
            print_compact("-".join(path.stem.split("-")[2:-1]), results, tuple(args.summarise) or (PRODUCT_FIT,))
        return
    if args.negatives:
        print("| task | backbone | view | protocol | None-of-the-Above answers | hidden row | rule | silent err % | "
              "right ≥ 70 % | never-seen ≥ 70 % | ECE | oracle: all | silent % at 80 % right kept | "
              "per seed: silent / right ≥ 70 |\n" + "|---" * 14 + "|", flush=True)
        for spec in args.tasks:
            name, sizes = spec.split(":")
            fits = {f: HIDDEN_FITS[f] for f in args.fits} if args.fits else HIDDEN_FITS
            results = negatives_sweep(name, [int(k) for k in sizes.split(",")], args.seeds, tuple(args.counts),
                                      tuple(args.views), fits, tuple(args.backbones), tuple(args.negative_views))
            print_negatives(name, results)
            OUT.mkdir(parents=True, exist_ok=True)
            suffix = "" if tuple(args.counts) == NEGATIVE_COUNTS else "-n" + "+".join(map(str, args.counts))
            suffix += "" if args.backbones == ["lite0"] else "-" + ",".join(args.backbones)
            suffix += "" if tuple(args.views) == NEGATIVE_VIEWS else "-" + ",".join(args.views)
            suffix += "-negatives-as-" + "+".join(args.negative_views) if args.negative_views else ""
            (OUT / f"openset-negatives-{name}{suffix}-seeds{args.seeds}.json").write_text(json.dumps(
                [{"backbone": b, "view": v, "protocol": p, "k": k, "n": n, "hidden_fit": f, "rule": r, **figures}
                 for (b, v, p, k, n, f, r), figures in results.items()], indent=1))
        return
    print("| task | recipe | silent err % | right ≥ 70 % | never-seen ≥ 70 % | ECE | oracle: all | closed part | "
          "open part | silent % at 80 % right kept |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for spec in args.tasks:
        name, sizes = spec.split(":")
        started = time.perf_counter()
        recipes = tuple(r for r in RECIPES if not args.ranking_only or r.score is None or r.conversion == "raw")
        results = sweep(name, [int(k) for k in sizes.split(",")], args.seeds, recipes)
        for (k, recipe), r in results.items():
            at70 = ("— | — | — | —" if "ranking only" in recipe or recipe == CEILING else
                    f"**{100 * r['silent_error']:.1f}** | {100 * r['confident']:.1f} | "
                    f"{100 * r['open_accepted']:.1f} | {r['ece']:.3f}")
            print(f"| {name} k={k} | {recipe} | {at70} | {100 * r['oracle']:.1f} | "
                  f"{100 * r['oracle_closed']:.1f} | {100 * r['oracle_open']:.1f} | "
                  f"{100 * r['silent_at_target']:.1f} |", flush=True)
        print(f"<!-- {name}: {time.perf_counter() - started:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
