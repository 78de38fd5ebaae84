"""The inference units' backbone sessions, in process: one session per unit against one session shared by the units,
and the backbone file as it is (``embedding`` and the ImageNet ``logits``) against a copy with only ``embedding``.

    PYTHONPATH=src .venv/bin/python bench/bench_unit_sessions.py [--rounds 4] [--seconds 3] [--batch 4]

``--units`` threads (2: one per core, as ``endpoint.backbone_sessions`` gives on this machine) each run the backbone
on one intra-op thread at ``--batch`` (the micro-batcher's ~4 at 8 clients) on real ~320-px photos prepared as
`letterbox-fast`, for ``--seconds``; per way: images/s and the process's CPU per image, the ways alternated, the order
rotated every round; medians of the rounds. The embeddings of every way are compared with the first way's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from threads import run_concurrently  # noqa: E402

DEFAULT_BACKBONE = ROOT / "bench" / "out" / "detect-home" / "cache" / "efficientnet_lite0.onnx"


def embedding_only(path: Path) -> Path:
    """A copy of the backbone file whose only output is ``embedding`` (the classifier's nodes removed)."""
    import onnx

    from labelloop.modeling.export import _prune_dead_nodes

    model = onnx.load(str(path))
    kept = [output for output in model.graph.output if output.name == "embedding"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    _prune_dead_nodes(model.graph)
    out = Path(tempfile.mkdtemp()) / "embedding-only.onnx"
    onnx.save(model, str(out))
    return out


def drive(sessions: list, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """Each session (one per thread; the same object twice for a shared one) runs ``batch`` until ``seconds``
    pass: (images/s, process CPU ms per image)."""
    done = [0] * len(sessions)
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        while time.perf_counter() < stop:
            sessions[k].run(["embedding"], {"input": batch})
            done[k] += len(batch)

    began, cpu = time.perf_counter(), time.process_time()
    run_concurrently(loop, range(len(sessions)))
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    images = sum(done)
    return images / wall, 1000 * cpu / max(1, images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", type=Path, default=DEFAULT_BACKBONE)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--units", type=int, default=2)
    parser.add_argument("--ways", default="own,shared,own-pruned,shared-pruned")
    args = parser.parse_args()

    import onnxruntime as ort
    from photos import uploads

    from labelloop.modeling.embedding import session_options
    from labelloop.modeling.images import prepare

    photos = uploads(64)
    inputs = np.stack([prepare(data, view="letterbox_fast") for _, _, data in photos])
    batch = np.ascontiguousarray(inputs[:args.batch])
    pruned = embedding_only(args.backbone)

    def session(path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])

    ways: dict[str, list] = {}
    for name in args.ways.split(","):
        path = pruned if name.endswith("-pruned") else args.backbone
        if name.startswith("shared"):
            one = session(path)
            ways[name] = [one] * args.units
        else:
            ways[name] = [session(path) for _ in range(args.units)]
    reference = None
    for name, sessions in ways.items():
        got = sessions[0].run(["embedding"], {"input": inputs[:8]})[0]
        reference = got if reference is None else reference
        print(f"{name}: embeddings equal to the first way's: {np.array_equal(got, reference)} "
              f"(max |diff| {float(np.max(np.abs(got - reference))):.2e})")
        drive(sessions, batch, 0.5)  # warm-up: the memory pattern of this batch size
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    names = list(ways)
    for index in range(args.rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        load = os.getloadavg()[0]
        line = []
        for name in order:
            rate, cpu = drive(ways[name], batch, args.seconds)
            results[name].append((rate, cpu))
            line.append(f"{name} {rate:.1f}/s {cpu:.2f} ms")
        print(f"round {index + 1} (load {load:.1f}): " + ", ".join(line), flush=True)
    print(f"medians of {args.rounds} rounds, {args.units} threads, batch {args.batch}:")
    for name, rows in results.items():
        print(f"  {name:14s} {statistics.median(r for r, _ in rows):7.1f} images/s "
              f"{statistics.median(c for _, c in rows):6.2f} ms CPU/img")


if __name__ == "__main__":
    main()
