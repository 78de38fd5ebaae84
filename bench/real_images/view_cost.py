"""CPU per image of `images.prepare` in two or more input views, by the upload's aspect ratio (issue 15).

    PYTHONPATH=src:. nice -n 10 .venv/bin/python -m bench.real_images.view_cost
        [--views letterbox_fast,letterbox_draft] [--floors 0.7] [--per-group 80] [--rounds 7]

The images: the benchmark's ~320-px uploads (`bench/photos.uploads`, JPEG cut from the real photographs, 320 px
on the short side, mixed aspects), grouped by aspect ratio (square, 4:3, 3:2, 16:9, other), up to
``--per-group`` each, and 8 phone-size JPEGs (1536 px on the short side, cut from the same photographs). In each
round every group runs every view (`views` are VIEWS keys) in turn, the order reversed every other round, timed
with `time.process_time` (this process's CPU, so another process's load does not count, cache effects do);
per group and view: the median over the rounds, its spread, and the difference to the first view. "all
uploads" weighs the groups' medians by their share of the whole upload set. ``--floors`` adds exploratory
letterbox views decoded down to that fraction of the input size (`fast_view.add_floor`).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable

import numpy as np
from bench.photos import crop, jpeg, photographs, uploads
from bench.real_images.fast_view import add_floor
from PIL import Image

from labelloop.modeling import images

ASPECTS = (("square", 1.0, 1.1), ("4:3", 1.25, 1.4), ("3:2", 1.45, 1.55), ("16:9", 1.7, 1.8))


def aspect(data: bytes) -> str:
    """The aspect group of a JPEG, from its header."""
    width, height = Image.open(io.BytesIO(data)).size
    ratio = max(width, height) / min(width, height)
    return next((name for name, low, high in ASPECTS if low <= ratio <= high), "other")


def groups(per_group: int) -> tuple[dict[str, list[bytes]], dict[str, float]]:
    """The uploads by aspect group (at most ``per_group`` each) and the phone photos; each upload group's share
    of the whole upload set."""
    found: dict[str, list[bytes]] = {}
    for _, _, data in uploads(1020):
        found.setdefault(aspect(data), []).append(data)
    total = sum(len(v) for v in found.values())
    share = {name: len(v) / total for name, v in found.items()}
    chosen = {name: v[:per_group] for name, v in sorted(found.items())}
    photos, rng = photographs(), np.random.default_rng(5)
    chosen["phone (1536 px)"] = [jpeg(crop(photos[i % len(photos)], rng, 1536), 90) for i in range(8)]
    return chosen, share


def per_image_ms(work: Callable[[bytes], object], datas: list[bytes]) -> float:
    """CPU milliseconds per image of ``work`` over ``datas``."""
    started = time.process_time()
    for data in datas:
        work(data)
    return 1000 * (time.process_time() - started) / len(datas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", default="letterbox_fast,letterbox_draft", help="VIEWS keys, the first the base")
    parser.add_argument("--floors", default="", help="exploratory draft floors to add as views, e.g. 0.7")
    parser.add_argument("--per-group", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    views = args.views.split(",") + [images.INPUT_VIEWS.get(name, name) for name in
                                     (add_floor(float(f)) for f in args.floors.split(",") if f)]
    chosen, share = groups(args.per_group)
    parts: dict[str, Callable[[str], Callable[[bytes], object]]] = {
        "prepare": lambda view: lambda data: images.prepare(data, view=view),
        "decode": lambda view: lambda data: images.decode_for(data, view)}
    times: dict[tuple[str, str, str], list[float]] = {}
    load, started = os.getloadavg(), time.strftime("%H:%M", time.gmtime())
    for round_ in range(args.rounds):
        for name, datas in chosen.items():
            for part, work in parts.items():
                for view in views if round_ % 2 else views[::-1]:
                    times.setdefault((name, part, view), []).append(per_image_ms(work(view), datas))
    print(f"{started}–{time.strftime('%H:%M', time.gmtime())} UTC, load average {load[0]:.1f} → "
          f"{os.getloadavg()[0]:.1f}; CPU ms per image, median of {args.rounds} alternated rounds [min–max]\n")
    print("| group (images, share) | part | " + " | ".join(views) + " |")
    print("|---|---|" + "---|" * len(views))
    weighted: dict[tuple[str, str], float] = {}
    for name, datas in chosen.items():
        for part in parts:
            base = float(np.median(times[(name, part, views[0])]))
            cells = []
            for view in views:
                runs = times[(name, part, view)]
                median = float(np.median(runs))
                weighted[(part, view)] = weighted.get((part, view), 0.0) + share.get(name, 0.0) * median
                delta = "" if view == views[0] else f" ({median - base:+.2f})"
                cells.append(f"{median:.2f} [{min(runs):.2f}–{max(runs):.2f}]{delta}")
            label = f"{name} ({len(datas)}" + (f", {100 * share[name]:.0f} %)" if name in share else ")")
            print(f"| {label} | {part} | " + " | ".join(cells) + " |")
    for part in parts:
        base = weighted[(part, views[0])]
        print(f"| all uploads (weighted) | {part} | " + " | ".join(
            f"{weighted[(part, v)]:.2f}" + ("" if v == views[0] else f" ({weighted[(part, v)] - base:+.2f})")
            for v in views) + " |")


if __name__ == "__main__":
    main()
