"""CPU an idle ``labelloop serve`` uses, at the queue polling periods given (the default's and others).

    PYTHONPATH=src .venv/bin/python bench/bench_idle.py [--seconds 30] [--polling 0.2 0.5 1.0]

For each period: a fresh server (its own home in a temporary folder), started, left 15 s to settle, then
its CPU seconds (user + system, from /proc) over ``--seconds`` as a share of one core. The figure counts
the server's own CPU time, so other work on the machine changes it little; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import seed_backbone, server_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_share(polling: float, seconds: float) -> float:
    """The share of one core an idle server uses with queues polled every ``polling`` seconds."""
    home, port = Path(tempfile.mkdtemp()) / "home", _free_port()
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
        before, started = _cpu_seconds(server.pid), time.monotonic()
        time.sleep(seconds)
        return (_cpu_seconds(server.pid) - before) / (time.monotonic() - started)
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--polling", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    args = parser.parse_args()
    for polling in args.polling:
        share = idle_share(polling, args.seconds)
        print(f"queue polling {polling:4.1f} s: idle server uses {100 * share:4.1f} % of a core "
              f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
