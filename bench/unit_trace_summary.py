"""What `bench/unit_trace` recorded in a server: per busy phase, where the inference units' time went.

    python bench/unit_trace_summary.py /tmp/trace-<pid>.jsonl [...]

A phase is a stretch of queued requests with no gap over 0.5 s, 3 s or longer. Per phase: images/s; per unit the
share of the phase's wall time it waited on an empty queue, ran the backbone (and the backbone's thread CPU over its
wall time: below 1, the unit was off its core) and ran heads; batches and head calls (two parts: a held batch
answered with the next one) and how long held batches waited; the images in the serving object over time (queued,
in a backbone, held or in a head) and, while a unit waited, how many were held.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def phases(queued: list[float]) -> list[tuple[float, float]]:
    """Stretches of queue events with no gap over 0.5 s, at least 3 s long."""
    found, start, last = [], None, None
    for t in sorted(queued):
        if start is None or t - last > 0.5:
            if start is not None and last - start >= 3:
                found.append((start, last))
            start = t
        last = t
    if start is not None and last - start >= 3:
        found.append((start, last))
    return found


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def weighted(steps: list[tuple[float, int]], t0: float, t1: float) -> float:
    """Time-weighted mean of a step function given as (time, change) pairs, between t0 and t1."""
    level, total, last = 0, 0.0, None
    for t, change in sorted(steps):
        if last is not None:
            total += level * overlap(last, t, t0, t1)
        level += change
        last = t
    return total / (t1 - t0)


def summary(path: Path) -> None:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    print(f"\n{path.name}: PYTHONPATH {' '.join(e[1] for e in events if e[0] == 'meta')}")
    queued = [e for e in events if e[0] == "q"]
    runs = [e for e in events if e[0] == "e" and e[1].startswith("inference-unit")]
    heads = [e for e in events if e[0] == "a"]
    waits = [e for e in events if e[0] == "w"]
    for t0, t1 in phases([e[1] for e in queued]):
        wall = t1 - t0
        images = sum(e[2] for e in queued if t0 <= e[1] <= t1)
        print(f"{path.name}: phase {t0:.1f}-{t1:.1f} ({wall:.1f} s), {images / wall:.1f} images/s queued")
        units = sorted({e[1] for e in runs})
        for unit in units:
            waited = sum(overlap(e[2], e[3], t0, t1) for e in waits if e[1] == unit)
            mine = [e for e in runs if e[1] == unit and t0 <= e[2] <= t1]
            backbone = sum(overlap(e[2], e[3], t0, t1) for e in mine)
            cpu = sum(e[4] for e in mine) / max(1e-9, sum(e[3] - e[2] for e in mine))
            head = sum(overlap(e[2], e[3], t0, t1) for e in heads if e[1] == unit)
            print(f"  {unit}: waited {waited / wall:.3f}, backbone {backbone / wall:.3f} (CPU/wall {cpu:.2f}), "
                  f"heads {head / wall:.3f}, other {1 - (waited + backbone + head) / wall:.3f}; "
                  f"{len(mine)} batches, mean {statistics.fmean([e[5] for e in mine] or [0]):.2f} images")
        inside = [e for e in heads if t0 <= e[2] <= t1]
        shared = [e for e in inside if len(e[4]) > 1]
        held = [e[2] - e[5][0] for e in shared]
        same = sum(1 for e in shared if e[6][0] == e[6][1])
        sizes = defaultdict(int)
        for e in inside:
            sizes[sum(e[4])] += 1
        print(f"  head calls {len(inside)}, of them two batches' {len(shared)} (held by the unit that answered "
              f"them: {same}); rows per call {dict(sorted(sizes.items()))}")
        if held:
            q = statistics.quantiles(held, n=10) if len(held) > 1 else held * 9
            print(f"  held {1000 * statistics.fmean(held):.1f} ms mean, p10 {1000 * q[0]:.1f}, p50 "
                  f"{1000 * statistics.median(held):.1f}, p90 {1000 * q[-1]:.1f}")
        steps_serving = [(e[1], e[2]) for e in queued] + [(e[3], -sum(e[4])) for e in heads]
        steps_backbone = [(e[2], e[5]) for e in runs] + [(e[3], -e[5]) for e in runs]
        steps_held = [(at, n) for e in heads for at, n in zip(e[5], e[4], strict=True)] + \
            [(e[2], -sum(e[4])) for e in heads]
        steps_head = [(e[2], sum(e[4])) for e in heads] + [(e[3], -sum(e[4])) for e in heads]
        serving, backbone = weighted(steps_serving, t0, t1), weighted(steps_backbone, t0, t1)
        held_mean, head_mean = weighted(steps_held, t0, t1), weighted(steps_head, t0, t1)
        print(f"  images in the serving object {serving:.2f}: in a backbone {backbone:.2f}, waiting for their head "
              f"(held) {held_mean:.2f}, in a head {head_mean:.2f}, queued (the rest) "
              f"{serving - backbone - held_mean - head_mean:.2f}")
        idle = [(max(e[2], t0), min(e[3], t1)) for e in waits if overlap(e[2], e[3], t0, t1) > 0]
        if idle:
            total = sum(b - a for a, b in idle)
            print(f"  while a unit waited ({len(idle)} waits, {1000 * total / len(idle):.2f} ms mean): held "
                  f"{sum(weighted(steps_held, a, b) * (b - a) for a, b in idle) / total:.2f} images, in the "
                  f"serving object {sum(weighted(steps_serving, a, b) * (b - a) for a, b in idle) / total:.2f}")


def main() -> None:
    for name in sys.argv[1:]:
        summary(Path(name))


if __name__ == "__main__":
    main()
