"""The `letterbox-fast` input view against `letterbox` (issue 15): macro-F1 and silent errors on real photographs.

    PYTHONPATH=src:. nice -n 10 .venv/bin/python -m bench.real_images.fast_view [--seeds 3]
        [--tasks objects,scenes,logos,animals,food,living] [--forms upload,stored]

`letterbox-fast` decodes a JPEG in the DCT domain (any other format reduced by an integer factor) to the smallest
scale whose long side is still ≥ 224, then letterboxes it with a bilinear resize; `letterbox` decodes in full and
resizes with bicubic. Each view trains the product's head (`fit_classifier`) on its own embeddings and is scored on
its own embeddings of the same test and open-set images, on the same seeded draws.

Two forms of the same images:

* ``stored``: the benchmark's own bytes (PNG stamps and icons, 320×320 JPEG scene crops). Most are PNG or smaller
  than 448 px, so the DCT-domain decode rarely applies: the views differ mainly by the resize filter;
* ``upload``: every image re-encoded as a typical upload, a JPEG (quality 90) whose long side is 480 px (320 px
  on the short side for a 3:2 photo): here `letterbox-fast` decodes every image at 1/2 scale.

Figures: per task and size k, macro-F1 on the known test images and the silent-error rate at confidence 70
(wrong answers among those the product would auto-accept, open-set images always wrong; tasks with an open set:
objects, scenes, logos), each the mean over the seeds; then per task the mean difference in points and the
decision rule (mean within 0.5 point, no task down by more than 1 point). Features are cached like the
benchmark's (bench/out/real_images/features; the upload form under the task name + '-upload').
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from bench.real_images import metrics
from bench.real_images.data import OUT, TASKS, Item, Task
from bench.real_images.recipes import Recipe, fit_classifier, predict
from bench.real_images.run import PRODUCT, draw, eval_sets, prepare
from PIL import Image

from labelloop.modeling.backbone import LITE0
from labelloop.modeling.images import decode_image

VIEWS = ("letterbox", "letterbox-fast")
UPLOAD_LONG_SIDE = 480
UPLOAD_QUALITY = 90
PRODUCT_RECIPE = Recipe(PRODUCT, "current")
_BYTES: dict[tuple[str, str], bytes] = {}


def upload_jpeg(data: bytes) -> bytes:
    """The image as a typical upload: decoded (alpha on white), resized so its long side is 480 px, JPEG q90."""
    image = decode_image(data)
    scale = UPLOAD_LONG_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=UPLOAD_QUALITY)
    return buffer.getvalue()


FORMS: dict[str, Callable[[bytes], bytes]] = {"stored": lambda data: data, "upload": upload_jpeg}


def _remembered(item: Item, form: str) -> Item:
    """The item with its bytes in `form`, made once a process (both views read the same bytes)."""
    def load() -> bytes:
        key = (form, item.key)
        if key not in _BYTES:
            _BYTES[key] = FORMS[form](item.load())
        return _BYTES[key]

    return replace(item, load=load)


def in_form(task: Task, form: str) -> Task:
    """The task with every image in `form` (the upload form cached under its own task name)."""
    def each(items: list[Item]) -> list[Item]:
        return [_remembered(i, form) for i in items]

    return replace(task, name=task.name if form == "stored" else f"{task.name}-{form}",
                   pool={label: each(items) for label, items in task.pool.items()}, test=each(task.test),
                   open=each(task.open), pasted_test=[], pasted_open=[])


def scores(task_name: str, form: str, seed: int) -> dict[tuple[int, str], dict[str, float]]:
    """Per (size k, view): macro-F1 on the known test images and the silent-error rate (with the open set)."""
    task = in_form(TASKS[task_name](seed), form)
    prepared = prepare(task, ((LITE0, VIEWS),), open_set=True)
    eval_keys, eval_y = eval_sets(task)["plain"]
    known = eval_y >= 0
    found = {}
    for k in task.sizes:
        if k > task.closed_pool:
            continue
        keys, y = draw(task, k, seed)
        for view in VIEWS:
            train = prepared.data(LITE0.name, view, keys, with_map=False)
            test = prepared.data(LITE0.name, view, eval_keys, with_map=False)
            head = fit_classifier(train.embedding, y, task.labels, seed=seed)
            pred, conf = predict(PRODUCT_RECIPE, head, train, y, test)
            outcome = metrics.outcome(eval_y, pred, conf, len(task.labels))
            found[(k, view)] = {"macro_f1": metrics.macro_f1(eval_y[known], pred[known], len(task.labels)),
                                "silent_error": metrics.silent_error_rate(outcome)}
    return found


def table(results: dict[tuple[str, str, int, str], list[dict[str, float]]], form: str) -> tuple[str, dict]:
    """The Markdown table of one form, and per task the mean difference in macro-F1 points."""
    columns = sorted({(t, k) for f, t, k, _ in results if f == form})
    lines = ["| task | k | macro-F1 letterbox | macro-F1 letterbox-fast | Δ points | silent errors letterbox | "
             "silent errors letterbox-fast |", "|---|---|---|---|---|---|---|"]
    per_task: dict[str, list[float]] = {}
    for t, k in columns:
        mean = {view: {m: float(np.mean([r[m] for r in results[(form, t, k, view)]]))
                       for m in ("macro_f1", "silent_error")} for view in VIEWS}
        delta = 100 * (mean["letterbox-fast"]["macro_f1"] - mean["letterbox"]["macro_f1"])
        per_task.setdefault(t, []).append(delta)
        lines.append(f"| {t} | {k} | {mean['letterbox']['macro_f1']:.3f} | {mean['letterbox-fast']['macro_f1']:.3f} "
                     f"| {delta:+.1f} | {100 * mean['letterbox']['silent_error']:.1f} % | "
                     f"{100 * mean['letterbox-fast']['silent_error']:.1f} % |")
    task_means = {t: float(np.mean(d)) for t, d in per_task.items()}
    return "\n".join(lines), task_means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeded draws per task (3)")
    parser.add_argument("--tasks", default="objects,scenes,logos,animals,food,living")
    parser.add_argument("--forms", default="upload,stored", help="stored, upload or both (comma-separated)")
    args = parser.parse_args()
    started, load = time.perf_counter(), os.getloadavg()
    results: dict[tuple[str, str, int, str], list[dict[str, float]]] = {}
    for form in args.forms.split(","):
        for name in args.tasks.split(","):
            for seed in range(args.seeds):
                for (k, view), found in scores(name, form, seed).items():
                    results.setdefault((form, name, k, view), []).append(found)
                print(f"{form} {name} seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = {}
    for form in args.forms.split(","):
        text, task_means = table(results, form)
        mean = float(np.mean(list(task_means.values())))
        holds = abs(mean) <= 0.5 or mean > 0
        holds = holds and min(task_means.values()) >= -1.0
        summary[form] = {"task_means": task_means, "mean": mean, "rule_holds": holds}
        print(f"\n{form} form, Lite0, product head, mean of {args.seeds} seeds\n\n{text}\n")
        print("mean Δ macro-F1 per task (points): " + ", ".join(f"{t} {d:+.2f}" for t, d in task_means.items())
              + f"; over tasks {mean:+.2f}; decision rule (≥ −0.5 on average, no task below −1): "
              + ("holds" if holds else "does not hold"))
    out = OUT / "fast_view.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "rows": [
        {"form": f, "task": t, "k": k, "view": v, "draws": rows} for (f, t, k, v), rows in results.items()]},
        indent=1))
    print(f"\nload average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{time.perf_counter() - started:.0f} s; written {out}")


if __name__ == "__main__":
    main()
