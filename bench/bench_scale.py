"""Detection throughput through uploads: embedded SQLite beside PostgreSQL with 1, 2 and 4 workers.

    .venv/bin/python bench/bench_scale.py [--uploads 200] [--rounds 2] [--workers 1 2 4] [--s3]

For each set-up it starts real processes, trains a tiny two-label model, warms every worker with single
uploads (a worker loads the serving version on its first detection), then PUTs ``--uploads`` images to
``images_for_detection/`` through the API from 8 client threads and waits until every one has a DETECTED
event. Reported: how long the uploads took, how long until the last detection, images/s end to end, and
where the CPU went: milliseconds of CPU per image in the web process, in the workers and in the PostgreSQL
backends serving the bench's database (from /proc), and how busy the machine's cores were (/proc/stat) — so
a set-up that stops growing shows whether the cores, the database or waiting is the limit.

- ``sqlite``: one ``labelloop serve`` on the embedded default (it answers HTTP and runs every workflow).
- ``postgresql, N worker(s)``: a web-only ``labelloop serve`` (``LABELLOOP_QUEUES=``) and N ``labelloop
  worker`` processes on a fresh PostgreSQL database (dropped afterwards), sharing one bucket: a local folder
  (``file://``) by default, or with ``--s3`` a bucket on a loopback S3 API server (moto's server mode).

Every process runs on this machine: with 2 cores, workers share the same CPUs as the web process and the
database, so a second worker adds capacity only where the first one waits (database, storage), not CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from profile_summary import cpu_seconds as process_cpu  # noqa: E402

from conftest import Postgres, S3Server, Server, Worker, server_env, wait_until  # noqa: E402
from images import box_logo, smile_logo, unseen, upload_training_set  # noqa: E402

OUT = ROOT / "bench" / "out" / "scale"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        return process_cpu(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def database_backends(url: str | None) -> list[int]:
    """Process ids of the PostgreSQL backends connected to the database at ``url`` (none for SQLite)."""
    if url is None:
        return []
    import psycopg
    from sqlalchemy import make_url

    name = make_url(url).database
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as connection:
        rows = connection.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> "
                                  "pg_backend_pid()", (name,)).fetchall()
    return [row[0] for row in rows]


class CpuMeter:
    """CPU seconds used by the web process, the workers and the database's backends, and machine busy share,
    between :meth:`start` and :meth:`stop` (backends are those connected at the start: pools keep them)."""

    def __init__(self, web: int, workers: list[int], database_url: str | None) -> None:
        self.roles = {"web": [web], "workers": workers}
        self.database_url = database_url

    def start(self) -> None:
        self.roles["database"] = database_backends(self.database_url)
        self.before = {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.roles.items()}
        self.busy = machine_busy()

    def stop(self) -> dict[str, float]:
        used = {role: sum(cpu_seconds(pid) for pid in pids) - self.before[role] for role, pids in self.roles.items()}
        busy, total = machine_busy()
        used["machine busy"] = (busy - self.busy[0]) / max(1, total - self.busy[1])
        return used


def put(api: httpx.Client, key: str, data: bytes) -> dict[str, Any]:
    response = api.put(f"/objects/{key}", content=data)
    response.raise_for_status()
    return response.json()


def train(web: Server, api: httpx.Client) -> None:
    upload_training_set(api, per_label=6)
    run = web.wait_run(api.post("/training/check").json()["run_id"], timeout=600)
    assert run["status"] == "SUCCESS" and run["output"].get("train"), run
    wait_until(lambda: api.get("/models/v1").json()["status"] == "RUNNING", 300, 0.5, "v1 RUNNING")


def warm(web: Server, api: httpx.Client, executors: set[str], tag: str) -> None:
    """Single uploads until every executor has detected one (none of them loads the model under load)."""
    seen: set[str] = set()
    for i in range(100):
        stored = put(api, f"images_for_detection/warm-{tag}-{i}.png", smile_logo(5000 + i))
        run = web.wait_run(stored["run_id"], timeout=120)
        seen.add(run["executor"])
        if executors <= seen:
            return
    raise RuntimeError(f"could not warm every worker: {executors - seen}")


def measure(web: Server, api: httpx.Client, uploads: int, tag: str, meter: CpuMeter) -> dict[str, Any]:
    """Seconds to PUT every image, seconds until the last one is DETECTED (both from the first PUT), and the
    CPU each role used meanwhile."""
    images = {f"images_for_detection/{tag}-{i:04d}.png": (smile_logo, box_logo, unseen)[i % 3](10_000 + i)
              for i in range(uploads)}
    meter.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: put(api, *item), images.items()))
    uploaded = time.perf_counter() - started

    def detected() -> bool:
        events = api.get("/detections", params={"status": "DETECTED", "limit": 100_000}).json()
        return sum(1 for event in events if event["object_key"] in images) == len(images)

    wait_until(detected, 900, 0.25, f"{uploads} detections")
    return {"uploaded": uploaded, "done": time.perf_counter() - started, "load": os.getloadavg()[0],
            **meter.stop()}


def run_setup(name: str, workers: int, args: argparse.Namespace, s3: S3Server | None) -> dict[str, Any]:
    home = OUT / name.replace(" ", "-").replace(",", "")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    # Each process may open 4 × LABELLOOP_DATABASE_POOL_SIZE + 1 connections (application pool and its overflow,
    # the workflow engine's pool, the executor lock): at the default 10, a web process and 4 workers would need
    # about 200, twice PostgreSQL's default max_connections of 100.
    common = {"LABELLOOP_LOG_LEVEL": "WARNING", "LABELLOOP_CACHE_FOLDER": str(OUT / "cache"),
              "LABELLOOP_QUEUE_POLLING_SECONDS": "0.1", "LABELLOOP_DATABASE_POOL_SIZE": str(args.pool_size)}
    processes: list[Server | Worker] = []
    pool: list[Worker] = []
    try:
        if workers == 0:
            web = Server(home=home / "serve", env=server_env(**common)).start(timeout=300)
            processes.append(web)
            executors = {_serve_executor(web)}
        else:
            common["LABELLOOP_DATABASE_URL"] = Postgres.create("bench")
            if s3 is not None:
                common.update(s3.env(s3.bucket()))
            else:
                common["LABELLOOP_STORAGE_URL"] = f"file://{home / 'bucket'}"
            web = Server(home=home / "web", env=server_env(**common, LABELLOOP_QUEUES="")).start(timeout=300)
            processes.append(web)
            pool = [Worker(home=home / f"worker{i}", env=server_env(**common)).start(timeout=300)
                    for i in range(workers)]
            processes.extend(pool)
            executors = {worker.executor_id for worker in pool}
        api = web.client()
        train(web, api)
        warm(web, api, executors, "warm")
        meter = CpuMeter(web.process.pid, [worker.process.pid for worker in pool],
                         common.get("LABELLOOP_DATABASE_URL"))
        results = [measure(web, api, args.uploads, f"round{r}", meter) for r in range(args.rounds)]
        return {"setup": name, "processes": 1 + workers if workers else 1, "results": results}
    finally:
        for process in processes:
            process.stop()
        Postgres.drop_created()


def _serve_executor(web: Server) -> str:
    with web.client() as api:
        stored = put(api, "images_for_detection/probe.png", smile_logo(1))
        run = web.wait_run(stored["run_id"], timeout=120)
    return run["executor"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds per set-up (median reported)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts on PostgreSQL")
    parser.add_argument("--pool-size", type=int, default=3, help="LABELLOOP_DATABASE_POOL_SIZE of every process")
    parser.add_argument("--s3", action="store_true", help="PostgreSQL set-ups use a loopback S3 bucket")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the embedded SQLite set-up")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    problem = Postgres.available()
    if problem:
        sys.exit(problem)
    s3 = S3Server(log_path=OUT / "s3-server.log").start() if args.s3 else None
    setups = ([] if args.no_sqlite else [("sqlite, serve", 0)]) + [
        (f"postgresql, {n} worker{'s' if n > 1 else ''}", n) for n in args.workers]
    rows = []
    try:
        for name, workers in setups:
            print(f"… {name}", file=sys.stderr, flush=True)
            rows.append(run_setup(name, workers, args, s3))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        if s3 is not None:
            s3.stop()
    bucket = "S3 (moto, loopback)" if args.s3 else "local folder"
    print(f"\nDetection through uploads: {args.uploads} PUTs from 8 client threads, {args.rounds} round(s), "
          f"median; {os.cpu_count()} cores; PostgreSQL bucket: {bucket}\n")
    header = ["set-up", "processes", "uploads s", "all detected s", "images/s", "web CPU ms/img",
              "workers CPU ms/img", "PostgreSQL CPU ms/img", "cores busy", "load"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        def median(key: str, results: list[dict[str, Any]] = row["results"]) -> float:
            return statistics.median(r[key] for r in results)

        per_image = [1000 * median(role) / args.uploads for role in ("web", "workers", "database")]
        cells = [row["setup"], str(row["processes"]), f"{median('uploaded'):.1f}", f"{median('done'):.1f}",
                 f"{args.uploads / median('done'):.1f}", *(f"{ms:.0f}" for ms in per_image),
                 f"{100 * median('machine busy'):.0f} %", f"{median('load'):.1f}"]
        print("| " + " | ".join(cells) + " |")
    print("\nweb CPU in the SQLite set-up includes its workflows (one process does everything); cores busy "
          "counts every process on the machine, the benchmark's clients and other work included.")


if __name__ == "__main__":
    main()
