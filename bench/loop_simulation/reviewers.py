"""Reviewers who err: one reviewer per task, three consolidated, or one with gold-based pausing, at equal budgets.

    .venv/bin/python -m bench.loop_simulation.reviewers [--task scenes] [--seeds 0 1 2] [--budgets 300 600] \
        [--gold-rate 10] [--gold-accuracy 70] [--gold-answers 8] [--publish]

Data: the real-image benchmark's tasks (default **scenes**: crops of 18 real photographs; the held-out crops come
from the part of each photo no training crop touches), without the open set. v1 trains on 2 crops per label;
the rest of the pool arrives in seeded random order, in batches of 100. Each detection below
Minimum-Label-Detection-Confidence (70, the seed's rule) is a review task; a new version trains after a batch
that brought ≥ Minimum-Untrained-Images (10) new labels. It runs in one process, as ``silent.py`` does:
``train_head`` trains each version with the product's defaults and ``Head.predict_proba`` gives confidences.

The crowd: five reviewers; four give a wrong label (another known label, uniformly) on 15 % of their answers,
one careless reviewer on 40 %. Tasks go to active reviewers at random. Arms, each stopped when its human
answers reach the budget (every answer counts: the three of a consolidated task, gold answers):

* **1 reviewer**: one answer per task; it becomes the label.
* **3 reviewers, consolidated**: three distinct reviewers; the majority label, ties to the reviewer with the
  better agreement record; below 60 % agreement one more reviewer is asked (the task template's defaults, as
  ``review.service.consolidate`` does).
* **1 reviewer + gold pausing**: one answer per task, plus gold tasks (the seed images, known labels) at
  ``--gold-rate`` % of each reviewer's tasks, never the same one twice; a reviewer whose gold accuracy falls
  below ``--gold-accuracy`` % with ≥ ``--gold-answers`` gold answers is paused (Minimum-Gold-Accuracy).
* **truthful reviewer** (reference): one answer per task, never wrong.

Per arm and budget: held-out macro-F1 of the last version, human answers spent, tasks labeled, wrong labels in
the training data, reviewers paused. Outputs: bench/out/loop_simulation/reviewers-TASK-seeds-S.json and
reviewers-TASK.md (--merge combines the JSON of runs made seed by seed); --publish copies the table to
docs/loop_simulation_reviewers.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from bench.real_images.data import Item

from .run import DOCS, OUT
from .silent import World, world

THRESHOLD = 70.0
MIN_UNTRAINED = 10
BATCH = 100
MIN_AGREEMENT = 0.6  # the task template's default
MAX_REVIEWERS = 9
ERROR_RATES = (0.15, 0.15, 0.15, 0.15, 0.40)  # the last one is careless
ARMS = ("1 reviewer", "3 reviewers, consolidated", "1 reviewer + gold pausing", "truthful reviewer (reference)")


@dataclass
class Crowd:
    """The reviewers, their record (agreement with final labels, gold answers) and who is paused."""

    labels: list[str]
    errors: tuple[float, ...]
    rng: np.random.Generator
    agreed: Counter = field(default_factory=Counter)
    decided: Counter = field(default_factory=Counter)
    gold_right: Counter = field(default_factory=Counter)
    gold_seen: dict[int, set[str]] = field(default_factory=dict)
    tasks: Counter = field(default_factory=Counter)
    paused: set[int] = field(default_factory=set)
    answers: int = 0

    def active(self) -> list[int]:
        return [r for r in range(len(self.errors)) if r not in self.paused]

    def answer(self, reviewer: int, truth: str) -> str:
        """``reviewer``'s answer about an image of ``truth``: wrong with their error rate."""
        self.answers += 1
        self.tasks[reviewer] += 1
        if self.rng.random() >= self.errors[reviewer]:
            return truth
        others = [label for label in self.labels if label != truth]
        return others[int(self.rng.integers(len(others)))]

    def reliability(self, reviewer: int) -> float:
        return (self.agreed[reviewer] + 1) / (self.decided[reviewer] + 2)

    def consolidate(self, given: dict[int, str]) -> tuple[str, float]:
        """Majority label, a tie to the label whose reviewers are more reliable (as the product does)."""
        counts = Counter(given.values())
        top = max(counts.values())
        tied = sorted(label for label, count in counts.items() if count == top)
        weight = {label: sum(self.reliability(r) for r, a in given.items() if a == label) for label in tied}
        tied.sort(key=lambda label: -weight[label])
        return tied[0], top / len(given)


def label_task(crowd: Crowd, arm: str, truth: str, gold: list[Item], settings: argparse.Namespace) -> str | None:
    """The label one review task ends with under ``arm`` (``None``: nobody left to answer)."""
    active = crowd.active()
    if not active:
        return None
    if arm == ARMS[3]:
        crowd.answers += 1
        return truth
    if arm != ARMS[1]:
        reviewer = active[int(crowd.rng.integers(len(active)))]
        if arm == ARMS[2]:
            _maybe_gold(crowd, reviewer, gold, settings)
            if reviewer in crowd.paused:
                return label_task(crowd, arm, truth, gold, settings)
        return crowd.answer(reviewer, truth)
    order = [active[i] for i in crowd.rng.permutation(len(active))]
    given = {r: crowd.answer(r, truth) for r in order[:3]}
    label, share = crowd.consolidate(given)
    while share < MIN_AGREEMENT and len(given) < min(MAX_REVIEWERS, len(order)):
        reviewer = order[len(given)]
        given[reviewer] = crowd.answer(reviewer, truth)
        label, share = crowd.consolidate(given)
    for reviewer, answer in given.items():
        crowd.decided[reviewer] += 1
        crowd.agreed[reviewer] += answer == label
    return label


def _maybe_gold(crowd: Crowd, reviewer: int, gold: list[Item], settings: argparse.Namespace) -> None:
    """Serve ``reviewer`` a gold task when it is due (the product's rule: the chance that keeps their gold share
    at the rate), score it, and pause them below the accuracy floor."""
    seen = crowd.gold_seen.setdefault(reviewer, set())
    served = len(seen)
    due = settings.gold_rate / 100 * (crowd.tasks[reviewer] + 1) - served
    fresh = [item for item in gold if item.key not in seen]
    if not fresh or crowd.rng.random() >= due:
        return
    item = fresh[int(crowd.rng.integers(len(fresh)))]
    seen.add(item.key)
    crowd.gold_right[reviewer] += crowd.answer(reviewer, item.label) == item.label
    if (len(seen) >= settings.gold_answers
            and crowd.gold_right[reviewer] / len(seen) < settings.gold_accuracy / 100):
        crowd.paused.add(reviewer)


def run_arm(w: World, arm: str, seed: int, budget: int, settings: argparse.Namespace) -> dict[str, Any]:
    """One arm over one seeded stream until its answers reach ``budget`` (or the stream ends)."""
    rng = np.random.default_rng(seed)
    seeds, rest = w.first_labeled(rng)
    stream = [rest[i] for i in rng.permutation(len(rest))]
    crowd = Crowd(list(w.labels), ERROR_RATES, np.random.default_rng(seed * 1000 + ARMS.index(arm)))
    labeled, head, untrained, wrong, tasks = list(seeds), w.train(seeds, seed), 0, 0, 0
    for start in range(0, len(stream), BATCH):
        batch = stream[start:start + BATCH]
        confidence = head.predict_proba(w.x(batch)).max(1) * 100
        for item, sure in zip(batch, confidence, strict=True):
            if sure >= THRESHOLD or crowd.answers >= budget:
                continue
            label = label_task(crowd, arm, item.label, seeds, settings)
            if label is None:
                break
            tasks += 1
            labeled.append(replace(item, label=label))
            wrong += label != item.label
            untrained += 1
        if untrained >= MIN_UNTRAINED:
            head, untrained = w.train(labeled, seed), 0
        if crowd.answers >= budget:
            break
    return {"arm": arm, "seed": seed, "budget": budget, "macro_f1": w.macro_f1(head), "answers": crowd.answers,
            "tasks": tasks, "wrong_labels": wrong, "paused": sorted(crowd.paused),
            "careless_paused": len(ERROR_RATES) - 1 in crowd.paused}


def summary(rows: list[dict[str, Any]], arm: str, budget: int) -> dict[str, Any]:
    """One arm at one budget, medians over seeds."""
    mine = [r for r in rows if r["arm"] == arm and r["budget"] == budget]
    return {"arm": arm, "budget": budget, "seeds": len(mine),
            **{key: float(np.median([r[key] for r in mine])) for key in ("macro_f1", "answers", "tasks",
                                                                          "wrong_labels")},
            "f1_range": (min(r["macro_f1"] for r in mine), max(r["macro_f1"] for r in mine)),
            "careless_paused": sum(r["careless_paused"] for r in mine),
            "careful_paused": sum(len([p for p in r["paused"] if p != len(ERROR_RATES) - 1]) for r in mine)}


def table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"{result['task']} task, threshold 70, reviewers wrong on 15 % ×4 and 40 % ×1, seeds {result['seeds']}; "
             f"gold: {s['gold_rate']:g} % of tasks, pause below {s['gold_accuracy']:g} % with ≥ {s['gold_answers']} "
             "gold answers; medians over seeds (F1 range in brackets).", "",
             "| budget | arm | held-out macro-F1 | human answers spent | tasks labeled | wrong labels in training "
             "| careless paused (seeds) | careful paused (all seeds) |", "|---|---|---|---|---|---|---|---|"]
    for row in result["summary"]:
        low, high = row["f1_range"]
        paused = f"{row['careless_paused']} of {row['seeds']}" if row["arm"] == ARMS[2] else "—"
        careful = str(row["careful_paused"]) if row["arm"] == ARMS[2] else "—"
        lines.append(f"| {row['budget']} | {row['arm']} | {row['macro_f1']:.3f} ({low:.3f}–{high:.3f}) "
                     f"| {row['answers']:.0f} | {row['tasks']:.0f} | {row['wrong_labels']:.0f} | {paused} "
                     f"| {careful} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["scenes", "logos", "objects"], default="scenes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[300, 600])
    parser.add_argument("--gold-rate", type=float, default=10.0, help="percent of each reviewer's tasks")
    parser.add_argument("--gold-accuracy", type=float, default=70.0, help="pause below this percent")
    parser.add_argument("--gold-answers", type=int, default=8, help="gold answers before pausing can happen")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="combine earlier runs' JSON files (e.g. one per seed) instead of running")
    parser.add_argument("--publish", action="store_true")
    settings = parser.parse_args()
    if settings.merge:
        rows = [row for path in settings.merge for row in json.loads(Path(path).read_text())["rows"]]
        settings.seeds = sorted({row["seed"] for row in rows})
        settings.budgets = sorted({row["budget"] for row in rows})
        settings.arms = [arm for arm in ARMS if any(row["arm"] == arm for row in rows)]
        return write(settings, rows)
    w = world(settings.task)
    rows = []
    for budget in settings.budgets:
        for seed in settings.seeds:
            for arm in settings.arms:
                started = time.perf_counter()
                rows.append(run_arm(w, arm, seed, budget, settings))
                print(f"budget {budget} seed {seed} {arm}: F1 {rows[-1]['macro_f1']:.3f}, {rows[-1]['answers']} "
                      f"answers in {time.perf_counter() - started:.0f} s", flush=True)
    write(settings, rows)


def write(settings: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """The JSON (named after the seeds), the table, and with --publish the table in docs/."""
    result = {"task": settings.task, "seeds": settings.seeds,
              "settings": {k: getattr(settings, k) for k in ("gold_rate", "gold_accuracy", "gold_answers")},
              "summary": [summary(rows, arm, budget) for budget in settings.budgets for arm in settings.arms],
              "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = "-".join(str(seed) for seed in settings.seeds)
    (OUT / f"reviewers-{settings.task}-seeds-{seeds}.json").write_text(json.dumps(result, indent=1))
    (OUT / f"reviewers-{settings.task}.md").write_text(table(result))
    print(table(result))
    if settings.publish:
        shutil.copy(OUT / f"reviewers-{settings.task}.md", DOCS / "loop_simulation_reviewers.md")


if __name__ == "__main__":
    main()
