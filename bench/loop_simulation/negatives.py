"""Learn-From-None-Of-The-Above on real photographs: the loop with and without the hidden class.

    .venv/bin/python -m bench.loop_simulation.negatives [--task objects|scenes|logos] [--seeds 0 1 2] \
        [--batch-size 20]

The data and the stream are those of `silent.py` (its `World`: the real-image benchmark's tasks, v1 trained on 2
images per label, the rest of the pool and the open set in seeded random order, in batches; held-out images score
macro-F1). Routing is the seed's rule: a detection below Minimum-Label-Detection-Confidence (70) goes to a human,
who answers truthfully (None of the Above for an image of a kind never trained on); the rest are auto-accepted.
`train_head` trains each version with the product's defaults (balanced labels, final model on all images); a new
version trains after a batch that brought ≥ Minimum-Untrained-Images (10) new trainable images. The two arms
differ in one thing: with the option on, a None of the Above answer is a trainable image of the hidden class
(`training.NEGATIVE_LABEL`), as the server's `dataset.negative_objects` makes it (and counts toward the 10).

Per arm: the true silent-error rate of the auto-accepted detections (an open-set image auto-accepted is always
wrong), the open-set images auto-accepted, the share of known-kind images auto-accepted and right, human answers,
the last version's macro-F1 and that of a version trained on every answer given (the arms train a different
number of versions, so the last one may miss the last answers); medians over seeds. Outputs
bench/out/loop_simulation/negatives-TASK.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .run import OUT
from .silent import MIN_UNTRAINED, TASKS, THRESHOLD, World, world

ARMS = {"None of the Above adds nothing (seed)": False, "Learn-From-None-Of-The-Above": True}


@dataclass
class Tally:
    """One arm over one seeded stream."""

    arm: str
    seed: int
    detections: int = 0
    auto_accepted: int = 0
    silent_errors: int = 0
    open_set: int = 0
    open_set_accepted: int = 0
    known: int = 0
    known_accepted_right: int = 0
    human_answers: int = 0
    negatives: int = 0
    versions: int = 1
    final_macro_f1: float = 0.0
    all_answers_macro_f1: float = 0.0  # a version trained on every answer given (the last batch's included)

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "true_rate": 100 * self.silent_errors / self.auto_accepted if self.auto_accepted
                else 0.0, "open_accepted_share": self.open_set_accepted / max(1, self.open_set),
                "known_confident_share": self.known_accepted_right / max(1, self.known)}


def run_arm(w: World, arm: str, learn: bool, seed: int, batch_size: int) -> Tally:
    """The seed's routing over one seeded stream (the same draws as silent.py's arms)."""
    rng = np.random.default_rng(seed)
    labeled, rest = w.first_labeled(rng)
    rest = rest + w.open_set
    stream = [rest[i] for i in rng.permutation(len(rest))]
    known, negatives, untrained = set(w.labels), [], 0
    head, tally = w.train(labeled, seed, negatives), Tally(arm, seed)
    for start in range(0, len(stream), batch_size):
        batch = stream[start:start + batch_size]
        for item, p in zip(batch, head.predict_proba(w.x(batch)), strict=True):
            label, confidence = head.labels[int(p.argmax())], float(100 * p.max())
            is_known = item.label in known
            tally.detections += 1
            tally.open_set += not is_known
            tally.known += is_known
            if confidence < THRESHOLD:
                tally.human_answers += 1
                if is_known:
                    labeled.append(item)
                    untrained += 1
                elif learn:
                    negatives.append(item)
                    untrained += 1
                continue
            tally.auto_accepted += 1
            tally.silent_errors += item.label != label
            tally.open_set_accepted += not is_known
            tally.known_accepted_right += item.label == label
        if untrained >= MIN_UNTRAINED:
            head, untrained = w.train(labeled, seed, negatives), 0
            tally.versions += 1
    tally.negatives, tally.final_macro_f1 = len(negatives), w.macro_f1(head)
    tally.all_answers_macro_f1 = w.macro_f1(w.train(labeled, seed, negatives)) if untrained else tally.final_macro_f1
    return tally


def summary(rows: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """One arm over every seed: medians, and the range of the silent-error rate."""
    mine = [r for r in rows if r["arm"] == arm]
    rates = [r["true_rate"] for r in mine]
    return {"arm": arm, "seeds": len(mine), "true_rate_range": [min(rates), max(rates)],
            **{key: float(np.median([r[key] for r in mine]))
               for key in ("true_rate", "open_accepted_share", "known_confident_share", "human_answers",
                           "negatives", "versions", "final_macro_f1", "all_answers_macro_f1")}}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['task']} task ({result['open_share']:.0%} of the stream open-set), the seed's rule (threshold "
             f"{THRESHOLD:.0f}), seeds {result['seeds']}, batch {result['batch_size']}; medians over seeds.", "",
             "| None of the Above answers | true silent-error rate of auto-accepted (min–max) | open-set images "
             "auto-accepted | known-kind images auto-accepted and right | human answers | hidden-class images "
             "| versions | final macro-F1 | macro-F1 trained on every answer |", "|---" * 9 + "|"]
    for s in result["summary"]:
        low, high = s["true_rate_range"]
        lines.append(f"| {s['arm']} | {s['true_rate']:.1f} % ({low:.1f}–{high:.1f}) | {s['open_accepted_share']:.1%} "
                     f"| {s['known_confident_share']:.1%} | {s['human_answers']:.0f} | {s['negatives']:.0f} "
                     f"| {s['versions']:.0f} | {s['final_macro_f1']:.3f} | {s['all_answers_macro_f1']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), default="objects")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args()
    w = world(args.task)
    rows = []
    for seed in args.seeds:
        for arm, learn in ARMS.items():
            started = time.perf_counter()
            tally = run_arm(w, arm, learn, seed, args.batch_size)
            rows.append(tally.row())
            print(f"seed {seed} {arm}: {tally.versions} versions, {rows[-1]['true_rate']:.1f} % silent, "
                  f"F1 {tally.final_macro_f1:.3f} in {time.perf_counter() - started:.0f} s", flush=True)
    result = {"task": args.task, "seeds": args.seeds, "batch_size": args.batch_size,
              "open_share": len(w.open_set) / (len(w.pool) - 2 * len(w.labels) + len(w.open_set)),
              "summary": [summary(rows, arm) for arm in ARMS], "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"negatives-{args.task}"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
    (OUT / f"{name}.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
