"""How long run retention takes to prune a backlog of finished runs (SQLite and PostgreSQL system databases).

    PYTHONPATH=src:. .venv/bin/python bench/bench_run_pruning.py [--runs 3000] [--postgres URL]

A fresh engine (its own home in a temporary folder; with ``--postgres``, a fresh database on that server) runs
``--runs`` two-step workflows shaped like an upload batch's run (about 1 KB of recorded input and output), backdates
them 100 days, then prunes them with ``runs.retention.prune_finished_runs`` (90 days, 500 per transaction) and
prints the runs pruned per second, and for SQLite the file's size before and after. The load average is printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from dbos import SetWorkflowID
from sqlalchemy import create_engine, make_url, text

from labelloop import db, engine
from labelloop.config import configure
from labelloop.loop import routing  # noqa: F401  (registers labelloop's workflows, as a server does)
from labelloop.runs import retention

PAYLOAD = {"uploads": [{"key": f"images_for_detection/bench/{n:04d}.png", "etag": "e" * 32, "source": "api"}
                       for n in range(6)]}


@engine.step()
def bench_detect(batch: dict) -> dict:
    """A step recording about what a batch detection records."""
    return {"detections": [{"key": u["key"], "label": "amazon_logo", "confidence": 91.2} for u in batch["uploads"]]}


@engine.step()
def bench_notify(result: dict) -> int:
    return len(result["detections"])


@engine.workflow("bench_pruning_batch")
def bench_batch(batch: dict) -> dict:
    result = bench_detect(batch)
    bench_notify(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--postgres", help="a PostgreSQL server URL: a fresh database is created there")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp()) / "home"
    home.mkdir()
    url = None
    if args.postgres:
        name = f"labelloop_bench_pruning_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
    settings = configure(home=home, database_url=url, queues=[], recovery_check_seconds=3600)
    db.init(settings.app_database_url)
    engine.start(settings)
    started = time.perf_counter()
    for n in range(args.runs):
        with SetWorkflowID(f"bench-{n}"):
            bench_batch(PAYLOAD)
    made = time.perf_counter() - started
    system_url = settings.engine_database_url
    table = "workflow_status" if system_url.startswith("sqlite") else "dbos.workflow_status"
    old = int((datetime.now(UTC) - timedelta(days=100)).timestamp() * 1000)
    with create_engine(system_url).begin() as connection:
        connection.execute(text(f"UPDATE {table} SET created_at = :ms WHERE workflow_uuid LIKE 'bench-%'"), {"ms": old})
    sqlite_file = Path(make_url(system_url).database) if system_url.startswith("sqlite") else None
    size_before = sqlite_file.stat().st_size if sqlite_file else None
    started = time.perf_counter()
    result = retention.prune_finished_runs(90, set)
    took = time.perf_counter() - started
    print(f"database: {'PostgreSQL' if args.postgres else 'SQLite'}; runs made: {args.runs} in {made:.1f} s "
          f"({args.runs / made:.0f}/s)")
    print(f"pruned {result['pruned']} in {took:.2f} s: {result['pruned'] / took:.0f} runs/s "
          f"({retention.PRUNE_CHUNK} per transaction)")
    if sqlite_file:
        print(f"system database file: {size_before / 2**20:.1f} MiB before, {sqlite_file.stat().st_size / 2**20:.1f} "
              "MiB after (freed pages are reused, the file does not shrink)")
    print("load average:", " ".join(f"{v:.2f}" for v in os.getloadavg()))
    engine.stop()
    db.close()
    if args.postgres:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
