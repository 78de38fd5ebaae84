"""Wall-clock and thread CPU time of the local bucket's delete, per object, in process (README Performance, item 64:
a delete fsyncs the object's folder before it returns).

    PYTHONPATH=src .venv/bin/python bench/bench_delete.py [--objects 300] [--pairs 6]
    PYTHONPATH=src .venv/bin/python bench/bench_delete.py --compare-src /work/base/src [--pairs 6]

Each process stores ``--objects`` objects of 25 KB (random bytes) in ten folders of a new bucket under
``bench/out/delete`` (the disk a home would be on, not a tmpfs), then deletes them one at a time, as the review's
moves and ``labelloop objects rm`` do. ``--compare-src``: this source and another one, each in fresh processes,
alternated pair by pair (which side goes first alternates too); medians of the processes' means, with their range.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from alternated import run_alternated, sides, spread

OUT = Path(__file__).resolve().parent / "out" / "delete"


def child(objects: int) -> None:
    """Store and delete ``objects`` objects in a new bucket; print the mean wall and CPU ms per delete as JSON."""
    from labelloop.storage.backends.local import LocalBackend

    OUT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=OUT))
    try:
        bucket = LocalBackend(folder / "bucket")
        keys = [f"images_labeled_by_folder/label-{n % 10}/photo-{n:05d}.jpg" for n in range(objects)]
        for key in keys:
            bucket.put(key, os.urandom(25_000))
        wall, cpu = [], []
        for key in keys:
            started, clock = time.thread_time(), time.perf_counter()
            if not bucket.delete(key):
                raise SystemExit(f"{key} was not found to delete")
            wall.append(time.perf_counter() - clock)
            cpu.append(time.thread_time() - started)
        print(json.dumps({"wall_ms": 1000 * statistics.fmean(wall), "p90_wall_ms": 1000 * statistics.quantiles(
            wall, n=10)[-1], "cpu_ms": 1000 * statistics.fmean(cpu)}))
    finally:
        shutil.rmtree(folder)


def compare(other: str | None, pairs: int, objects: int) -> None:
    """Fresh processes of each side, alternated; the median (range) of each figure per side."""
    found = run_alternated(__file__, ["--child", str(objects)], sides(other), pairs)
    for figure in ("wall_ms", "p90_wall_ms", "cpu_ms"):
        cells = "   ".join(f"{name} {spread([run[figure] for run in runs])}" for name, runs in found.items())
        print(f"{figure:12} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--compare-src", help="another source tree's PYTHONPATH, alternated with this one")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child)
    return compare(args.compare_src, args.pairs, args.objects)


if __name__ == "__main__":
    main()
