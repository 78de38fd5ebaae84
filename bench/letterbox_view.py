"""The input view of new model versions (issue 13, item 3): the product's head on the letterbox view against
issue 13's reference, scikit-learn's `LogisticRegression()` with its defaults on the raw centre-crop (DESIGN.md's
"center crop 224") embeddings of the same backbone (Lite0), measured in the same run on the same draws.

    PYTHONPATH=src nice -n 10 .venv/bin/python -m bench.letterbox_view [--draws 8] [--tasks animals,food,living,objects]

Real photographs only: the closed-set photo tasks of bench/real_images (Tux Paint photo stamps; licences in
bench/real_images/README.md), each task size k ≤ its closed pool, `draws` seeded draws of the training images
(`bench.real_images.run.draw`: seed 0 the pool's order, the others a seeded draw). Features come from the
benchmark's cache (bench/out/real_images/features, embedded when missing). Rows: the reference, plain logistic
regression on letterbox embeddings, and the product's head (`training._fit_head` as `train_head` fits it) on
crop (every version before Model-Input-View) and on letterbox (what a new version trains and serves on).
Prints macro-F1 per task size, in brackets the difference to the reference in points, and how many columns
are ≥ +1 point (the target).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from bench.real_images import metrics
from bench.real_images.data import TASKS
from bench.real_images.recipes import fit_classifier
from bench.real_images.run import draw, plain_logistic_regression, prepare

from labelloop.modeling.backbone import LITE0

REFERENCE = "plain logistic regression, crop (the reference)"
ROWS = (REFERENCE, "plain logistic regression, letterbox", "product head, crop", "product head, letterbox")
TARGET = 1.0  # points of macro-F1 above the reference (issue 13)


def scores(task_name: str, seed: int) -> dict[tuple[int, str], float]:
    """Macro-F1 of every row at every size of one seeded draw of a task."""
    task = TASKS[task_name](seed)
    prepared = prepare(task, ((LITE0, ("crop", "letterbox")),), closed_only=True)
    index = {label: i for i, label in enumerate(task.labels)}
    test_keys, y_test = [i.key for i in task.test], np.array([index[i.label] for i in task.test])
    found = {}
    for k in task.sizes:
        if k < 2 or k > task.closed_pool:
            continue
        keys, y = draw(task, k, seed)
        x = {view: prepared.data(LITE0.name, view, keys, with_map=False).embedding for view in ("crop", "letterbox")}
        test = {view: prepared.data(LITE0.name, view, test_keys, with_map=False).embedding
                for view in ("crop", "letterbox")}
        for view in ("crop", "letterbox"):
            plain = plain_logistic_regression(x[view], y, test[view])
            head = fit_classifier(x[view], y, task.labels, seed=seed)
            found[(k, f"plain logistic regression, {view}" + (" (the reference)" if view == "crop" else ""))] = (
                metrics.macro_f1(y_test, plain, len(task.labels)))
            found[(k, f"product head, {view}")] = metrics.macro_f1(
                y_test, head.logits(test[view]).argmax(axis=1), len(task.labels))
    return found


def table(results: dict[tuple[str, int, str], list[float]]) -> str:
    """The Markdown table: a column per task size, a row per recipe, Δ in points against the reference."""
    columns = sorted({(t, k) for t, k, _ in results}, key=lambda c: (c[0], c[1]))
    head = "| row | " + " | ".join(f"{t} k={k}" for t, k in columns) + " | mean Δ | columns ≥ +1 |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for row in ROWS:
        cells, deltas = [], []
        for t, k in columns:
            value, reference = np.mean(results[(t, k, row)]), np.mean(results[(t, k, REFERENCE)])
            delta = 100 * (value - reference)
            deltas.append(delta)
            cells.append(f"{value:.3f}" if row == REFERENCE else f"{value:.3f} ({delta:+.1f})")
        summary = ("", "") if row == REFERENCE else (f"{np.mean(deltas):+.1f}",
                                                      f"{sum(d >= TARGET for d in deltas)} of {len(deltas)}")
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {summary[0]} | {summary[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=8, help="seeded draws per task")
    parser.add_argument("--tasks", default="animals,food,living,objects")
    args = parser.parse_args()
    started, load = time.perf_counter(), os.getloadavg()
    results: dict[tuple[str, int, str], list[float]] = {}
    for name in args.tasks.split(","):
        for seed in range(args.draws):
            for (k, row), value in scores(name, seed).items():
                results.setdefault((name, k, row), []).append(value)
            print(f"{name} draw {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\nMacro-F1 over {args.draws} draws (Lite0; in brackets: points above the reference)\n")
    print(table(results))
    print(f"\nload average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
