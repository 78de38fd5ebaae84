"""Tables (markdown) and the reliability plot of a benchmark run."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from bench.real_images import metrics
from bench.real_images.data import OUT

PLOTTED = ("softmax", "previous rule (centroid familiarity)", "labelloop now (Head.predict_proba)")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def confidence_table(rows: list[dict[str, Any]], view: str, set_name: str, size: dict[str, int]) -> str:
    """Per recipe and task at its reported size: silent errors / confident share / open accepted / ECE."""
    rows = [r for r in rows if r["view"] == view and r["set"] == set_name and r["task"] in size]
    if not rows:
        return "(not run)"
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    pick = {(r["recipe"], r["task"]): r for r in rows
            if r["view"] == view and r["set"] == set_name and r["k"] == size[r["task"]]}
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    head = "| recipe | " + " | ".join(f"{t} (k={size[t]}) silent err % / confident % / open≥70 % / ECE"
                                      for t in tasks if (recipes[0], t) in pick) + " |"
    lines = [head, "|---" * (1 + sum((recipes[0], t) in pick for t in tasks)) + "|"]
    for recipe in recipes:
        cells = []
        for t in tasks:
            if (recipes[0], t) not in pick:
                continue
            r = pick.get((recipe, t))
            cells.append("—" if r is None else f"**{_pct(r['silent_error'])}** / {_pct(r['confident'])} / "
                                               f"{_pct(r['open_accepted'])} / {r['ece']:.3f}")
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranking_table(rows: list[dict[str, Any]], size: dict[str, int]) -> str:
    """Ranking quality, whatever the calibration: the share of right answers that an oracle threshold keeps
    confident at a silent-error rate ≤ 5 % (centre crop, plain images)."""
    rows = [r for r in rows if r["view"] == "crop" and r["set"] == "plain" and r["k"] == size.get(r["task"])]
    if not rows:
        return "(not run)"
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by = {(r["recipe"], r["task"]): r["best_confident"] for r in rows}
    lines = ["| recipe | " + " | ".join(f"{t} (k={size[t]})" for t in tasks) + " |", "|---" * (1 + len(tasks)) + "|"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        lines.append(f"| {recipe} | " + " | ".join(
            f"{_pct(by[(recipe, t)])}" if (recipe, t) in by else "—" for t in tasks) + " |")
    return "\n".join(lines)


def feature_table(rows: list[dict[str, Any]], cost: dict[str, float]) -> str:
    """Closed-set macro-F1 per feature recipe, task and size, with its cost in Lite0 passes."""
    if not rows:
        return "(not run)"
    columns = list(dict.fromkeys((r["task"], r["k"]) for r in rows))
    by = {(r["recipe"], r["task"], r["k"]): r["macro_f1"] for r in rows}
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    lines = ["| features | cost (Lite0 crop = 1) | " + " | ".join(f"{t} k={k}" for t, k in columns) + " |",
             "|---" * (2 + len(columns)) + "|"]
    for recipe in recipes:
        cells = [f"{by[(recipe, t, k)]:.3f}" if (recipe, t, k) in by else "—" for t, k in columns]
        lines.append(f"| {recipe} | {cost.get(recipe, float('nan')):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def closed_table(rows: list[dict[str, Any]]) -> str:
    """Closed-set macro-F1 (Lite0 crop, product head) per task and size."""
    found = defaultdict(dict)
    for r in rows:
        if r["view"] == "crop" and r["set"] == "plain" and r["recipe"] == "softmax":
            found[r["task"]][r["k"]] = r["macro_f1"]
    return "\n".join(f"- {task}: " + ", ".join(f"k={k}: {v:.3f}" for k, v in sorted(sizes.items()))
                     for task, sizes in found.items())


def suspect_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | training images | flipped | flagged | found | precision | recall |", "|---" * 7 + "|"]
    lines += [f"| {r['task']} (k={r['k']}) | {r['images']} | {r['flipped']} | {r['flagged']} | {r['found']} | "
              f"{r['precision']:.2f} | {r['recall']:.2f} |" for r in rows]
    return "\n".join(lines)


def merge_and_write() -> None:
    """Merge every results-PART-TASKS.json of OUT (the latest run of each) and write the report."""
    result: dict[str, Any] = {"runs": [], "confidence": [], "features": [], "suspects": []}
    plots: dict[str, metrics.Outcome] = {}
    for path in sorted(OUT.glob("results-*-*-seeds*.json")):
        run = json.loads(path.read_text())
        part = run["part"]
        result["runs"].append({"part": part, "tasks": run["tasks"],
                               "load_average_start": run[f"load_average_start_{part}"],
                               "load_average_end": run[f"load_average_end_{part}"],
                               "seconds": run[f"seconds_{part}"]})
        for key in ("confidence", "features", "suspects"):
            result[key] += run.get(key, [])
        for key in ("speed_images_per_s", "cost"):
            if key in run:
                result[key] = run[key]
        if path.with_suffix(".npz").is_file():
            plots.update(metrics.load_outcomes(path.with_suffix(".npz")))
    write(result, plots)


def write(result: dict[str, Any], plots: dict[str, metrics.Outcome]) -> None:
    """results.json, results.md and reliability.png in bench/out/real_images/; prints the markdown."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1))
    conf = result.get("confidence", [])
    few = {"logos": 5, "objects": 5, "scenes": 5}
    more = {"logos": 5, "objects": 10, "scenes": 20}
    speed = result.get("speed_images_per_s", {})
    runs = [f"{run['part']} ({run['tasks']}): load average {run['load_average_start'][0]:.1f} at the start, "
            f"{run['load_average_end'][0]:.1f} at the end, {run['seconds'] / 60:.0f} min"
            for run in result.get("runs", [])]
    parts = [
        "; ".join(runs) + ". Backbone speed, measured in the features run: "
        + ", ".join(f"{name} {v:.1f} images/s" for name, v in speed.items()) + ".",
        "### Open-set confidence, k = 5 images per label, centre crop",
        confidence_table(conf, "crop", "plain", few),
        "### Same, more images per label",
        confidence_table(conf, "crop", "plain", more),
        "### Same, images pasted at an angle onto a photo (k = 5 / 10)",
        confidence_table(conf, "crop", "pasted", {"logos": 5, "objects": 10, "scenes": 20}),
        "### Letterbox view instead of centre crop, k = 5",
        confidence_table(conf, "letterbox", "plain", few),
        "### Letterbox, pasted",
        confidence_table(conf, "letterbox", "pasted", {"logos": 5, "objects": 10, "scenes": 20}),
        "### Closed set, labels that look alike (no open set), k = 5",
        confidence_table(conf, "crop", "plain", {"digits": 5, "flowers": 5, "food": 5}),
        "### Same, more images per label",
        confidence_table(conf, "crop", "plain", {"digits": 20, "flowers": 20, "food": 10}),
        "### Same, 100 images per label",
        confidence_table(conf, "crop", "plain", {"digits": 100, "flowers": 100}),
        "### Ranking: % of right answers an oracle threshold keeps at silent errors ≤ 5 %",
        ranking_table(conf, more),
        "### Closed-set macro-F1 (Lite0, centre crop, product head)",
        closed_table(conf),
        "### Features: closed-set macro-F1 and backbone cost",
        feature_table(result.get("features", []), result.get("cost", {})),
        "### Suspect-label finder (5 % of training labels flipped, out-of-fold predictions ≥ 70)",
        suspect_table(result.get("suspects", [])),
    ]
    text = "\n\n".join(parts) + "\n"
    (OUT / "results.md").write_text(text)
    print(text)
    chosen = {name.split("/")[-1]: o for name, o in plots.items()
              if name.startswith("objects/plain/crop/") and name.split("/")[-1] in PLOTTED}
    if chosen:
        metrics.reliability_plot(chosen, OUT / "reliability.png",
                                 "Reliability on real object photos (5 per label; known test + never-trained kinds)")
