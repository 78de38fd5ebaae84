"""A fresh server's first sync detections against a warm server's, the same code, in alternated windows.

    PYTHONPATH=src .venv/bin/python bench/bench_warmup.py [--windows 6] [--seconds 4] [--clients 8]
        [--prewarm 30] [--server-src DIR] [--perf]

Starts two fresh `labelloop serve` (as `bench_detect.py` does: each trains v1 on real photos and exports it),
has the second serve ``--prewarm`` seconds of ``POST /api/v1/detect`` from ``--clients`` threads, then drives both
in alternated windows of ``--seconds`` (the order swapped each pair, so both meet the same load) and prints, per
window, images/s and the server's CPU per image (user + system, and system), page faults, voluntary and
involuntary context switches per image and RSS, then the fresh ÷ warm ratio of the pair: whether a fresh server
pays more for its first detections, and in what. With ``--perf``, ``perf stat`` counts each window's memory
system calls (mmap, munmap, brk, madvise, mprotect) and user page faults too (needs root).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_detect import OUT, Server, drive_sync, multipart, process_counters, start_server, train  # noqa: E402
from photos import uploads  # noqa: E402

SYSCALLS = ("mmap", "munmap", "brk", "madvise", "mprotect")


def perf_counting(pid: int) -> subprocess.Popen[str]:
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS) + ",exceptions:page_fault_user"
    return subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def perf_counts(process: subprocess.Popen[str]) -> dict[str, int]:
    process.send_signal(2)
    _, err = process.communicate(timeout=30)
    counts = {}
    for line in err.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].isdigit():
            counts[parts[2].split(":")[-1].removeprefix("sys_enter_")] = int(parts[0])
    return counts


def started(path: str | None, index: int) -> Server:
    """A fresh server of ``path``'s code, trained (v1 on real photos) and exported, as `bench_detect.py` starts it."""
    server = start_server(path, OUT / f"warmup-home{index}")
    with server.client() as api:
        train(server, api)
        api.get("/models/v1/export", params={"format": "onnx"}).raise_for_status()
    return server


def window(server: Server, token: str, bodies: list[tuple[bytes, str]], args: argparse.Namespace) -> dict[str, float]:
    """One window of sync detect on ``server``: images/s and the server's counters per image."""
    pid = server.process.pid
    perf = perf_counting(pid) if args.perf else None
    if perf:
        time.sleep(0.3)
    before = process_counters(pid)
    row = drive_sync(server, token, bodies, args.clients, args.seconds)
    after = process_counters(pid)
    images = max(1, len(row.latencies))
    figures = {key: (after[key] - before[key]) / images for key in ("user", "system", "minflt", "switches",
                                                                    "preempted")}
    figures.update(images=images, rate=row.rate, rss=after["rss"], errors=row.errors,
                   cpu=figures["user"] + figures["system"])
    figures.update({k: v / images for k, v in (perf_counts(perf) if perf else {}).items()})
    return figures


def line(name: str, index: int, f: dict[str, float]) -> str:
    perf = " ".join(f"{k} {f[k]:.2f}" for k in (*SYSCALLS, "page_fault_user") if k in f)
    return (f"{name:>6} {index:>6} {f['images']:>7.0f} {f['rate']:>7.1f} {1000 * f['cpu']:>10.2f} "
            f"{1000 * f['system']:>7.2f} {f['minflt']:>10.1f} {f['switches']:>9.1f} {f['preempted']:>11.1f} "
            f"{f['rss']:>8.0f}  {perf}" + (f"  errors {f['errors']:.0f}" if f["errors"] else ""))


def paired(path: str | None, bodies: list[tuple[bytes, str]], args: argparse.Namespace) -> None:
    """A fresh server and one that has served ``--prewarm`` seconds already, the same code, windows alternated
    (the order swapped each pair), so that both meet the same load: the fresh one's CPU per image ÷ the warm
    one's, pair by pair."""
    servers = [started(path, 0), started(path, 1)]
    if args.warm_first:  # the first server started is the warm one (whether the order of start matters)
        servers.reverse()
    try:
        tokens = [server.token() for server in servers]
        drive_sync(servers[1], tokens[1], bodies, args.clients, args.prewarm)
        time.sleep(2.0)
        print(f"\nfresh server against one warmed by {args.prewarm:.0f} s of {args.clients} clients "
              f"(PYTHONPATH {path or os.environ.get('PYTHONPATH', '')}), load {os.getloadavg()}")
        print(HEADER)
        for pair in range(args.windows):
            figures = {}
            for which in ((0, 1) if pair % 2 == 0 else (1, 0)):
                figures[which] = window(servers[which], tokens[which], bodies, args)
                print(line(("fresh", "warm")[which], pair + 1, figures[which]))
            print(f"{'':>6} {pair + 1:>6} fresh ÷ warm: CPU per image {figures[0]['cpu'] / figures[1]['cpu']:.3f}, "
                  f"images/s {figures[0]['rate'] / figures[1]['rate']:.3f}; load {os.getloadavg()[0]:.2f}")
    finally:
        for server in servers:
            server.stop()


HEADER = (f"{'server':>6} {'window':>6} {'images':>7} {'img/s':>7} {'CPU ms/img':>10} {'system':>7} "
          f"{'faults/img':>10} {'waits/img':>9} {'preempt/img':>11} {'RSS MiB':>8}  perf per image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--prewarm", type=float, default=30.0,
                        help="seconds of sync detect the warm server serves before the windows (30)")
    parser.add_argument("--warm-first", action="store_true", help="the first server started is the warm one")
    parser.add_argument("--server-src", help="run both servers from another source tree")
    parser.add_argument("--perf", action="store_true")
    args = parser.parse_args()
    bodies = [multipart(data) for _, _, data in uploads(1000)]
    paired(str(Path(args.server_src).resolve()) if args.server_src else None, bodies, args)


if __name__ == "__main__":
    main()
