"""The inference units' backbone sessions under other ONNX Runtime options, in process, per batch size: what the
serving options (one shared arena, the memory pattern on: README Performance, items 44 and 55) cost in CPU on this
machine.

    PYTHONPATH=src .venv/bin/python bench/bench_unit_options.py [--rounds 4] [--seconds 2] [--batches 1,2,4,8]

``--units`` threads (2: one single-thread session per core, as ``endpoint.backbone_sessions`` gives) each run the
backbone at one batch size on real ~320-px photos prepared as `letterbox-fast`, for ``--seconds``; per way and batch
size: the process's CPU per image, the ways alternated and their order rotated every round; medians of the rounds.
Ways (``--ways``):

- ``serving``: `embedding.session_options(1)` as the units run (the process's shared arena, memory pattern on);
- ``no-pattern``: the same with the memory pattern off (the units' options in sessions 16-18, item 44);
- ``own``: a session arena of its own, memory pattern on (ONNX Runtime's defaults; a training's session);
- ``own-nopattern``: an arena of its own, memory pattern off;
- ``no-arena``: no arena at all (every tensor from malloc), memory pattern off.

The embeddings of every way are compared with the first way's (they must be bit for bit the same).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_unit_sessions import drive  # noqa: E402

BACKBONE = Path(os.environ.get("LABELLOOP_TEST_BACKBONE_FOLDER", f"/tmp/labelloop-test-backbone-{os.getuid()}"))
WAYS = ("serving", "no-pattern", "own", "own-nopattern", "no-arena")


def options(way: str) -> Any:
    """The session options of ``way`` (one intra-op thread)."""
    from labelloop.modeling.embedding import session_options

    if way in ("serving", "no-pattern"):
        chosen = session_options(1)
        chosen.enable_mem_pattern = way == "serving"
        return chosen
    chosen = session_options(1, shared_arena=False)
    chosen.enable_mem_pattern = way == "own"
    chosen.enable_cpu_mem_arena = way != "no-arena"
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", type=Path, default=BACKBONE / "efficientnet_lite0.onnx")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--units", type=int, default=2)
    parser.add_argument("--ways", default=",".join(WAYS))
    args = parser.parse_args()

    import onnxruntime as ort
    from photos import uploads

    from labelloop.modeling.images import prepare

    inputs = np.stack([prepare(data, view="letterbox_fast") for _, _, data in uploads(16)])
    names = args.ways.split(",")
    batches = [int(size) for size in args.batches.split(",")]
    ways = {name: [ort.InferenceSession(str(args.backbone), options(name), providers=["CPUExecutionProvider"])
                   for _ in range(args.units)] for name in names}
    reference = None
    for name, sessions in ways.items():
        got = sessions[0].run(["embedding"], {"input": inputs[:8]})[0]
        reference = got if reference is None else reference
        print(f"{name}: embeddings bit for bit the first way's: {np.array_equal(got, reference)}")
        for size in batches:
            drive(sessions, np.ascontiguousarray(inputs[:size]), 0.3)  # warm-up at every size
    results: dict[tuple[str, int], list[float]] = {(name, size): [] for name in names for size in batches}
    print(f"load average at start {os.getloadavg()}", flush=True)
    for index in range(args.rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for size in batches:
            cells = []
            for name in order:
                _, cpu = drive(ways[name], np.ascontiguousarray(inputs[:size]), args.seconds)
                results[(name, size)].append(cpu)
                cells.append(f"{name} {cpu:.2f}")
            print(f"round {index + 1} batch {size}: " + ", ".join(cells) + " CPU ms/img", flush=True)
    print(f"load average at end {os.getloadavg()}; medians of {args.rounds} rounds, CPU ms per image:")
    for name in names:
        print(f"  {name:14s} " + "  ".join(f"b{size} {statistics.median(results[(name, size)]):5.2f}"
                                           for size in batches))


if __name__ == "__main__":
    main()
