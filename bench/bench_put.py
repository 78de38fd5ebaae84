"""CPU of an upload PUT's worker-thread part (``loop.actions.store_object``) per upload, in process, on real photos:
a real SQLite application database, a real local bucket, the upload batches' queueing a no-op (no workflow
engine). Each part's thread CPU is measured around it (``time.thread_time``: user and system time of the thread),
and its wall-clock time (`` (wall)``: an fsync's wait on the disk uses no CPU; ``process (wall)``: the whole run's
wall time per PUT, all threads together).

    PYTHONPATH=src .venv/bin/python bench/bench_put.py [--uploads 300] [--pairs 6]
    PYTHONPATH=src .venv/bin/python bench/bench_put.py --compare-src /work/base/src [--pairs 6] [--threads 4]
    PYTHONPATH=src .venv/bin/python bench/bench_put.py --postgresql postgresql://postgres@127.0.0.1:5432/postgres

``--postgresql``: the application database on that PostgreSQL server, a new database per process (dropped after)
instead of SQLite in the home. ``--compare-src``: this source and another one, each in fresh processes, alternated
pair by pair (which side goes first alternates too); the medians of the processes' mean CPU per PUT, with their
range.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from alternated import run_alternated, sides, spread

PHOTOS = Path(__file__).resolve().parent / "out" / "photos" / "320px-seed0"
PARTS = ("process", "store_object", "put_object", "backend put", "fire_object_created", "record_arrival")
SYSTEM = " (system)"  # a part's kernel time alone (the fsync, the writes), beside its thread CPU
WALL = " (wall)"  # a part's wall-clock time (an fsync waits on the disk without using CPU)


def system_time() -> float:
    """This thread's system (kernel) CPU time so far, in seconds."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_stime


def photos(count: int) -> list[bytes]:
    """``count`` of the benchmark's real photos (about 320 px short side, 20-30 KB JPEGs), in name order."""
    names = sorted(PHOTOS.iterdir())[:count]
    if len(names) < count:
        raise SystemExit(f"{PHOTOS} holds {len(names)} photos, {count} asked for: run `make bench-photos`")
    return [path.read_bytes() for path in names]


def timed(spent: dict[str, list[float]], part: str, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call``, its thread CPU, kernel time and wall-clock time per call appended to ``spent[part]``,
    ``spent[part + SYSTEM]`` and ``spent[part + WALL]``."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, kernel, clock = time.thread_time(), system_time(), time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent[part].append(time.thread_time() - started)
            spent[part + SYSTEM].append(system_time() - kernel)
            spent[part + WALL].append(time.perf_counter() - clock)
    return wrapper


def open_server(home: str) -> dict[str, list[float]]:
    """This process as a server's worker thread would see it: settings, database, bucket; each part wrapped."""
    os.environ["LABELLOOP_HOME"] = home
    logging.disable(logging.CRITICAL)
    from labelloop import db
    from labelloop.config import get_settings
    from labelloop.detection import service as detections
    from labelloop.loop import actions, batches, routing
    from labelloop.storage import service as storage

    db.init(get_settings().app_database_url)
    storage.ensure_bucket()
    routing._upload_batches = batches.UploadBatches(lambda *queued: None, prefix="detection-bench-", window=0.2,
                                                    max_size=32)
    spent: dict[str, list[float]] = {name: [] for part in PARTS[1:] for name in (part, part + SYSTEM, part + WALL)}
    bucket = storage.backend()
    bucket.put = timed(spent, "backend put", bucket.put)  # type: ignore[method-assign]
    storage.put_object = timed(spent, "put_object", storage.put_object)
    routing.fire_object_created = timed(spent, "fire_object_created", routing.fire_object_created)
    detections.record_arrival = timed(spent, "record_arrival", detections.record_arrival)
    actions.store_object = timed(spent, "store_object", actions.store_object)
    return spent


@contextmanager
def application_database(server: str | None) -> Iterator[None]:
    """With ``server`` (a PostgreSQL URL), a new database on it named after this process, set as
    ``LABELLOOP_DATABASE_URL`` and dropped at the end; without, nothing (SQLite in the home)."""
    if not server:
        yield
        return
    name = f"bench_put_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    os.environ["LABELLOOP_DATABASE_URL"] = f"{server.rsplit('/', 1)[0]}/{name}"
    try:
        yield
    finally:
        from labelloop import db

        db.close()
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def child(uploads: int, warmup: int, threads: int, postgresql: str | None = None) -> None:
    """One process: ``warmup`` uploads, then ``uploads`` more (new keys) from ``threads`` threads at once; prints
    each part's mean ms of thread CPU per PUT and the whole process's CPU per PUT (``process``)."""
    data = photos(uploads + warmup)
    with (tempfile.TemporaryDirectory(prefix="bench-put-", dir=os.environ.get("BENCH_PUT_DIR")) as home,
          application_database(postgresql)):
        spent = open_server(home)
        from labelloop.loop import actions

        def store(number: int) -> None:
            actions.store_object(f"images_for_detection/bench/{number:05d}.jpg", data[number], source="api",
                                 actor="bench")

        for number in range(warmup):
            store(number)
        for values in spent.values():
            values.clear()
        started, clock = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(store, range(warmup, warmup + uploads)))
        found = {part: 1e3 * statistics.fmean(values) for part, values in spent.items() if values}
        print(json.dumps({**found, "process": 1e3 * (time.process_time() - started) / uploads,
                          "process" + WALL: 1e3 * (time.perf_counter() - clock) / uploads}))


def compare(other: str, pairs: int, uploads: int, warmup: int, threads: int, postgresql: str | None) -> None:
    """This source and ``other`` alternated in fresh processes; per part, the median (range) of the processes'
    mean ms of thread CPU per PUT."""
    paths = sides(other)
    database = ["--postgresql", postgresql] if postgresql else []
    found = run_alternated(__file__, ["--child", str(uploads), "--warmup", str(warmup), "--threads", str(threads),
                                      *database], paths, pairs)
    print(f"load average {os.getloadavg()}; {'PostgreSQL' if postgresql else 'SQLite'}; {pairs} processes per side, "
          f"alternated, {uploads} new uploads each after {warmup}, from {threads} threads; ms of CPU per PUT "
          "(process: the whole process's; the parts: their threads'; (wall): wall-clock ms): median (min-max) of the "
          "processes' means")
    for part in (shown for measured in PARTS for shown in (measured, measured + SYSTEM, measured + WALL)):
        if part == "process" + SYSTEM:
            continue
        cells = []
        for name in paths:
            values = [run[part] for run in found[name] if part in run]
            cells.append(f"{name} {spread(values)}" if values else f"{name} -")
        pairs_lower = sum(this.get(part, 0) < other.get(part, 0) for this, other in
                          zip(*found.values(), strict=True))
        print(f"{part:>20}: " + " | ".join(cells) + f"; this lower in {pairs_lower} of {pairs} pairs")
    for name, path in paths.items():
        print(f"{name}: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="threads storing uploads at once (4: the bench's "
                        "clients)")
    parser.add_argument("--compare-src", help="another source tree's PYTHONPATH, alternated with this one")
    parser.add_argument("--postgresql", help="a PostgreSQL server's URL: the application database there (a new "
                        "database per process) instead of SQLite")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.warmup, args.threads, args.postgresql)
    return compare(args.compare_src or os.environ.get("PYTHONPATH", "src"), args.pairs, args.uploads, args.warmup,
                   args.threads, args.postgresql)


if __name__ == "__main__":
    main()
