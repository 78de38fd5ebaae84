"""CPU of the stranded-detection sweep's reading (``routing.detections_to_retry``) while uploads wait in batches
whose runs are in flight, as when the answer sweep (every 5 minutes) meets a stream of uploads: each side in
fresh processes, alternated, on real SQLite databases (application and DBOS).

    PYTHONPATH=src .venv/bin/python bench/bench_sweep.py [--waiting 320] [--pairs 2] [--compare-src /tmp/before/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

from alternated import pooled, run_alternated, sides

BATCH = 16  # uploads per batch run


def child(waiting: int, repeats: int) -> None:
    """In this process: ``waiting`` events under running batch runs; prints the sweep's CPU ms of each repeat."""
    home = tempfile.mkdtemp(prefix="bench-sweep-")
    os.environ["LABELLOOP_HOME"] = home
    from dbos import DBOS, SetWorkflowID

    from labelloop import db
    from labelloop.detection import service as detections
    from labelloop.loop import routing
    from labelloop.modeling.models import ModelVersion

    release = threading.Event()

    @DBOS.workflow(name="batch")
    def batch() -> None:  # an upload batch's run, in flight while the sweep reads
        release.wait(300)

    db.init(f"sqlite:///{home}/app.db")
    with db.session() as session:
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={}))
    DBOS(config={"name": "bench-sweep", "system_database_url": f"sqlite:///{home}/system.sqlite"})
    DBOS.launch()
    handles = []
    for number in range(-(-waiting // BATCH)):
        with SetWorkflowID(f"detection-{number:05d}"):
            handles.append(DBOS.start_workflow(batch))
    for number in range(waiting):
        run_id = f"detection-{number // BATCH:05d}"
        detections.record_arrival(f"images_for_detection/{number}.jpg", f"e{number}", run_id)
    found = []
    for _ in range(repeats):
        started = time.thread_time()
        queued = routing.detections_to_retry()
        found.append(1000 * (time.thread_time() - started))
        assert not queued, "every waiting upload's batch is in flight: nothing to queue"
    release.set()
    for handle in handles:
        handle.get_result()
    DBOS.destroy()
    print(json.dumps(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waiting", type=int, default=320)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare-src", help="another source tree's PYTHONPATH, alternated with this one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.waiting, args.repeats)
    paths = sides(args.compare_src)
    found = pooled(run_alternated(__file__, ["--child", "--waiting", str(args.waiting), "--repeats",
                                             str(args.repeats)], paths, args.pairs))
    print(f"load average {os.getloadavg()}; {args.waiting} uploads waiting in running batches of {BATCH}; "
          f"{args.pairs} processes per side, {args.repeats} sweeps each")
    for name, path in paths.items():
        times = found[name]
        print(f"{name:>9} ({path}): the sweep's reading took median {statistics.median(times):.1f} ms of CPU "
              f"[{min(times):.1f}-{max(times):.1f}]")


if __name__ == "__main__":
    main()
