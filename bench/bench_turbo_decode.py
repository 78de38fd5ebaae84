"""The small-decode views' JPEG decode through simplejpeg (libjpeg-turbo) against Pillow's, in process: the same
pixels, and the CPU per image of ``decode_small`` and of the whole ``prepare``.

    PYTHONPATH=src /work/main/.venv/bin/python bench/bench_turbo_decode.py [--count 300] [--rounds 7]

Real ~320-px upload JPEGs cut from the photographs (`bench/photos.py`). First every upload, in both small-decode
views and their flips, is prepared both ways and compared bit for bit; then each way's ``decode_small`` and
``prepare`` (letterbox-fast) run over every upload, the ways alternated ``--rounds`` times: CPU ms per image, median
and minimum of the rounds. "pillow" is the same code with `images._turbo_decode` answering None (Pillow's path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


@contextmanager
def pillow_only() -> Any:
    """Pillow's decode for every image (`_turbo_decode` declines)."""
    from labelloop.modeling import images

    turbo = images._turbo_decode
    images._turbo_decode = lambda *args: None
    try:
        yield
    finally:
        images._turbo_decode = turbo


def cpu_ms(call: Callable[[bytes], Any], photos: list[bytes]) -> float:
    """Process CPU milliseconds per image of ``call`` over every photo."""
    started = time.process_time()
    for data in photos:
        call(data)
    return 1000 * (time.process_time() - started) / len(photos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from photos import uploads

    from labelloop.modeling import images

    photos = [data for _, _, data in uploads(args.count)]
    views = [view for view in images.SMALL_DECODE_VIEWS]
    different = 0
    for data in photos:
        for view in views:
            turbo = images.prepare(data, view=view)
            with pillow_only():
                pillow = images.prepare(data, view=view)
            different += not np.array_equal(turbo, pillow)
    print(f"{len(photos)} uploads × {len(views)} views: {different} prepares differ from Pillow's decode")

    parts: dict[str, Callable[[bytes], Any]] = {
        "decode_small": images.decode_small,
        "prepare letterbox-fast": lambda data: images.prepare(data, view="letterbox_fast"),
    }
    results: dict[tuple[str, str], list[float]] = {}
    for index in range(args.rounds):
        ways = ["turbo", "pillow"] if index % 2 == 0 else ["pillow", "turbo"]
        for way in ways:
            for name, call in parts.items():
                if way == "pillow":
                    with pillow_only():
                        ms = cpu_ms(call, photos)
                else:
                    ms = cpu_ms(call, photos)
                results.setdefault((name, way), []).append(ms)
    print(f"CPU ms per image, {args.rounds} alternated rounds (median, min):")
    for name in parts:
        turbo, pillow = results[name, "turbo"], results[name, "pillow"]
        saved = statistics.median(p - t for t, p in zip(turbo, pillow, strict=True))
        print(f"  {name:24s} turbo {statistics.median(turbo):.3f} ({min(turbo):.3f})  "
              f"pillow {statistics.median(pillow):.3f} ({min(pillow):.3f})  "
              f"pillow - turbo per round, median {saved:+.3f}")


if __name__ == "__main__":
    main()
