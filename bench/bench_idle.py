"""CPU an idle ``labelloop serve`` uses, at the queue polling periods given (the default's and others).

    PYTHONPATH=src .venv/bin/python bench/bench_idle.py [--seconds 30] [--polling 0.2 0.5 1.0] [--threads]

For each period: a fresh server (its own home in a temporary folder), started, left 15 s to settle, then
its CPU seconds (user + system, from /proc) over ``--seconds`` as a share of one core. The figure counts
the server's own CPU time, so other work on the machine changes it little; the load average is printed.
``--threads``: the same per thread, named by ``py-spy dump`` (each DBOS queue worker, the queue manager, the
scheduler, the notification listener …).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from profile_summary import cpu_seconds, dumped_thread_names, thread_cpu

from conftest import free_port, seed_backbone, server_env


def idle_share(polling: float, seconds: float, threads: bool = False) -> tuple[float, dict[str, float]]:
    """The share of one core an idle server uses with queues polled every ``polling`` seconds, and with
    ``threads`` each named thread's share (threads py-spy does not name are summed as "other")."""
    home, port = Path(tempfile.mkdtemp()) / "home", free_port()
    seed_backbone(home / "cache")
    env = {k: v for k, v in server_env().items() if not k.endswith("_POLLING_SECONDS")}
    env["LABELLOOP_QUEUE_POLLING_SECONDS"] = str(polling)
    server = subprocess.Popen([sys.executable, "-m", "labelloop", "serve", "--home", str(home), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        time.sleep(15)
        before, started = cpu_seconds(server.pid), time.monotonic()
        per_thread = thread_cpu(server.pid)
        time.sleep(seconds)
        wall = time.monotonic() - started
        total = (cpu_seconds(server.pid) - before) / wall
        shares: dict[str, float] = {}
        if threads:
            names = dumped_thread_names(server.pid)
            for tid, cpu in thread_cpu(server.pid).items():
                name = re.sub(r"_\d+$", "_N", names.get(tid, "other"))
                shares[name] = shares.get(name, 0.0) + (cpu - per_thread.get(tid, 0.0)) / wall
        return total, shares
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--polling", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    parser.add_argument("--threads", action="store_true", help="each thread's share as well (needs py-spy)")
    args = parser.parse_args()
    for polling in args.polling:
        share, shares = idle_share(polling, args.seconds, args.threads)
        print(f"queue polling {polling:4.1f} s: idle server uses {100 * share:4.1f} % of a core "
              f"(load average {os.getloadavg()[0]:.1f})")
        for name, part in sorted(shares.items(), key=lambda item: -item[1]):
            if part > 0:
                print(f"    {100 * part:5.2f} %  {name}")


if __name__ == "__main__":
    main()
