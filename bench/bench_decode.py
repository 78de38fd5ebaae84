"""Decode and prepare of the benchmark's real-photo uploads, step by step, this tree against another (issue 15).

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/bench_decode.py --compare-src /work/base/src
        [--uploads 200] [--rounds 7] [--view letterbox_fast]

The images: ``--uploads`` of `bench_detect`'s uploads (`bench/photos.uploads`: ~320-px JPEGs cut from the real
photographs, mixed aspects). Per step, CPU milliseconds per image (`time.process_time`, so another process's load
does not count, cache effects do) of this tree's `images.py` and of ``--compare-src``'s, alternated every round
(the order reversed every other round); each row gives the median over the rounds, min–max, and the ratio this
tree / compared. Steps: the decode (`decode_for`: open, DCT-scaled load, EXIF, RGB), the preprocessing
(`to_input`: border colour, resize, [-1, 1] CHW float32) and the whole `prepare`, plus the resize alone (Pillow's,
the same call in both trees). Before timing, every image's `prepare` of both trees is compared: the largest
absolute difference is printed (0 is bit for bit the same input).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync_parts import load_images_module
from photos import uploads


def per_image_ms(work: Callable[[Any], object], items: list[Any]) -> float:
    """CPU milliseconds per item of ``work`` over ``items``."""
    started = time.process_time()
    for item in items:
        work(item)
    return 1000 * (time.process_time() - started) / len(items)


def steps(images: Any, datas: list[bytes], view: str) -> dict[str, Callable[[], float]]:
    """Each timed step of ``images`` (a tree's images module) on ``datas``, as a call giving its ms per image."""
    decoded = [images.decode_for(data, view) for data in datas]
    size = images.INPUT_SIZE
    inner = [(max(1, round(w * size / max(w, h))), max(1, round(h * size / max(w, h))))
             for w, h in (image.size for image in decoded)]
    resample = images.SMALL_DECODE_RESAMPLE if view in images.SMALL_DECODE_VIEWS else images.RESAMPLE
    return {
        "decode (decode_for)": lambda: per_image_ms(lambda data: images.decode_for(data, view), datas),
        "preprocess (to_input)": lambda: per_image_ms(lambda image: images.to_input(image, view), decoded),
        "  of it: resize alone (Pillow)": lambda: per_image_ms(
            lambda pair: pair[0].resize(pair[1], resample), list(zip(decoded, inner, strict=True))),
        "prepare, all of it": lambda: per_image_ms(lambda data: images.prepare(data, view=view), datas),
    }


def largest_difference(this: Any, other: Any, datas: list[bytes], view: str) -> float:
    """The largest absolute difference between the two trees' `prepare` of any of ``datas``."""
    return max(float(np.abs(this.prepare(data, view=view) - other.prepare(data, view=view)).max())
               for data in datas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-src", type=Path, required=True, metavar="SRC")
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--view", default="letterbox_fast", help="a VIEWS key (letterbox_fast: the default view)")
    args = parser.parse_args()
    datas = [data for _, _, data in uploads(args.uploads)]
    trees = {"this": load_images_module(None), "compared": load_images_module(args.compare_src)}
    print(f"{len(datas)} uploads, view {args.view}: largest |this - compared| of prepare = "
          f"{largest_difference(trees['this'], trees['compared'], datas, args.view):g}")
    timed = {name: steps(module, datas, args.view) for name, module in trees.items()}
    times: dict[tuple[str, str], list[float]] = {}
    load, started = os.getloadavg()[0], time.strftime("%H:%M", time.gmtime())
    for round_ in range(args.rounds):
        for name in list(timed)[:: 1 if round_ % 2 == 0 else -1]:
            for step, measure in timed[name].items():
                times.setdefault((step, name), []).append(measure())
    print(f"CPU ms per image, median [min–max] of {args.rounds} alternated rounds, {started}–"
          f"{time.strftime('%H:%M', time.gmtime())} UTC, load average {load:.1f}–{os.getloadavg()[0]:.1f}")
    print(f"{'step':34} {'this':>20} {'compared':>20} {'ratio':>6}")
    for step in timed["this"]:
        mine, theirs = times[(step, "this")], times[(step, "compared")]
        print(f"{step:34} {statistics.median(mine):7.3f} [{min(mine):.3f}–{max(mine):.3f}]"
              f" {statistics.median(theirs):7.3f} [{min(theirs):.3f}–{max(theirs):.3f}]"
              f" {statistics.median(mine) / statistics.median(theirs):6.3f}")


if __name__ == "__main__":
    main()
