"""Sync detect, source trees side by side, from a trained home: an A/B in about 3 minutes, without training.

    PYTHONPATH=src .venv/bin/python bench/bench_sync_ab.py --home bench/out/detect-home \\
        --src /work/base/src --src src [--src src] [--rounds 4] [--seconds 8] [--clients 8] [--client-nice N]

HOME is a home a ``bench_detect.py`` run left behind (v1 trained on the realistic bank, deployed, exported): every
``--src`` tree gets its own copy of it and a ``labelloop serve`` from it, so a server is up in seconds instead of the
minutes the set-up's training takes. The servers start at once; each round drives every one in turn with
``--clients`` keep-alive clients for ``--seconds`` (``bench_detect``'s clients and bodies: ~320-px real-photo JPEGs),
each measured phase after ``--warm-seconds`` of the same load unmeasured (a server idle while the others ran is
warmed again, whatever its place). The rounds' orders come from a Williams design (:func:`phase_orders`: every
server in every place, and right after every other, equally often over each block of 2 orders for 2 servers, 6 for
3, 4 for 4), the blocks shuffled with ``--seed``: use a multiple of the block as ``--rounds``. Per phase: images/s,
the server's CPU per image (user + system, from /proc) and its system part, waits and preemptions per image, p50,
errors, the cores the whole machine left idle, and the CPU per image of each thread role (names from ``py-spy
dump`` when py-spy is installed). At the end, per server: medians, and per round the difference from the first
``--src``; then each place's and each server's mean difference from its round's mean (the bench's own residue: give
one tree three times for an A/A/A; README Performance, the item on this bench's order).

``--client-nice N`` runs the client threads at nice N (a negative N needs root): the clients share the two cores with
the server, and how they and its threads share them moves the 8-client figures (README Performance, item 57).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))
from bench_detect import OUT, drive_sync, machine_idle_seconds, multipart, new_server, process_counters  # noqa: E402
from photos import uploads  # noqa: E402
from profile_summary import dumped_thread_names, role_seconds, thread_cpu  # noqa: E402
from threads import run_concurrently  # noqa: E402

from conftest import Server  # noqa: E402


@dataclass
class Tree:
    """One source tree's server and what its phases measured."""

    src: str
    server: Server
    token: str = ""
    names: dict[int, str] = field(default_factory=dict)  # thread id -> Python thread name
    cpu: list[float] = field(default_factory=list)  # server CPU ms per image, per round
    rate: list[float] = field(default_factory=list)  # images/s, per round


def start(src: str, home: Path, index: int) -> Tree:
    """A server from ``src`` on a fresh copy of ``home`` (production polling, as ``bench_detect`` runs it)."""
    server = new_server(src, OUT / f"sync-ab-home{index}")  # its home emptied
    shutil.copytree(home, server.home)
    return Tree(src, server)


def warm(tree: Tree, bodies: list[tuple[bytes, str]], clients: int) -> None:
    """Start ``tree``'s server, sign in, warm its serving path and read its thread names: run for every server at
    once, so that none is the first: with the servers warmed one after another, the first ``--src`` paid ~0.2 ms more
    of the units' CPU per image than the round's mean in 11 of 12 rounds of an A/A/A under load (not in another on a
    quiet machine; README Performance, the item on this bench's order)."""
    tree.server.start(timeout=300)
    tree.token = tree.server.token()
    drive_sync(tree.server, tree.token, bodies, clients, 3.0)
    tree.names = dumped_thread_names(tree.server.process.pid)  # type: ignore[union-attr]


def phase(tree: Tree, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> str:
    """One measured phase on ``tree``'s server; its line."""
    pid = tree.server.process.pid  # type: ignore[union-attr]
    before, threads, idle, wall = process_counters(pid), thread_cpu(pid), machine_idle_seconds(), time.perf_counter()
    row = drive_sync(tree.server, tree.token, bodies, clients, seconds)
    after, threads_after = process_counters(pid), thread_cpu(pid)
    idle, wall = machine_idle_seconds() - idle, time.perf_counter() - wall
    images = max(1, len(row.latencies))

    def per_image(key: str) -> float:
        return 1000 * (after[key] - before[key]) / images

    roles = {role: 1000 * used / images for role, used in role_seconds(threads, threads_after, tree.names).items()}
    tree.cpu.append(per_image("user") + per_image("system"))
    tree.rate.append(len(row.latencies) / wall)
    shares = ", ".join(f"{role} {ms:.2f}" for role, ms in sorted(roles.items(), key=lambda item: -item[1])
                       if ms > 0.005)
    p50 = 1000 * statistics.median(row.latencies) if row.latencies else float("nan")
    return (f"{tree.rate[-1]:6.1f} img/s, CPU {tree.cpu[-1]:5.2f} ms/img (system {per_image('system'):.2f}; "
            f"waits {(after['switches'] - before['switches']) / images:.1f}, preempted "
            f"{(after['preempted'] - before['preempted']) / images:.1f} per image), p50 {p50:.1f} ms, "
            f"{row.errors} errors, machine idle {idle / wall:.2f} cores | {shares}")


def williams(servers: int) -> list[list[int]]:
    """Orders of ``servers`` servers in which each is in every place equally often and right after every other
    equally often (a Williams design: ``servers`` orders for an even count, twice as many for an odd one)."""
    first, low, high = [0], 1, servers - 1
    while len(first) < servers:
        first.append(low)
        low += 1
        if len(first) < servers:
            first.append(high)
            high -= 1
    orders = [[(server + shift) % servers for server in first] for shift in range(servers)]
    return orders if servers % 2 == 0 else orders + [order[::-1] for order in orders]


def phase_orders(servers: int, rounds: int, seed: int) -> list[list[int]]:
    """Each round's order of the servers: the Williams design's orders, block after block, each block shuffled."""
    rng, orders = random.Random(seed), []
    while len(orders) < rounds:
        block = williams(servers)
        rng.shuffle(block)
        orders.extend(block)
    return orders[:rounds]


def residues(values: dict[int, list[float]], orders: list[list[int]]) -> tuple[list[list[float]], list[list[float]]]:
    """Each phase's difference from its round's mean (``values``: server -> per round), by place and by server."""
    by_place: list[list[float]] = [[] for _ in values]
    by_server: list[list[float]] = [[] for _ in values]
    for round_, order in enumerate(orders):
        mean = statistics.fmean(values[server][round_] for server in order)
        for place, server in enumerate(order):
            by_place[place].append(values[server][round_] - mean)
            by_server[server].append(values[server][round_] - mean)
    return by_place, by_server


def summary(trees: list[Tree], orders: list[list[int]]) -> list[str]:
    """The run's closing lines: per server its medians and per round its difference from s0; per place and per
    server the mean difference from the round's mean (with every round's)."""
    lines = []
    for i, tree in enumerate(trees):
        cpu = ", ".join(f"{a - b:+.2f}" for a, b in zip(tree.cpu, trees[0].cpu, strict=True))
        rate = ", ".join(f"{a - b:+.1f}" for a, b in zip(tree.rate, trees[0].rate, strict=True))
        lines.append(f"s{i} {tree.src}: CPU median {statistics.median(tree.cpu):.2f} ms/img, "
                     f"{statistics.median(tree.rate):.1f} img/s; per round − s0: CPU {cpu}; img/s {rate}")
    rate = residues({i: tree.rate for i, tree in enumerate(trees)}, orders)
    cpu = residues({i: tree.cpu for i, tree in enumerate(trees)}, orders)
    for kind, label in ((0, "place"), (1, "s")):
        for k, (rates, cpus) in enumerate(zip(rate[kind], cpu[kind], strict=True)):
            lines.append(f"{label}{k} − round mean: img/s {statistics.fmean(rates):+.2f} "
                         f"({', '.join(f'{x:+.1f}' for x in rates)}); CPU {statistics.fmean(cpus):+.3f} ms "
                         f"({', '.join(f'{x:+.2f}' for x in cpus)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="a trained home left by bench_detect.py")
    parser.add_argument("--src", action="append", required=True, help="a source tree (PYTHONPATH); repeatable")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warm-seconds", type=float, default=1.0, help="unmeasured load before each phase")
    parser.add_argument("--seed", type=int, default=0, help="shuffles each block of the rounds' orders")
    parser.add_argument("--client-nice", type=int, help="the client threads' nice value")
    args = parser.parse_args()
    bodies = [multipart(data) for _, _, data in uploads(600)]
    trees = [start(src, args.home, i) for i, src in enumerate(args.src)]
    orders = phase_orders(len(trees), args.rounds, args.seed)
    try:
        run_concurrently(lambda tree: warm(tree, bodies, args.clients), trees)
        if args.client_nice is not None:  # threads started from here on inherit it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), args.client_nice)
        print(f"{len(trees)} servers, {args.clients} clients (nice {os.getpriority(os.PRIO_PROCESS, 0)}), "
              f"{args.seconds:g}-s phases, started {time.strftime('%H:%M:%S', time.gmtime())} UTC")
        if args.rounds % len(williams(len(trees))):
            print(f"note: {args.rounds} rounds are not whole blocks of {len(williams(len(trees)))} orders: "
                  "the places are not balanced")
        for round_, order in enumerate(orders):
            for i in order:
                if args.warm_seconds > 0:
                    drive_sync(trees[i].server, trees[i].token, bodies, args.clients, args.warm_seconds)
                print(f"round {round_ + 1} s{i}: {phase(trees[i], bodies, args.clients, args.seconds)}", flush=True)
        print(f"ended {time.strftime('%H:%M:%S', time.gmtime())} UTC, load average {os.getloadavg()}")
        print("\n".join(summary(trees, orders)))
    finally:
        for tree in trees:
            tree.server.stop()


if __name__ == "__main__":
    main()
