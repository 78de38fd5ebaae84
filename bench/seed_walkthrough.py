"""The seed's walkthrough on real images, through a real `labelloop serve`, with the default parameters.

    PYTHONPATH=src .venv/bin/python -m bench.seed_walkthrough [--tasks logos objects] [--trials 3] [--input-view crop]

Per trial, a fresh server and two known labels, as in the seed (amazon_logo / aws_logo): 5 real training images
per label are uploaded to `images_labeled_by_folder/<label>/`, a training check trains v1 (it must pass the F1
gate at the default 0.8 to serve), then

1. every training image is uploaded again to `images_for_detection/` (the seed: "a confidence score of at least
   70, as expected because you're using the same image you used for training");
2. inference images: up to 6 held-out images of the two known labels (logos: the other themes' drawings, often
   only 2–3) and 4 of kinds never trained on (the seed's own inference set had 4 of 10 such images: Whole
   Foods, Amazon Prime, …).

3. then the seed's steps 5–6: every open human loop is answered as a truthful reviewer would (the image's label,
   or None of the Above for a kind never trained on), a training check trains v2 (Minimum-Untrained-Images set
   to 1 so that the few answers suffice), and the same inference images are uploaded again, with 4 more images of
   kinds never trained on: the issue saw the same wrong answers come back *more* confident from v2.
   `--learn-from-none-of-the-above false` runs the same with that parameter off (the seed's behaviour).

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

from labelloop.modeling.images import DEFAULT_INPUT_VIEW, INPUT_VIEWS

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
    fresh: list[Item]  # more never-trained kinds, for v2


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
    drawn = sorted(rng.choice(len(task.open), OPEN_INFERENCE, replace=False))
    never = [task.open[i] for i in drawn]
    rest = [i for i in range(len(task.open)) if i not in set(drawn)]  # drawn after, so v1's draws stay the same
    fresh = [task.open[i] for i in sorted(rng.choice(rest, OPEN_INFERENCE, replace=False))]
    return Trial(task.name, seed, labels, train, known + never, fresh)


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


def set_parameter(server: Server, api: Any, name: str, value: str) -> None:
    """Set a parameter and wait for its run."""
    response = api.put(f"/parameters/{name}", json={"value": value})
    response.raise_for_status()
    if response.json().get("run_id"):  # none when the value was already set
        server.wait_run(response.json()["run_id"])


def answer_open_loops(server: Server, api: Any, truth: dict[str, str | None]) -> int:
    """Answer every open human loop on one of `truth`'s keys as a truthful reviewer: the image's label, or None of
    the Above (None) for a kind never trained on; returns how many were answered."""
    runs = []
    for loop in api.get("/human-loops", params={"status": "InProgress", "limit": 5000}).json():
        if loop["object_key"] in truth:
            label = truth[loop["object_key"]] or "None of the Above"
            response = api.post(f"/human-loops/{loop['name']}/answer", json={"label": label})
            response.raise_for_status()
            runs.append(response.json()["run_id"])
    for run_id in runs:
        server.wait_run(run_id, timeout=120)
    return len(runs)


def wrong_at_70(api: Any, items: dict[str, Item], labels: list[str]) -> tuple[int, list[str]]:
    """Detections of `items` (uploaded already): how many are wrong (or a never-trained kind) at ≥ 70, and the
    model versions that answered."""
    events = detections_for(api, list(items))
    wrong = sum((items[e["object_key"]].label not in labels or e["label"] != items[e["object_key"]].label)
                and e["confidence"] >= THRESHOLD for e in events)
    return wrong, sorted({e["model_version"] for e in events})


def retrain_and_detect_again(server: Server, api: Any, trial: Trial, truth: dict[str, str | None],
                             inference: dict[str, Item]) -> dict[str, Any]:
    """The seed's steps 5–6 and the issue's check: answer the loops, train v2, detect the same images again and
    4 more never-trained ones."""
    result: dict[str, Any] = {"answered": answer_open_loops(server, api, truth)}
    set_parameter(server, api, "Minimum-Untrained-Images", "1")
    check = server.wait_run(api.post("/training/check").json()["run_id"], timeout=600)
    model = api.get("/models/v2").json() if check["status"] == "SUCCESS" else {}
    result |= {"v2_status": model.get("status"), "v2_f1": model.get("f1")}
    if model.get("status") != "RUNNING":
        result["v2_why"] = model.get("status_message") or check.get("error") or check.get("output")
        return result
    same = {key.replace("/new-", "/v2-"): item for key, item in inference.items()}
    fresh = {f"images_for_detection/v2-fresh-{safe_name(i)}": i for i in trial.fresh}
    for key, item in (same | fresh).items():
        put(api, key, item.load())
    result["v2_wrong_at_70_same"], versions = wrong_at_70(api, same, trial.labels)
    result["v2_wrong_at_70_fresh"], more = wrong_at_70(api, fresh, trial.labels)
    result["v2_answered_by"] = sorted(set(versions) | set(more))
    return result


def run_trial(trial: Trial, home: Path, learn_from_none: str = "true",
              input_view: str = DEFAULT_INPUT_VIEW) -> dict[str, Any]:
    """One fresh server through the seed's steps; returns the counts and every detection."""
    shutil.rmtree(home, ignore_errors=True)
    server = Server(home=home, env=server_env(LABELLOOP_CACHE_FOLDER=str(OUT / "cache"), LABELLOOP_UNDO_SECONDS="0",
                                               LABELLOOP_LOG_LEVEL="WARNING")).start(timeout=120)
    try:
        api = server.client()
        api.timeout = 300
        set_parameter(server, api, "Learn-From-None-Of-The-Above", learn_from_none)
        set_parameter(server, api, "Model-Input-View", input_view)
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
        truth = {key: item.label for key, item in again.items()}
        truth |= {key: item.label if item.label in trial.labels else None for key, item in inference.items()}
        result |= retrain_and_detect_again(server, api, trial, truth, inference)
        return result
    finally:
        server.stop()


def report(results: list[dict[str, Any]]) -> str:
    """The Markdown table of every trial and the totals."""
    kinds = ("right, confident", "right, sent to a human", "wrong, caught by a human", "wrong, SILENT")
    lines = ["| task | seed | labels | v1 F1 | training images back at ≥ 70 | " + " | ".join(kinds)
             + " | wrong at ≥ 70 | v2 | v2: same images wrong at ≥ 70 | v2: 4 more never-trained at ≥ 70 |",
             "|---" * (10 + len(kinds)) + "|"]
    totals: Counter[str] = Counter()
    for r in results:
        if "inference" not in r:
            lines.append(f"| {r['task']} | {r['seed']} | {', '.join(r['labels'])} | {r['v1_f1'] or 0:.2f} | v1 did not "
                         f"serve: {r.get('why')} |" + " |" * (len(kinds) + 4))
            continue
        counts = [r["outcomes"].get(k, 0) for k in kinds]
        v2 = r.get("v2_status") == "RUNNING"
        totals.update({**dict(zip(kinds, counts, strict=True)), "train": r["training_images_at_70"],
                       "wrong70": r["wrong_at_70"], "trials": 1, "v2": int(v2),
                       "v1wrong70_v2": r["wrong_at_70"] if v2 else 0,
                       "same": r.get("v2_wrong_at_70_same", 0), "fresh": r.get("v2_wrong_at_70_fresh", 0)})
        v2_cells = (f"serves (F1 {r['v2_f1']:.2f}) | {r['v2_wrong_at_70_same']} | {r['v2_wrong_at_70_fresh']} / "
                    f"{OPEN_INFERENCE}" if v2 else f"{r.get('v2_status')}: {r.get('v2_why')} | |")
        lines.append(f"| {r['task']} | {r['seed']} | {', '.join(r['labels'])} | {r['v1_f1']:.2f} | "
                     f"{r['training_images_at_70']} / {2 * PER_LABEL} | "
                     + " | ".join(str(c) for c in counts) + f" | {r['wrong_at_70']} | {v2_cells} |")
    n = totals["trials"]
    if n:
        lines.append(f"| **all** | {n} trials | | | {totals['train']} / {2 * PER_LABEL * n} | "
                     + " | ".join(str(totals[k]) for k in kinds) + f" | {totals['wrong70']} | {totals['v2']} serve "
                     f"(v1 had {totals['v1wrong70_v2']} wrong at ≥ 70 there) | {totals['same']} | "
                     f"{totals['fresh']} / {OPEN_INFERENCE * totals['v2']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the trials and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["logos", "objects"], choices=sorted(TASKS))
    parser.add_argument("--trials", type=int, default=3, help="trials (seeds 0 … N-1) per task")
    parser.add_argument("--learn-from-none-of-the-above", choices=["true", "false"], default="true",
                        help="the parameter's value in every trial (default: the product's default, true)")
    parser.add_argument("--input-view", choices=sorted(INPUT_VIEWS), default=DEFAULT_INPUT_VIEW,
                        help=f"Model-Input-View in every trial (default: the product's default, {DEFAULT_INPUT_VIEW}; "
                        "crop: the centre crop of every version before the letterbox views)")
    args = parser.parse_args(argv)
    if missing := missing_sources():
        sys.exit(f"missing image sources: {', '.join(missing)} (run `make bench-data`)")
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.learn_from_none_of_the_above == "true" else "-no-negatives") + (
        "" if args.input_view == DEFAULT_INPUT_VIEW else f"-{args.input_view}")
    results = []
    for name in args.tasks:
        task = TASKS[name](0)
        for seed in range(args.trials):
            started = time.perf_counter()
            trial = make_trial(task, seed)
            home = OUT / "homes" / f"{name}-{seed}{suffix}"
            results.append(run_trial(trial, home, args.learn_from_none_of_the_above, args.input_view))
            print(f"{name} seed {seed} ({', '.join(trial.labels)}): {time.perf_counter() - started:.0f} s; "
                  f"{json.dumps({k: v for k, v in results[-1].items() if k != 'inference'})}", flush=True)
            for row in results[-1].get("inference", []):
                print(f"    {row['outcome']:<26} {row['confidence']:5.1f} {row['label']:<24} "
                      f"{row['routing']:<18} truth: {row['truth']}", flush=True)
    table = report(results)
    (OUT / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
    (OUT / f"results{suffix}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
