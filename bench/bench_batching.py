"""How busy the cores stay when concurrent clients detect through the micro-batcher, in one process, alternated.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/bench_batching.py [--rounds 4] [--seconds 4] [--clients 8]

``--clients`` threads each detect one ~320 px real photo at a time (as ``POST /detect`` clients do, without the
HTTP layer) through a ``Serving`` with one single-thread inference unit per core (the server's set-up), in three
ways, alternated round by round so that each meets the same load:

- **prepare pool, batches of up to 8** (what ``POST /detect`` does): a pool as wide as the cores decodes and
  prepares, then queues the input; the unit that wakes takes every input waiting, up to 8;
- **prepare pool, one image per run**: the same hand-offs, ``max_batch`` 1;
- **prepared in the client's thread**: no pool, so one hand-off fewer; batches of up to 8.

(A fourth way, each unit decoding the images it takes, was tried and measured with this file at 87f4f41 and
reverted: README Performance, item 15.)

``--backbone-only``: the backbone alone instead, one single-thread session per core side by side, at batch 1, 2, 4
and 8 alternated: CPU per image (does the batch size itself change it?).

Per way: images/s, this process's CPU per image, the mean batch, and the cores kept busy (CPU seconds per
second). Throughput is cores busy ÷ CPU per image, so a way that keeps more cores busy at the same CPU per
image is faster for that reason alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_sync_parts import run_clients  # noqa: E402
from photos import uploads  # noqa: E402
from threads import run_concurrently  # noqa: E402

from labelloop.modeling.embedding import Embedder, default_threads  # noqa: E402
from labelloop.modeling.export import ensure_backbone_onnx  # noqa: E402
from labelloop.modeling.images import prepare  # noqa: E402
from labelloop.modeling.serving import Serving  # noqa: E402

WAYS = ("prepare pool, batches of up to 8", "prepare pool, one image per run", "prepared in the client's thread")


class OneLabel:
    """A head that answers one label: the cost is the backbone's, the preparation's and the hand-offs'."""

    labels = ["photo"]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return np.ones((len(embeddings), 1), dtype=np.float32)


def prepared(data: bytes, view: str = "orig") -> np.ndarray:
    """One photo as a 1×3×224×224 batch (``endpoint.prepare_image``)."""
    return prepare(data, view=view)[None, ...]


def detect_for(way: str, serving: Serving, pool: ThreadPoolExecutor, data: bytes) -> None:
    """Detect one photo ``way``, waiting for its answer."""
    if way == WAYS[2]:
        serving.submit(prepared(data)).result()
    else:
        pool.submit(lambda: serving.submit(prepared(data))).result().result()


def measure(way: str, serving: Serving, pool: ThreadPoolExecutor, photos: list[bytes], clients: int,
            seconds: float) -> tuple[float, float, float, float]:
    """(images/s, CPU ms per image, mean batch, cores busy) of ``clients`` threads detecting for ``seconds``."""
    serving.max_batch = 1 if way == WAYS[1] else 8
    batches = serving.batches
    images, wall, cpu = run_clients(clients, seconds, photos, lambda data: detect_for(way, serving, pool, data))
    return images / wall, 1000 * cpu / images, images / max(1, serving.batches - batches), cpu / wall


def backbone_only(embedders: list[Embedder], inputs: np.ndarray, rounds: int, seconds: float) -> None:
    """Print the CPU per image of one single-thread session per core running side by side, per batch size."""
    sizes = (1, 2, 4, 8)
    measured: dict[int, list[float]] = {size: [] for size in sizes}
    for index in range(rounds):
        for size in sizes if index % 2 == 0 else sizes[::-1]:
            done = [0] * len(embedders)
            stop = time.monotonic() + seconds

            def run(unit: int, size: int = size, stop: float = stop, done: list[int] = done) -> None:
                while time.monotonic() < stop:
                    start = (done[unit] * 7) % (len(inputs) - size + 1)
                    embedders[unit].embed(inputs[start:start + size])
                    done[unit] += size

            cpu = time.process_time()
            run_concurrently(run, range(len(embedders)))
            measured[size].append(1000 * (time.process_time() - cpu) / sum(done))
        print(f"round {index + 1}  " + "  ".join(f"batch {size}: {measured[size][-1]:5.2f}" for size in sizes)
              + "  CPU ms/img", flush=True)
    print("median   " + "  ".join(f"batch {size}: {statistics.median(measured[size]):5.2f}" for size in sizes)
          + "  CPU ms/img")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="each way's phase per round (4)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backbone-only", action="store_true", help="the backbone alone, per batch size")
    args = parser.parse_args()

    path = ensure_backbone_onnx(Path(tempfile.gettempdir()) / f"labelloop-test-backbone-{os.getuid()}")
    photos = [data for _, _, data in uploads(64)]
    cores = default_threads()
    if args.backbone_only:
        embedders = [Embedder(path, threads=1) for _ in range(cores)]
        inputs = np.stack([prepare(data) for data in photos[:32]])
        for embedder in embedders:
            embedder.embed(inputs[:8])
        print(f"load average at start: {os.getloadavg()}; {cores} single-thread sessions side by side")
        backbone_only(embedders, inputs, args.rounds, args.seconds)
        print(f"load average at end: {os.getloadavg()}")
        return
    serving = Serving(lambda threads: Embedder(path, threads=threads), units=cores)
    measured: dict[str, list[tuple[float, float, float, float]]] = {way: [] for way in WAYS}
    print(f"load average at start: {os.getloadavg()}; {cores} cores, {cores} single-thread units, "
          f"{args.clients} clients")
    try:
        serving.switch(serving.warm("bench", OneLabel()))
        with ThreadPoolExecutor(max_workers=cores) as pool:
            for index in range(args.rounds):
                for way in WAYS if index % 2 == 0 else WAYS[::-1]:
                    row = measure(way, serving, pool, photos, args.clients, args.seconds)
                    measured[way].append(row)
                    print(f"round {index + 1}  {way:36s} {row[0]:6.1f} images/s  {row[1]:5.2f} CPU ms/img  "
                          f"batch {row[2]:4.2f}  cores busy {row[3]:4.2f}", flush=True)
    finally:
        serving.close()
    print(f"load average at end: {os.getloadavg()}")
    for way, rows in measured.items():
        rate, cpu, batch, busy = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"median  {way:36s} {rate:6.1f} images/s  {cpu:5.2f} CPU ms/img  batch {batch:4.2f}  "
              f"cores busy {busy:4.2f}")


if __name__ == "__main__":
    main()
