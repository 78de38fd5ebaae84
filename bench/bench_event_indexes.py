"""The detection event log's indexes: what an upload's event insert costs, and how long every query that reads the
table takes on a big one (``--rows``, 100,000 by default), with each query's plan. A real database (SQLite in a
temporary home, or PostgreSQL with ``--postgresql URL``: a database made for each run and dropped after it).

    PYTHONPATH=src .venv/bin/python bench/bench_event_indexes.py [--rows 100000] [--plans]
    PYTHONPATH=src .venv/bin/python bench/bench_event_indexes.py --compare-src /work/base/src [--pairs 3]

The table is filled (one executemany) with what a long-running installation holds: three versions, ten labels,
1 % waiting, failed or rejected, audits and sampled rows, answered ones, re-detections. Then ``--puts`` events are
inserted as an upload's PUT inserts them (``detection.service.record_arrival``, one transaction each; thread CPU),
and a batch of them answered as a batch's run writes them (one executemany UPDATE). Each query: the median wall time
of 5 runs. ``--compare-src``: this source and another one in fresh processes, alternated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from alternated import run_alternated, sides, spread

LABELS = [f"label{number}" for number in range(10)]
VERSIONS = ("v1", "v2", "v3")
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def fill(rows: int) -> None:
    """``rows`` detection events, spread over 60 days, oldest first."""
    from labelloop import db
    from labelloop.detection.models import DetectionEvent

    table = DetectionEvent.__table__
    chance = random.Random(7)
    batch: list[dict[str, Any]] = []
    for number in range(rows):
        created = NOW - timedelta(days=60) + timedelta(seconds=number * 60 * 86400 / rows)
        roll = chance.random()
        status = ("WAITING_FOR_MODEL" if roll < 0.002 else "FAILED" if roll < 0.004 else "REJECTED" if roll < 0.01
                  else "DETECTED")
        detected = status == "DETECTED"
        confidence = chance.uniform(30, 100) if detected else None
        rule = (None if not detected else "below-raised-threshold" if roll < 0.012 else "audit" if roll < 0.08
                else "below-confidence" if confidence < 50 else "auto-accepted")
        sampled = detected and (rule == "audit" or roll > 0.99)
        answered = (sampled and chance.random() < 0.8) or (rule == "below-confidence" and chance.random() < 0.5)
        label = chance.choice(LABELS) if detected else None
        again = detected and roll > 0.995
        batch.append({
            "request_id": str(uuid.uuid4()), "created_at": created, "detected_at": created if detected else None,
            "object_key": f"images_for_detection/bench/{number:07d}.jpg", "etag": uuid.uuid4().hex, "source": "api",
            "status": status, "status_message": "", "model_version": VERSIONS[number * 3 // rows] if detected else None,
            "label": label, "confidence": confidence, "labels": [{"name": label, "confidence": confidence}],
            "threshold": 50.0 if detected else None, "human_review_enabled": True, "sampled": sampled,
            "human_loop_name": None, "human_label": (chance.choice(LABELS) if answered else None),
            "human_worker": "w" if answered else None, "human_answered_at": created if answered else None,
            "run_id": f"detection-{number // 25}", "routing_rule": rule, "review_reason": None,
            "new_stratum": None, "previous_event_id": number if again else None})
        if len(batch) == 10_000:
            with db.connection() as connection:
                connection.execute(table.insert(), batch)
            batch = []
    if batch:
        with db.connection() as connection:
            connection.execute(table.insert(), batch)


def queries() -> dict[str, Callable[[], Any]]:
    """Every query of the code that reads the event log, by name (on the filled table)."""
    from sqlalchemy import func, select

    from labelloop import db
    from labelloop.detection import service, silent_errors, warm_start
    from labelloop.detection.models import DetectionEvent, DetectionStatus

    def listed(**filters: Any) -> Callable[[], Any]:
        def run() -> Any:
            with db.session() as session:
                return len(service.list_events(session=session, **filters))
        return run

    def in_session(call: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        def run() -> Any:
            with db.session() as session:
                return call(*args, session=session)
        return run

    def sampling_walk() -> Any:  # sampling.service.sample_detections' read
        with db.session() as session:
            return len(list(session.scalars(select(DetectionEvent.id).where(
                DetectionEvent.status == DetectionStatus.DETECTED,
                DetectionEvent.detected_at >= NOW - timedelta(days=2),
                DetectionEvent.previous_event_id.is_(None)).order_by(DetectionEvent.detected_at, DetectionEvent.id))))

    def detected_arrivals() -> Any:  # review_evidence's and the first hour's count
        with db.session() as session:
            return session.scalar(select(func.count()).select_from(DetectionEvent).where(
                DetectionEvent.status == DetectionStatus.DETECTED, DetectionEvent.previous_event_id.is_(None)))

    def redetection_of_run() -> Any:  # record_redetection's look for the run's own event
        with db.session() as session:
            return session.scalar(select(DetectionEvent.id).where(DetectionEvent.run_id == "detection-5",
                                                                  DetectionEvent.previous_event_id.is_not(None)))

    def gold_recent() -> Any:
        with db.session() as session:
            return len(list(session.scalars(select(DetectionEvent.id).order_by(DetectionEvent.id.desc()).limit(50))))

    old = NOW - timedelta(days=59)
    return {
        "list: newest 500": listed(),
        "list: label": listed(label="label3"),
        "list: status REJECTED": listed(status="REJECTED"),
        "list: status DETECTED": listed(status="DETECTED"),
        "list: sampled": listed(sampled=True),
        "list: not sampled": listed(sampled=False),
        "list: rule audit": listed(routing_rule="audit"),
        "list: rule below-raised (rare)": listed(routing_rule="below-raised-threshold"),
        "list: since 1 day": listed(since=NOW - timedelta(days=1)),
        "list: until 59 days ago": listed(until=old),
        "list: human label": listed(human_label="label4"),
        "list: answered": listed(answered=True),
        "list: confidence ≥ 99": listed(min_confidence=99.0),
        "count": in_session(service.count_events),
        "labels seen": in_session(service.labels_seen),
        "waiting uploads": service.waiting_uploads,
        "waiting events": service.waiting_events,
        "sampling walk (2 days)": sampling_walk,
        "estimate counts v3": in_session(silent_errors.counts_of, "v3"),
        "audits opened v3": in_session(silent_errors.audits_opened, "v3"),
        "warm start: has detected": in_session(warm_start._has_detected, "v3"),
        "warm start: answered audits": in_session(warm_start._answered_audits, "v4"),
        "warm start: window": in_session(warm_start._window, "v3"),
        "latest event of a key": in_session(service.latest_event_for, "images_for_detection/bench/0050000.jpg"),
        "first arrival of a key": in_session(service._event_for, "images_for_detection/bench/0050000.jpg", "x"),
        "event of a run": in_session(service.event_of_run, "detection-1000"),
        "re-detection of a run": redetection_of_run,
        "detected arrivals count": detected_arrivals,
        "gold: recent ids": gold_recent,
    }


def child(rows: int, puts: int, plans: bool, postgresql: str | None = None) -> None:
    """One process: fill, insert ``puts`` events as PUTs do, answer them, time every query; prints JSON.
    ``postgresql``: a server's URL, where a database is made for the run (analyzed after the fill, as autovacuum
    does) and dropped after it."""
    logging.disable(logging.CRITICAL)
    from sqlalchemy import create_engine, make_url, text

    from labelloop import db
    from labelloop.config import get_settings, with_driver
    from labelloop.detection import service

    admin, url = None, None
    if postgresql:
        admin = create_engine(with_driver(postgresql), isolation_level="AUTOCOMMIT")
        database = f"bench_indexes_{os.getpid()}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        url = make_url(with_driver(postgresql)).set(database=database).render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory(prefix="bench-indexes-") as home:
        os.environ["LABELLOOP_HOME"] = home
        db.init(url or get_settings().app_database_url)
        fill(rows)
        if postgresql:
            with db.connection() as connection:
                connection.execute(text("ANALYZE detection_events"))
        out: dict[str, float] = {}
        started, wall = time.thread_time(), time.perf_counter()
        made = [service.record_arrival(f"images_for_detection/new/{number:05d}.jpg", uuid.uuid4().hex, "run-x")
                for number in range(puts)]
        out["PUT insert CPU ms"] = 1e3 * (time.thread_time() - started) / puts
        out["PUT insert wall ms"] = 1e3 * (time.perf_counter() - wall) / puts
        started = time.thread_time()
        for start in range(0, puts, 25):
            with db.session() as session:
                session.execute(service.ANSWER, [
                    {"event_id": event["id"], "status": "DETECTED", "status_message": "", "detected_at": NOW,
                     "model_version": "v3", "label": "label1", "confidence": 99.0, "routing_rule": "auto-accepted",
                     "threshold": 50.0} for event in made[start:start + 25]])
        out["answer UPDATE CPU ms/event"] = 1e3 * (time.thread_time() - started) / puts
        for name, run in queries().items():
            times = []
            for _ in range(5):
                begun = time.perf_counter()
                run()
                times.append(time.perf_counter() - begun)
            out[name] = 1e3 * statistics.median(times)
        if plans:
            out["plans"] = explain()  # type: ignore[assignment]
        db.close()
    if admin is not None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{database}"'))
    print(json.dumps(out))


def explain() -> dict[str, list[str]]:
    """The plan SQLite (EXPLAIN QUERY PLAN) or PostgreSQL (EXPLAIN) chooses for each query, by statement."""
    from sqlalchemy import event

    from labelloop import db

    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "detection_events" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(db.engine(), "before_cursor_execute", seen)
    try:
        for run in queries().values():
            run()
    finally:
        event.remove(db.engine(), "before_cursor_execute", seen)
    plans: dict[str, list[str]] = {}
    prefix = "EXPLAIN QUERY PLAN " if db.engine().dialect.name == "sqlite" else "EXPLAIN "
    with db.engine().connect() as connection:
        for statement, parameters in statements:
            cursor = connection.connection.dbapi_connection.cursor()
            cursor.execute(prefix + statement, parameters)
            where = " ".join(statement.split()).partition("FROM detection_events")[2][:240]
            plans[where] = [" ".join(str(part) for part in row).strip() for row in cursor.fetchall()]
    return plans


def compare(other: str, pairs: int, rows: int, puts: int, postgresql: str | None = None) -> None:
    """This source and ``other`` alternated in fresh processes; per figure the median (range) of each side."""
    paths = sides(other)
    found = run_alternated(__file__, ["--child", "--rows", str(rows), "--puts", str(puts),
                                      *(["--postgresql", postgresql] if postgresql else [])], paths, pairs)
    print(f"{datetime.now(UTC):%H:%M} UTC, load average {os.getloadavg()}; {pairs} processes per side, alternated; "
          f"{rows} rows, {puts} PUT inserts; median (min-max) of the processes; queries: ms (median of 5 runs)")
    for figure in found["this"][0]:
        cells = []
        for name in paths:
            cells.append(f"{name} {spread([run[figure] for run in found[name] if figure in run], 8)}")
        print(f"{figure:>32}: " + " | ".join(cells))
    for name, path in paths.items():
        print(f"{name}: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--puts", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--plans", action="store_true", help="print each query's plan (one process, this source)")
    parser.add_argument("--compare-src", help="another source tree's PYTHONPATH, alternated with this one")
    parser.add_argument("--postgresql", metavar="URL", help="a PostgreSQL server (a database made there for each run)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.plans:
        return child(args.rows, args.puts, args.plans, args.postgresql)
    return compare(args.compare_src or os.environ.get("PYTHONPATH", "src"), args.pairs, args.rows, args.puts,
                   args.postgresql)


if __name__ == "__main__":
    main()
