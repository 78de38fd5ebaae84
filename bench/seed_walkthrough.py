"""The seed's walkthrough on real images, through a real `labelloop serve`, with the default parameters.

    PYTHONPATH=src .venv/bin/python -m bench.seed_walkthrough [--tasks logos objects] [--trials 3]

Per trial, a fresh server and two known labels, as in the seed (amazon_logo / aws_logo): 5 real training images
per label are uploaded to `images_labeled_by_folder/<label>/`, a training check trains v1 (it must pass the F1
gate at the default 0.8 to serve), then

1. every training image is uploaded again to `images_for_detection/` (the seed: "a confidence score of at least
   70, as expected because you're using the same image you used for training");
2. inference images: up to 6 held-out images of the two known labels (logos: the other themes' drawings, often
   only 2–3) and 4 of kinds never trained on (the seed's own inference set had 4 of 10 such images: Whole
   Foods, Amazon Prime, …).

It counts what a user of the seed's product cares about: training images that come back at ≥ 70 with the right
label; inference images answered right and confidently; wrong answers that reach a human (a "Detection" loop
below the threshold or a "Human Sampling" audit) and the **silent errors**: wrong (or never-trained kinds)
auto-accepted with no human loop, and wrong at ≥ 70 whatever the routing. Images come from bench/real_images
(Debian icon themes as logos, Tux Paint's photo stamps as objects: `make bench-data`).
Results: printed, and written to bench/out/seed_walkthrough/results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench.real_images.data import TASKS, Item, Task, missing_sources

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Server, server_env  # noqa: E402
from test_walkthrough import detections_for, put  # noqa: E402

OUT = ROOT / "bench" / "out" / "seed_walkthrough"
PER_LABEL = 5
KNOWN_INFERENCE = 6
OPEN_INFERENCE = 4
THRESHOLD = 70.0


@dataclass
class Trial:
    """Two known labels of a task, their training images, and ten inference images."""

    task: str
    seed: int
    labels: list[str]
    train: list[Item]
    inference: list[Item]


def make_trial(task: Task, seed: int) -> Trial:
    """Two known labels (the trial's seed picks them), 5 training images each, 6 held-out + 4 never-trained."""
    rng = np.random.default_rng(seed)
    candidates = [label for label in task.labels
                  if len(task.pool[label]) >= PER_LABEL and any(i.label == label for i in task.test)]
    labels = sorted(rng.choice(candidates, 2, replace=False).tolist())
    held_out = [item for item in task.test if item.label in labels]
    train = [item for label in labels for item in task.pool[label][:PER_LABEL]]
    chosen = rng.choice(len(held_out), min(KNOWN_INFERENCE, len(held_out)), replace=False)
    known = [held_out[i] for i in sorted(chosen)]
    never = [task.open[i] for i in sorted(rng.choice(len(task.open), OPEN_INFERENCE, replace=False))]
    return Trial(task.name, seed, labels, train, known + never)


def safe_name(item: Item) -> str:
    """An object file name for an item (its key's last parts, path characters replaced)."""
    return "-".join(item.key.split("/")[-2:]).replace(" ", "_") + ".png"


def outcome(event: dict[str, Any], truth: str, known: bool) -> str:
    """One inference image's outcome in the user's words."""
    right = known and event["label"] == truth
    to_human = event["routing_rule"] != "auto-accepted"
    if right:
        return "right, confident" if event["confidence"] >= THRESHOLD else "right, sent to a human"
    return "wrong, caught by a human" if to_human else "wrong, SILENT"


def run_trial(trial: Trial, home: Path) -> dict[str, Any]:
    """One fresh server through the seed's steps; returns the counts and every detection."""
    shutil.rmtree(home, ignore_errors=True)
    server = Server(home=home, env=server_env(LABELLOOP_CACHE_FOLDER=str(OUT / "cache"),
                                               LABELLOOP_LOG_LEVEL="WARNING")).start(timeout=120)
    try:
        api = server.client()
        api.timeout = 300
        for item in trial.train:
            put(api, f"images_labeled_by_folder/{item.label}/{safe_name(item)}", item.load())
        check = server.wait_run(api.post("/training/check").json()["run_id"], timeout=600)
        model = api.get("/models/v1").json() if check["status"] == "SUCCESS" else {}
        result: dict[str, Any] = {"task": trial.task, "seed": trial.seed, "labels": trial.labels,
                                  "v1_status": model.get("status"), "v1_f1": model.get("f1")}
        if model.get("status") != "RUNNING":
            result["why"] = model.get("status_message") or check.get("error")
            return result
        again = {f"images_for_detection/train-{safe_name(i)}": i for i in trial.train}
        for key, item in again.items():
            put(api, key, item.load())
        events = detections_for(api, list(again))
        result["training_images_at_70"] = sum(e["label"] == again[e["object_key"]].label
                                              and e["confidence"] >= THRESHOLD for e in events)
        result["training_confidences"] = sorted(round(e["confidence"], 1) for e in events)
        inference = {f"images_for_detection/new-{safe_name(i)}": i for i in trial.inference}
        for key, item in inference.items():
            put(api, key, item.load())
        rows = []
        for event in detections_for(api, list(inference)):
            item = inference[event["object_key"]]
            known = item.label in trial.labels
            rows.append({"image": item.key, "truth": item.label if known else f"never trained ({item.label})",
                         "label": event["label"], "confidence": round(event["confidence"], 1),
                         "routing": event["routing_rule"], "outcome": outcome(event, item.label, known),
                         "wrong_at_70": (not known or event["label"] != item.label)
                         and event["confidence"] >= THRESHOLD})
        result["inference"] = rows
        result["outcomes"] = dict(Counter(r["outcome"] for r in rows))
        result["wrong_at_70"] = sum(r["wrong_at_70"] for r in rows)
        return result
    finally:
        server.stop()


def report(results: list[dict[str, Any]]) -> str:
    """The Markdown table of every trial and the totals."""
    kinds = ("right, confident", "right, sent to a human", "wrong, caught by a human", "wrong, SILENT")
    lines = ["| task | seed | labels | v1 F1 | training images back at ≥ 70 | " + " | ".join(kinds)
             + " | wrong at ≥ 70 |", "|---" * (7 + len(kinds)) + "|"]
    totals: Counter[str] = Counter()
    for r in results:
        if "inference" not in r:
            lines.append(f"| {r['task']} | {r['seed']} | {', '.join(r['labels'])} | {r['v1_f1'] or 0:.2f} | v1 did not "
                         f"serve: {r.get('why')} |" + " |" * (len(kinds) + 1))
            continue
        counts = [r["outcomes"].get(k, 0) for k in kinds]
        totals.update({**dict(zip(kinds, counts, strict=True)), "train": r["training_images_at_70"],
                       "wrong70": r["wrong_at_70"], "trials": 1})
        lines.append(f"| {r['task']} | {r['seed']} | {', '.join(r['labels'])} | {r['v1_f1']:.2f} | "
                     f"{r['training_images_at_70']} / {2 * PER_LABEL} | "
                     + " | ".join(str(c) for c in counts) + f" | {r['wrong_at_70']} |")
    n = totals["trials"]
    if n:
        lines.append(f"| **all** | {n} trials | | | {totals['train']} / {2 * PER_LABEL * n} | "
                     + " | ".join(str(totals[k]) for k in kinds) + f" | {totals['wrong70']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the trials and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["logos", "objects"], choices=sorted(TASKS))
    parser.add_argument("--trials", type=int, default=3, help="trials (seeds 0 … N-1) per task")
    args = parser.parse_args(argv)
    if missing := missing_sources():
        sys.exit(f"missing image sources: {', '.join(missing)} (run `make bench-data`)")
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.tasks:
        task = TASKS[name](0)
        for seed in range(args.trials):
            started = time.perf_counter()
            trial = make_trial(task, seed)
            results.append(run_trial(trial, OUT / "homes" / f"{name}-{seed}"))
            print(f"{name} seed {seed} ({', '.join(trial.labels)}): {time.perf_counter() - started:.0f} s; "
                  f"{json.dumps({k: v for k, v in results[-1].items() if k != 'inference'})}", flush=True)
            for row in results[-1].get("inference", []):
                print(f"    {row['outcome']:<26} {row['confidence']:5.1f} {row['label']:<24} "
                      f"{row['routing']:<18} truth: {row['truth']}", flush=True)
    table = report(results)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    (OUT / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
