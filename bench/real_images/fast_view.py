"""Input views against each other (issue 15): macro-F1 and silent errors on real photographs.

    PYTHONPATH=src:. nice -n 10 .venv/bin/python -m bench.real_images.fast_view [--seeds 3]
        [--views letterbox,letterbox-fast] [--floors 0.7] [--tasks objects,scenes,logos,animals,food,living]
        [--forms upload,stored]

The first of ``--views`` (input views, `images.INPUT_VIEWS`) is the baseline; every other view is compared with
it. `letterbox` decodes in full and resizes with bicubic; `letterbox-fast` decodes a JPEG in the DCT domain (any
other format reduced by an integer factor) to the smallest scale whose long side is still ≥ 224, then
letterboxes it with a bilinear resize; `letterbox-draft` does the same down to a long side of 7/8 × 224 = 196.
``--floors`` adds exploratory views of the same kind at other floors (bench only, named `letterbox-draft-<floor>`).
Each view trains the product's head (`fit_classifier`) on its own embeddings and is scored on its own
embeddings of the same test and open-set images, on the same seeded draws.

Forms of the same images:

* ``stored``: the benchmark's own bytes (PNG stamps and icons, 320×320 JPEG scene crops). Most are PNG or smaller
  than 392 px, so the DCT-domain decode rarely applies: the views differ mainly by the resize filter;
* ``upload``: every image re-encoded as a typical upload, a JPEG (quality 90) whose long side is 480 px (320 px
  on the short side for a 3:2 photo): here `letterbox-fast` and `letterbox-draft` decode every image at 1/2;
* ``upload<N>``: the same with the long side N px, e.g. ``upload427`` (a 4:3 photo at 320 px: `letterbox-draft`
  decodes it at 1/2, `letterbox-fast` in full) or ``upload320`` (a square one at 320 px).

Figures: per task and size k, macro-F1 on the known test images and the silent-error rate at confidence 70
(wrong answers among those the product would auto-accept, open-set images always wrong; tasks with an open set:
objects, scenes, logos), each the mean over the seeds; then per task the mean difference in points and the
decision rule (mean within 0.5 point, no task down by more than 1 point, silent errors not up: the paired mean
over the draws of the open-set tasks ≤ 0). Features are cached like the benchmark's
(bench/out/real_images/features; an upload form under the task name + '-' + the form).
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
from bench.real_images import features, metrics
from bench.real_images.data import OUT, TASKS, Item, Task
from bench.real_images.recipes import Recipe, fit_classifier, predict
from bench.real_images.run import PRODUCT, draw, eval_sets, prepare
from PIL import Image

from labelloop.modeling import images
from labelloop.modeling.backbone import LITE0
from labelloop.modeling.images import decode_image

UPLOAD_LONG_SIDE = 480
UPLOAD_QUALITY = 90
PRODUCT_RECIPE = Recipe(PRODUCT, "current")
OPEN_SET_TASKS = ("objects", "scenes", "logos")
_BYTES: dict[tuple[str, str], bytes] = {}

Results = dict[tuple[str, str, int, str], list[dict[str, float]]]


def upload_jpeg(data: bytes, long_side: int = UPLOAD_LONG_SIDE) -> bytes:
    """The image as a typical upload: decoded (alpha on white), resized so its long side is ``long_side`` px,
    JPEG q90."""
    image = decode_image(data)
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=UPLOAD_QUALITY)
    return buffer.getvalue()


def form_bytes(form: str) -> Callable[[bytes], bytes]:
    """What a form does to an image's stored bytes: 'stored' nothing, 'upload' / 'upload<N>' `upload_jpeg`."""
    if form == "stored":
        return lambda data: data
    if not form.startswith("upload"):
        raise SystemExit(f"unknown form {form!r}: stored, upload or upload<long side>")
    long_side = int(form.removeprefix("upload") or UPLOAD_LONG_SIDE)
    return lambda data: upload_jpeg(data, long_side)


def _remembered(item: Item, form: str) -> Item:
    """The item with its bytes in `form`, made once a process (every view reads the same bytes)."""
    def load() -> bytes:
        key = (form, item.key)
        if key not in _BYTES:
            _BYTES[key] = form_bytes(form)(item.load())
        return _BYTES[key]

    return replace(item, load=load)


def in_form(task: Task, form: str) -> Task:
    """The task with every image in `form` (an upload form cached under its own task name)."""
    def each(items: list[Item]) -> list[Item]:
        return [_remembered(i, form) for i in items]

    return replace(task, name=task.name if form == "stored" else f"{task.name}-{form}",
                   pool={label: each(items) for label, items in task.pool.items()}, test=each(task.test),
                   open=each(task.open), pasted_test=[], pasted_open=[])


def add_floor(floor: float) -> str:
    """Register an exploratory letterbox view decoded down to ``floor`` × the input size (this process only,
    beside `letterbox-draft`'s `images.DRAFT_FLOOR`); its input-view name."""
    name, key = f"letterbox-draft-{floor:g}", f"letterbox_draft_{floor:g}"
    images.VIEWS[key] = images.VIEWS["letterbox_draft"]
    images.SMALL_DECODE_VIEWS[key] = floor
    features.VIEW_NAMES[name] = images.INPUT_VIEWS[name] = key
    return name


def scores(task_name: str, form: str, seed: int, views: tuple[str, ...]
           ) -> dict[tuple[int, str], dict[str, float]]:
    """Per (size k, view): macro-F1 on the known test images and the silent-error rate (with the open set)."""
    task = in_form(TASKS[task_name](seed), form)
    prepared = prepare(task, ((LITE0, views),), open_set=True)
    eval_keys, eval_y = eval_sets(task)["plain"]
    known = eval_y >= 0
    found = {}
    for k in task.sizes:
        if k > task.closed_pool:
            continue
        keys, y = draw(task, k, seed)
        for view in views:
            train = prepared.data(LITE0.name, view, keys, with_map=False)
            test = prepared.data(LITE0.name, view, eval_keys, with_map=False)
            head = fit_classifier(train.embedding, y, task.labels, seed=seed)
            pred, conf = predict(PRODUCT_RECIPE, head, train, y, test)
            outcome = metrics.outcome(eval_y, pred, conf, len(task.labels))
            found[(k, view)] = {"macro_f1": metrics.macro_f1(eval_y[known], pred[known], len(task.labels)),
                                "silent_error": metrics.silent_error_rate(outcome)}
    return found


def _mean(results: Results, key: tuple[str, str, int, str], metric: str) -> float:
    return float(np.mean([r[metric] for r in results[key]]))


def table(results: Results, form: str, views: tuple[str, ...]) -> str:
    """The Markdown table of one form: per task and k, each view's macro-F1 (Δ points to the first view) and
    silent errors."""
    columns = sorted({(t, k) for f, t, k, _ in results if f == form})
    lines = ["| task | k | " + " | ".join(f"macro-F1 {v}" for v in views) + " | "
             + " | ".join(f"silent errors {v}" for v in views) + " |", "|---|---|" + "---|" * 2 * len(views)]
    for t, k in columns:
        f1 = [_mean(results, (form, t, k, v), "macro_f1") for v in views]
        cells = [f"{f1[0]:.3f}"] + [f"{value:.3f} ({100 * (value - f1[0]):+.1f})" for value in f1[1:]]
        cells += [f"{100 * _mean(results, (form, t, k, v), 'silent_error'):.1f} %" for v in views]
        lines.append(f"| {t} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: Results, form: str, base: str, view: str) -> dict:
    """`view` against `base` on one form: mean Δ macro-F1 per task and over the tasks, the paired silent-error
    differences of the open-set tasks (mean and standard error over draws and sizes), and the decision rule."""
    per_task: dict[str, list[float]] = {}
    silent: list[float] = []
    for f, t, k, v in results:
        if f != form or v != view:
            continue
        per_task.setdefault(t, []).append(100 * (_mean(results, (f, t, k, v), "macro_f1")
                                                 - _mean(results, (f, t, k, base), "macro_f1")))
        if t in OPEN_SET_TASKS:
            silent += [100 * (a["silent_error"] - b["silent_error"])
                       for a, b in zip(results[(f, t, k, v)], results[(f, t, k, base)], strict=True)]
    task_means = {t: float(np.mean(d)) for t, d in sorted(per_task.items())}
    mean = float(np.mean(list(task_means.values())))
    silent_mean = float(np.mean(silent)) if silent else 0.0
    silent_se = float(np.std(silent, ddof=1) / np.sqrt(len(silent))) if len(silent) > 1 else 0.0
    holds = mean >= -0.5 and min(task_means.values()) >= -1.0 and silent_mean <= 0.0
    return {"task_means": task_means, "mean": mean, "silent_delta": silent_mean, "silent_se": silent_se,
            "rule_holds": holds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeded draws per task (3)")
    parser.add_argument("--views", default="letterbox,letterbox-fast",
                        help="input views, comma-separated, the first the baseline (letterbox,letterbox-fast)")
    parser.add_argument("--floors", default="", help="exploratory draft floors to add as views, e.g. 0.7")
    parser.add_argument("--tasks", default="objects,scenes,logos,animals,food,living")
    parser.add_argument("--forms", default="upload,stored",
                        help="stored, upload, upload<long side> (comma-separated)")
    args = parser.parse_args()
    views = tuple(args.views.split(",")) + tuple(add_floor(float(f)) for f in args.floors.split(",") if f)
    started, load = time.perf_counter(), os.getloadavg()
    results: Results = {}
    for form in args.forms.split(","):
        for name in args.tasks.split(","):
            for seed in range(args.seeds):
                for (k, view), found in scores(name, form, seed, views).items():
                    results.setdefault((form, name, k, view), []).append(found)
                print(f"{form} {name} seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary: dict[str, dict[str, dict]] = {}
    for form in args.forms.split(","):
        print(f"\n{form} form, Lite0, product head, mean of {args.seeds} seeds\n\n{table(results, form, views)}\n")
        for view in views[1:]:
            found = summary.setdefault(form, {})[view] = verdict(results, form, views[0], view)
            print(f"{view} against {views[0]}: mean Δ macro-F1 per task (points): "
                  + ", ".join(f"{t} {d:+.2f}" for t, d in found["task_means"].items())
                  + f"; over tasks {found['mean']:+.2f}; silent errors (open-set tasks, paired) "
                  f"{found['silent_delta']:+.2f} ± {found['silent_se']:.2f} points; decision rule (≥ −0.5 on "
                  "average, no task below −1, silent errors not up): "
                  + ("holds" if found["rule_holds"] else "does not hold"))
    out = OUT / "fast_view.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"views": views, "summary": summary, "rows": [
        {"form": f, "task": t, "k": k, "view": v, "draws": rows} for (f, t, k, v), rows in results.items()]},
        indent=1))
    print(f"\nload average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{time.perf_counter() - started:.0f} s; written {out}")


if __name__ == "__main__":
    main()
