"""CPU of a batch of detections' writes per image (answers with their routing, human loops, notifications), with
the batch's once-per-batch reads (``detection.service.read_versions_once``: model-version columns and the
silent-error estimate) and without them, alternated in one process on a real SQLite database.

    PYTHONPATH=src .venv/bin/python bench/bench_batch_writes.py [--pairs 20] [--batch 16]
    PYTHONPATH=src .venv/bin/python bench/bench_batch_writes.py --compare-src /tmp/before/src [--pairs 6]

Each batch also reports how long it held SQLite's write lock: from its first INSERT or UPDATE to its commit
(while it is held, every PUT's detection-event insert waits). ``--compare-src``: this source and another one,
each in its own process (batches of 32 by default), alternated pair by pair, with every read once per batch.

Inference is given (what the serving model would answer: confidences 99.5, 88, 76 and 40 in turn, so some
images are audited, some auto-accepted, some below the confidence threshold); everything written is real.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from alternated import pooled, run_alternated, sides
from sqlalchemy import event

from labelloop import db
from labelloop.detection import service as detections
from labelloop.loop import routing
from labelloop.modeling.models import ModelVersion
from labelloop.parameters import service as parameters

MIXES = {"routing": (99.5, 88.0, 76.0, 40.0),  # every route: audits, auto-accepted, below the thresholds
         "confident": (99.5,)}  # as the upload benchmark's photos: nearly all auto-accepted, few loops
CONFIDENCES = MIXES["routing"]


def answered(confidence: float) -> detections.Outcome:
    """The serving model's answer: ``cat`` at ``confidence``."""
    return detections.Outcome("detected", version="v1", labels=[
        {"name": "cat", "confidence": confidence}, {"name": "dog", "confidence": 100 - confidence}])


class WriteLock:
    """How long each transaction of the application database held SQLite's write lock (first write to its end)."""

    def __init__(self) -> None:
        self.taken: float | None = None
        self.held: list[float] = []

    def watch(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.taken is None and statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.taken = time.perf_counter()

    def _end(self, conn: Any) -> None:
        if self.taken is not None:
            self.held.append(time.perf_counter() - self.taken)
            self.taken = None


LOCK = WriteLock()


def one_batch(number: int, size: int) -> tuple[float, float]:
    """Record ``size`` arrivals, then time their batch's writes: CPU ms per image, and ms the write lock was held
    by the batch's transaction."""
    events = [detections.record_arrival(f"images_for_detection/{number}/{i}.jpg", f"{number:016x}{i:016x}",
                                        f"detection-bench-{number}") for i in range(size)]
    LOCK.held.clear()
    started = time.process_time()
    routing._detect_all(events, f"detection-bench-{number}")
    cpu = (time.process_time() - started) / size * 1e3
    return cpu, 1e3 * max(LOCK.held, default=0.0)


def open_database(mix: str) -> None:
    global CONFIDENCES
    CONFIDENCES = MIXES[mix]
    logging.disable(logging.CRITICAL)
    home = tempfile.mkdtemp(prefix="bench-batch-writes-")
    LOCK.watch(db.init(f"sqlite:///{os.path.join(home, 'app.db')}"))
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={}))
    detections.infer_all = lambda events: [answered(CONFIDENCES[i % len(CONFIDENCES)]) for i in range(len(events))]


def child(batches: int, size: int, start: int, mix: str) -> None:
    """One side of ``--compare-src``: warm up, then ``batches`` batches; prints their figures as JSON."""
    open_database(mix)
    for number in range(10):
        one_batch(number, size)
    found = [one_batch(start + number, size) for number in range(batches)]
    print(json.dumps(found))


def compare(other: str, pairs: int, batches: int, size: int, mix: str) -> None:
    """This source and ``other`` alternated in fresh processes; medians of CPU per image and lock held per batch."""
    paths = sides(other)
    found = pooled(run_alternated(__file__, ["--child", str(batches), "--batch", str(size), "--mix", mix], paths,
                                  pairs))
    print(f"load average {os.getloadavg()}; {pairs} alternated processes per side, {batches} batches of {size} "
          f"each, confidences {MIXES[mix]}")
    for name, path in paths.items():
        cpu, held = [c for c, _ in found[name]], [h for _, h in found[name]]
        print(f"{name:>9} ({path}): CPU per image median {statistics.median(cpu):.2f} ms (min {min(cpu):.2f}); "
              f"write lock held per batch median {statistics.median(held):.1f} ms (max {max(held):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--compare-src", help="another source tree's PYTHONPATH, alternated with this one")
    parser.add_argument("--mix", choices=sorted(MIXES), default="routing", help="the answers' confidences")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.batch, 1000, args.mix)
    if args.compare_src:
        return compare(args.compare_src, args.pairs, 5, args.batch, args.mix)
    open_database(args.mix)
    once = detections.read_versions_once
    each: Callable[..., None] = lambda session: None  # noqa: E731 - every read per image, as before batches
    for number in range(10):  # past a cold start's first audits (every eligible image audited until 20)
        one_batch(number, args.batch)
    times: dict[str, list[tuple[float, float]]] = {"once per batch": [], "per image": []}
    for pair in range(args.pairs):
        for name, reads in (("once per batch", once), ("per image", each)):
            detections.read_versions_once = reads
            times[name].append(one_batch(100 + 2 * pair + (name == "per image"), args.batch))
    detections.read_versions_once = once
    print(f"load average {os.getloadavg()}; {args.pairs} alternated pairs of {args.batch}-image batches")
    for name, found in times.items():
        cpu, held = [c for c, _ in found], [h for _, h in found]
        print(f"{name:>15}: median {statistics.median(cpu):.2f} ms of CPU per image (min {min(cpu):.2f}); "
              f"write lock held per batch median {statistics.median(held):.1f} ms")


if __name__ == "__main__":
    main()
