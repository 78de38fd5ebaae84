"""The benchmark's fairness helpers (bench/): threads that report their failures, set-up steps that take every
server alike, and the per-server table of CPU per image that shows the bench's own residue between positions."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_detect
import bench_sync_ab
from threads import run_concurrently


def test_run_concurrently_raises_the_first_failure_after_every_call_returned() -> None:
    finished: list[int] = []

    def work(n: int) -> None:
        time.sleep(0.05 * n)
        finished.append(n)
        if n in (1, 2):
            raise ValueError(f"call {n}")

    with pytest.raises(ValueError, match="call 2"):
        run_concurrently(work, [2, 1, 0, 3])  # 1 fails first, 2 comes first
    assert sorted(finished) == [0, 1, 2, 3]


def served(name: str) -> bench_detect.Served:
    return bench_detect.Served(name, None, bench_detect.Bank(2, 5))  # type: ignore[arg-type]


@pytest.mark.parametrize(("order", "expected"), [("forward", ["", "cmp1", "cmp2"]),
                                                 ("backward", ["cmp2", "cmp1", ""])])
def test_setup_steps_one_after_another_take_the_servers_in_the_order_asked(order: str, expected: list[str]) -> None:
    seen: list[str] = []
    bench_detect.each_server([served(""), served("cmp1"), served("cmp2")], lambda s: seen.append(s.name),
                             argparse.Namespace(setup_order=order))
    assert seen == expected


def test_concurrent_setup_steps_run_on_every_server_at_once() -> None:
    servers = [served(""), served("cmp1")]
    barrier = threading.Barrier(len(servers), timeout=10)  # broken (raises) unless both steps wait at once
    names: list[str] = []

    def step(s: bench_detect.Served) -> None:
        barrier.wait()
        names.append(s.name)

    bench_detect.each_server(servers, step, argparse.Namespace(setup_order="concurrent"))
    assert sorted(names) == ["", "cmp1"]


def test_the_per_server_table_gives_each_round_and_the_differences(capsys: pytest.CaptureFixture[str]) -> None:
    def row(phase: str, ms: float) -> bench_detect.Row:
        return bench_detect.Row(phase, 100.0, server_cpu=ms / 1000)

    rounds = [{"raw1": row("raw, batch 1", 9.0), "sync8": row("sync detect, 8 clients", mine),
               "sync8cmp1": row("sync detect, 8 clients [cmp1]", theirs)}
              for mine, theirs in ((14.0, 13.5), (14.2, 14.3), (13.9, 13.6))]
    bench_detect.print_positions(rounds, [served(""), served("cmp1")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2  # the heading and one phase: raw rows and the compared server's own keys left out
    assert lines[0].endswith("came first in: under test 2, cmp1 1")  # the order rotates round by round
    assert lines[1].startswith("sync detect, 8 clients ")
    assert "under test 14.00 14.20 13.90; cmp1 13.50 14.30 13.60" in lines[1]
    assert lines[1].endswith("cmp1 − under test -0.30 (-0.50 to +0.10)")


@pytest.mark.parametrize("servers", [1, 2, 3, 4, 5])
def test_sync_ab_orders_put_every_server_in_every_place_and_after_every_other_equally_often(servers: int) -> None:
    block = len(bench_sync_ab.williams(servers))
    orders = bench_sync_ab.phase_orders(servers, 2 * block, seed=3)
    assert all(sorted(order) == list(range(servers)) for order in orders)
    places = Counter((place, server) for order in orders for place, server in enumerate(order))
    assert set(places.values()) == {2 * block // servers}
    if servers > 1:
        follows = Counter(pair for order in orders for pair in pairwise(order))
        assert len(follows) == servers * (servers - 1) and len(set(follows.values())) == 1


def test_sync_ab_residues_are_each_phase_less_its_rounds_mean_by_place_and_by_server() -> None:
    orders = [[0, 1], [1, 0]]
    by_place, by_server = bench_sync_ab.residues({0: [10.0, 12.0], 1: [14.0, 12.0]}, orders)
    assert by_place == [[-2.0, 0.0], [2.0, 0.0]]
    assert by_server == [[-2.0, 0.0], [2.0, 0.0]]
    by_place, by_server = bench_sync_ab.residues({0: [10.0, 14.0], 1: [12.0, 10.0]}, orders)
    assert by_place == [[-1.0, -2.0], [1.0, 2.0]] and by_server == [[-1.0, 2.0], [1.0, -2.0]]
