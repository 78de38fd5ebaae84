"""Start-up cost of the server: importing the app, and ``labelloop serve`` until ``/healthz`` answers.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/bench_startup.py [--rounds 5] [--compare-src /tmp/before/src]

Each round runs, in fresh processes, for this tree's ``src`` and (with ``--compare-src``) the reference tree's,
alternated so that the two share the machine's drift:

1. **import**: ``python -c "import labelloop.app"``; CPU (user + system, the child's rusage) and wall time;
2. **what the import left for later**, in a second child after the import: the first Clopper–Pearson bound
   (``silent_errors.upper_bound``: the first detection with a silent-error target and audits pays it);
3. **serve, new home**: ``python -m labelloop serve`` on a fresh home (SQLite, admin password from the
   environment, as the test servers start) until ``GET /healthz`` answers 200: wall time and the server's CPU
   then (``/proc/PID/stat``, all its threads); polled every 20 ms from this process;
4. **serve, same home**: the same server stopped and started again on that home (a restart).

Medians and spreads (min–max) of the rounds, and each median as a ratio to the reference's, are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_summary import cpu_seconds

from conftest import free_port

HERE_SRC = Path(__file__).resolve().parent.parent / "src"
# Run in a child: the CPU the import of the app left for the first bound.
LATER = """
import json, time
import labelloop.app
t1 = time.process_time()
from labelloop.detection.silent_errors import upper_bound
upper_bound(1, 20)
t2 = time.process_time()
print(json.dumps({"first bound": t2 - t1}))
"""


def child_env(src: Path, **extra: str) -> dict[str, str]:
    """This environment with ``src`` first on the path and no LABELLOOP_ settings but ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    return {**env, "PYTHONPATH": str(src), **extra}


def timed_child(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``args`` to its end: (CPU seconds from its rusage, wall seconds, its stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE)
    out = process.stdout.read().decode() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{args} exited with {process.returncode}")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - start, out


def import_figures(src: Path) -> dict[str, float]:
    """CPU and wall of importing the app, then of what it left for the first bound."""
    cpu, wall, _ = timed_child([sys.executable, "-c", "import labelloop.app"], child_env(src))
    later = json.loads(timed_child([sys.executable, "-c", LATER], child_env(src))[2])
    return {"import CPU": cpu, "import wall": wall, **later}


def healthy(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def serve_until_healthy(src: Path, home: Path, timeout: float = 120.0) -> tuple[float, float]:
    """Start ``labelloop serve`` on ``home``; (wall seconds, server CPU seconds) when /healthz answers; stop it."""
    port = free_port()
    env = child_env(src, LABELLOOP_ADMIN_PASSWORD="admin-password-for-bench", LABELLOOP_LOG_FORMAT="json")
    start = time.perf_counter()
    with (home.parent / f"{home.name}.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "labelloop", "serve", "--home", str(home),
                                    "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not healthy(f"http://127.0.0.1:{port}/healthz"):
            if process.poll() is not None or time.perf_counter() - start > timeout:
                raise RuntimeError(f"server did not start (log: {home.parent / (home.name + '.log')})")
            time.sleep(0.02)
        return time.perf_counter() - start, cpu_seconds(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def serve_figures(src: Path, scratch: Path) -> dict[str, float]:
    """Start-up of a server on a new home, then of its restart on the same home."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=scratch))
    new_wall, new_cpu = serve_until_healthy(src, home)
    same_wall, same_cpu = serve_until_healthy(src, home)
    return {"serve new home wall": new_wall, "serve new home CPU": new_cpu,
            "serve same home wall": same_wall, "serve same home CPU": same_cpu}


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown rows: per figure, each tree's median (min–max) in ms and the ratio of medians to the reference."""
    names = list(results)
    figures = list(results[names[0]][0])
    header = "| figure | " + " | ".join(f"{n}: median (min–max) ms" for n in names)
    lines = [header + (" | ratio |" if len(names) > 1 else " |"), "|---" * (len(names) + 1 + (len(names) > 1)) + "|"]
    for figure in figures:
        cells, medians = [], []
        for name in names:
            values = [1000 * r[figure] for r in results[name]]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:.0f} ({min(values):.0f}–{max(values):.0f})")
        ratio = (f" | {medians[0] / medians[1]:.2f}" if medians[1] >= 1 else " | –") if len(names) > 1 else ""
        lines.append(f"| {figure} | " + " | ".join(cells) + ratio + " |")
    return "\n".join(lines)


def main() -> None:
    """Alternate the trees for ``--rounds`` rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds (5)")
    parser.add_argument("--compare-src", type=Path, metavar="SRC", help="the reference tree's src folder")
    parser.add_argument("--no-serve", action="store_true", help="imports only")
    args = parser.parse_args()
    trees = {"this": HERE_SRC, **({"reference": args.compare_src.resolve()} if args.compare_src else {})}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as scratch:
        for round_ in range(args.rounds):
            order = list(trees.items()) if round_ % 2 == 0 else list(reversed(trees.items()))
            for name, src in order:
                figures = import_figures(src)
                if not args.no_serve:
                    figures |= serve_figures(src, Path(scratch))
                results[name].append(figures)
            print(f"round {round_ + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()}, "
          f"{args.rounds} rounds")
    print(table(results))


if __name__ == "__main__":
    main()
