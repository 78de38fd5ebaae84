"""Sweep of the coverage constraint's quantile and floor on one task (cached Lite0 crop features).

    PYTHONPATH=src nice -n 10 .venv/bin/python -m bench.real_images.coverage_sweep objects 3 5 10

Arguments: task name, number of seeded draws, training sizes. Prints, per size and recipe, the silent-error
rate, the share of right answers at ≥ 70 and the share of never-seen images at ≥ 70 (means over the draws),
for softmax alone, the contrast fit and the contrast fit with coverage (quantile, floor) pairs. The recipes
are the benchmark's own (recipes.py); figures in README.md, "The coverage constraint".
"""

from __future__ import annotations

import sys

import numpy as np
from bench.real_images import metrics
from bench.real_images.recipes import Recipe, predict
from bench.real_images.run import seeded_draws

COVERAGES = ((0.1, 0.9), (0.5, 0.9), (0.75, 0.9), (0.5, 0.8))


def sweep(task_name: str, seeds: int, sizes: list[int]) -> dict[tuple[int, str], np.ndarray]:
    """(size, recipe) → mean [silent-error rate, confident share, open accepted] over the seeds."""
    recipes = [Recipe("softmax", None), Recipe("contrast", "knn", "contrast")] + [
        Recipe(f"coverage q {q} floor {f}", "knn", "coverage", coverage=(q, f)) for q, f in COVERAGES]
    found: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    for d in seeded_draws(task_name, seeds, sizes):
        for recipe in recipes:
            pred, conf = predict(recipe, d.head, d.train, d.y, d.test)
            o = metrics.outcome(d.eval_y, pred, conf, len(d.task.labels))
            found.setdefault((d.k, recipe.name), []).append(
                (metrics.silent_error_rate(o), metrics.confident_share(o), metrics.open_accepted(o)))
    return {key: np.mean(rows, axis=0) for key, rows in found.items()}


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    task_name, seeds, sizes = sys.argv[1], int(sys.argv[2]), [int(k) for k in sys.argv[3:]]
    for (k, name), (silent, confident, opened) in sorted(sweep(task_name, seeds, sizes).items()):
        print(f"{task_name} k={k:3d} {name:26s} silent {100 * silent:5.1f} % · right ≥ 70 {100 * confident:5.1f} % "
              f"· never-seen ≥ 70 {100 * opened:5.1f} %")


if __name__ == "__main__":
    main()
