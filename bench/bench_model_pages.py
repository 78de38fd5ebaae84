"""What reading model versions costs when each row holds a realistic head: the models list page, a model page, the
API's list, the serving version's row (as the stranded-detection sweep and re-detect looked it up), its name alone,
and serving's load of a head, on ``--versions`` versions (10) whose heads hold a full 10 × 256 familiarity bank
(13 MB each).

    PYTHONPATH=src .venv/bin/python bench/bench_model_pages.py [--compare-src /work/base/src] [--pairs 3]
        [--database postgresql]

Each side of the comparison gets a database of its own (its own migrations; a fresh SQLite file, or with
``--database postgresql`` a fresh database on ``--postgres-url``), filled by its own code; the sides then read
theirs in fresh processes, alternated pair by pair (``alternated.run_alternated``), each child timing every reading
``--repeats`` times, in a session of its own as a request would, and printing the medians: CPU ms (the process's),
wall ms, and MB the process read through ``read()`` (``rchar`` of ``/proc/self/io``: on SQLite the database file's
pages; a PostgreSQL client's socket reads are not counted there). The heads are random unit rows: reading costs the
same whatever the values.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from alternated import run_alternated, sides
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from labelloop import db
from labelloop.modeling import pages, versions
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.modeling.training import Head

LABELS, BANK_ROWS, DIM = 10, 256, 1280


def realistic_head(seed: int) -> bytes:
    """A head's bytes with a full familiarity bank (LABELS × BANK_ROWS unit rows): about 13 MB."""
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((LABELS, BANK_ROWS, DIM)).astype(np.float32)
    labels = [f"label-{i}" for i in range(LABELS)]
    return Head(labels, rng.standard_normal((LABELS, DIM)), np.zeros(LABELS),
                bank=bank / np.linalg.norm(bank, axis=2, keepdims=True), familiar_offset=np.zeros(LABELS)).to_bytes()


def realistic_size() -> int:
    """The size in bytes of the heads :func:`fill` stores."""
    return len(realistic_head(0))


def fill(url: str, count: int) -> None:
    """``count`` trained versions, the newest serving, each with a realistic head."""
    db.init(url)
    head = realistic_head(0)
    labels = [f"label-{i}" for i in range(LABELS)]
    evaluation = {"f1": 0.9, "per_label": [{"label": label, "f1": 0.9, "precision": 0.9, "recall": 0.9}
                                           for label in labels]}
    for number in range(1, count + 1):
        with db.session() as session:
            session.add(ModelVersion(version=f"v{number}", labels=labels, f1=0.9, evaluation=evaluation, head=head,
                                     status=(ModelStatus.RUNNING if number == count else ModelStatus.STOPPED).value))
    db.close()


def readings(newest: str) -> dict[str, Callable[[], Any]]:
    """Each reading, in a session of its own, as the page or step makes it."""

    def models_list_page() -> Any:
        with db.session() as session:
            rows = versions.list_versions(session=session)
            serving = versions.serving_version(session=session)
            return [pages._actions(row, serving) for row in rows], pages.f1_plot(rows, 0.5)

    def model_page() -> Any:
        with db.session() as session:
            row = versions.get_version(newest, session=session)
            return pages._actions(row, versions.serving_version(session=session))

    def api_list() -> Any:
        with db.session() as session:
            return [versions.describe(row) for row in versions.list_versions(session=session)]

    def serving_row() -> Any:
        with db.session() as session:
            serving = versions.serving_version(session=session)
            return serving.version if serving is not None else None

    def serving_name() -> Any:
        with db.session() as session:
            return versions.serving_version_name(session=session)

    def head_load() -> Any:
        with db.session() as session:
            return versions.head_of(versions.get_version(newest, session=session))

    return {"models list page": models_list_page, "model page": model_page, "API list": api_list,
            "serving version's row": serving_row, "serving version's name": serving_name,
            "a head loaded to serve": head_load}


def bytes_read() -> int:
    """What this process has read through ``read()`` so far (``rchar``)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def timed(reading: Callable[[], Any], repeats: int) -> list[float]:
    """Medians over ``repeats`` calls: CPU ms, wall ms, MB read."""
    found = []
    for _ in range(repeats):
        cpu, wall, read = time.process_time(), time.perf_counter(), bytes_read()
        reading()
        found.append(((time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3,
                      (bytes_read() - read) / 1e6))
    return [statistics.median(column) for column in zip(*found, strict=True)]


def child(urls: str, newest: str, repeats: int) -> None:
    """One side (its database: ``urls`` maps each side's PYTHONPATH to its URL): each reading once to warm up, then
    timed; prints {reading: [CPU ms, wall ms, MB read]}."""
    logging.disable(logging.CRITICAL)
    db.init(json.loads(urls)[os.environ["PYTHONPATH"]])
    every = readings(newest)
    for reading in every.values():
        reading()
    print(json.dumps({name: timed(reading, repeats) for name, reading in every.items()}))


def fresh_database(kind: str, side: str, postgres_url: str) -> str:
    """An empty database for one side: a SQLite file, or a PostgreSQL database (dropped first if left over)."""
    if kind == "sqlite":
        return f"sqlite:///{os.path.join(tempfile.mkdtemp(prefix=f'bench-model-pages-{side}-'), 'app.db')}"
    name = f"bench_model_pages_{side}"
    server = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    server.dispose()
    return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-src", help="another source tree's PYTHONPATH, alternated with this one")
    parser.add_argument("--pairs", type=int, default=3, help="fresh processes per side")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each reading per process")
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-url", default=os.environ.get("LABELLOOP_TEST_POSTGRES_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--child", nargs=2, metavar=("URLS", "NEWEST"), help=argparse.SUPPRESS)
    parser.add_argument("--fill", nargs=2, metavar=("URL", "VERSIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.repeats)
    if args.fill:
        return fill(args.fill[0], int(args.fill[1]))
    paths = sides(args.compare_src)
    urls = {path: fresh_database(args.database, side, args.postgres_url) for side, path in paths.items()}
    for path, url in urls.items():  # each side's schema and rows written by its own code
        subprocess.run([sys.executable, __file__, "--fill", url, str(args.versions)], check=True,
                       env={**os.environ, "PYTHONPATH": path})
    found = run_alternated(__file__, ["--child", json.dumps(urls), f"v{args.versions}", "--repeats",
                                      str(args.repeats)], paths, args.pairs)
    print(f"load average {os.getloadavg()}; {args.versions} versions, heads of {realistic_size() / 1e6:.1f} MB, "
          f"{args.database}; {args.pairs} alternated processes per side, medians of {args.repeats} calls each: "
          "CPU ms / wall ms / MB read, one cell per process")
    for name in found["this"][0]:
        print(name)
        for side, path in paths.items():
            cells = [f"{cpu:7.2f} {wall:7.2f} {read:6.1f}" for cpu, wall, read in (one[name] for one in found[side])]
            print(f"  {side:>8} ({path}): " + " |".join(cells))


if __name__ == "__main__":
    main()
