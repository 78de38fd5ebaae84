"""CPU of a batch of detections' writes per image (answers with their routing, human loops, notifications), with
the batch's once-per-batch reads (``detection.service.read_versions_once``: model-version columns and the
silent-error estimate) and without them, alternated in one process on a real SQLite database.

    PYTHONPATH=src .venv/bin/python bench/bench_batch_writes.py [--pairs 20] [--batch 16]

Inference is given (what the serving model would answer: confidences 99.5, 88, 76 and 40 in turn, so some
images are audited, some auto-accepted, some below the confidence threshold); everything written is real.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from labelloop import db
from labelloop.detection import service as detections
from labelloop.loop import routing
from labelloop.modeling.models import ModelVersion
from labelloop.parameters import service as parameters

CONFIDENCES = (99.5, 88.0, 76.0, 40.0)


def answered(confidence: float) -> detections.Outcome:
    """The serving model's answer: ``cat`` at ``confidence``."""
    return detections.Outcome("detected", version="v1", labels=[
        {"name": "cat", "confidence": confidence}, {"name": "dog", "confidence": 100 - confidence}])


def one_batch(number: int, size: int) -> float:
    """Record ``size`` arrivals, then time their batch's writes: CPU ms per image."""
    events = [detections.record_arrival(f"images_for_detection/{number}/{i}.jpg", f"{number:016x}{i:016x}",
                                        f"detection-bench-{number}") for i in range(size)]
    started = time.process_time()
    routing._detect_all(events, f"detection-bench-{number}")
    return (time.process_time() - started) / size * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    home = tempfile.mkdtemp(prefix="bench-batch-writes-")
    db.init(f"sqlite:///{os.path.join(home, 'app.db')}")
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={}))
    detections.infer_all = lambda events: [answered(CONFIDENCES[i % 4]) for i in range(len(events))]
    once = detections.read_versions_once
    each: Callable[..., None] = lambda session: None  # noqa: E731 - every read per image, as before batches
    for number in range(10):  # past a cold start's first audits (every eligible image audited until 20)
        one_batch(number, args.batch)
    times: dict[str, list[float]] = {"once per batch": [], "per image": []}
    for pair in range(args.pairs):
        for name, reads in (("once per batch", once), ("per image", each)):
            detections.read_versions_once = reads
            times[name].append(one_batch(100 + 2 * pair + (name == "per image"), args.batch))
    detections.read_versions_once = once
    print(f"load average {os.getloadavg()}; {args.pairs} alternated pairs of {args.batch}-image batches")
    for name, found in times.items():
        print(f"{name:>15}: median {statistics.median(found):.2f} ms of CPU per image (min {min(found):.2f})")


if __name__ == "__main__":
    main()
