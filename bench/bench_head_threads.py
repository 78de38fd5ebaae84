"""The head's products on a unit's batch with numpy's BLAS on every core against one thread (`serving.OneBlasThread`),
in process.

    PYTHONPATH=src /work/main/.venv/bin/python bench/bench_head_threads.py [--rounds 5] [--serving-seconds 4]

1. **the head alone**: `Head.predict_proba` of format-3 heads with a familiarity bank the size real training sets
   give (2 labels × 256 rows, 10 × 256) and bench_detect's v1 size (2 × 18), at batches 1, 4 and 8: process CPU
   and wall milliseconds per call, OpenBLAS's default threads against inside `one_blas_thread`, alternated;
2. **a serving process's units** (``--serving-seconds``, 0 skips it): `Serving` with one single-thread backbone
   session per core, as `endpoint.serving` runs them, a 10 × 256 head, and 8 client threads submitting real ~320-px
   photos prepared as letterbox-fast: images/s and process CPU per image, with `one_blas_thread` as shipped and
   with it replaced by a no-op, alternated.

Medians of ``--rounds``; the machine is shared, so read the per-round pairs too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
DEFAULT_BACKBONE = ROOT / "bench" / "out" / "detect-home" / "cache" / "efficientnet_lite0.onnx"


def head(labels: int, rows: int) -> Any:
    """A format-3 head with a random unit-row bank of ``labels`` × ``rows``."""
    from labelloop.modeling.training import Head

    rng = np.random.default_rng(labels * 1000 + rows)
    bank = rng.normal(size=(labels, rows, 1280)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=2, keepdims=True)
    return Head(labels=[f"label{i}" for i in range(labels)], W=rng.normal(size=(labels, 1280)), b=np.zeros(labels),
                bank=bank, familiar_slope=8.0, familiar_offset=np.full(labels, -4.0))


def timed(call: Any, n: int) -> tuple[float, float]:
    """(process CPU ms, wall ms) per call."""
    call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        call()
    return 1000 * (time.process_time() - cpu) / n, 1000 * (time.perf_counter() - wall) / n


def head_part(rounds: int) -> None:
    from labelloop.modeling.serving import one_blas_thread

    rng = np.random.default_rng(0)
    for labels, rows in ((2, 18), (2, 256), (10, 256)):
        model = head(labels, rows)
        for size in (1, 4, 8):
            embeddings = rng.normal(size=(size, 1280)).astype(np.float32)
            n = 200 if labels * rows < 1000 else 60
            call = functools.partial(model.predict_proba, embeddings)
            free: list[tuple[float, float]] = []
            one: list[tuple[float, float]] = []
            for index in range(rounds):
                for way in (("free", "one") if index % 2 == 0 else ("one", "free")):
                    if way == "one":
                        with one_blas_thread:
                            one.append(timed(call, n))
                    else:
                        free.append(timed(call, n))
            with one_blas_thread:
                alone = call()
            same = np.array_equal(alone, call())
            print(f"bank {labels}×{rows}, batch {size}: CPU ms per call, BLAS default "
                  f"{statistics.median(c for c, _ in free):.3f} (wall {statistics.median(w for _, w in free):.3f}), "
                  f"one thread {statistics.median(c for c, _ in one):.3f} "
                  f"(wall {statistics.median(w for _, w in one):.3f}); rounds "
                  + ", ".join(f"{f[0]:.2f}/{o[0]:.2f}" for f, o in zip(free, one, strict=True))
                  + f"; one thread's answers equal: {same}", flush=True)


def serving_part(backbone: Path, rounds: int, seconds: float) -> None:
    from photos import uploads

    from labelloop.modeling import serving as serving_module
    from labelloop.modeling.embedding import Embedder, default_threads
    from labelloop.modeling.images import prepare

    inputs = [prepare(data, view="letterbox_fast")[None, ...] for _, _, data in uploads(64)]
    server = serving_module.Serving(lambda threads: Embedder(backbone, threads=threads), units=default_threads())
    model = head(10, 256)
    server.switch(server.warm("v1", model))
    shipped = serving_module.one_blas_thread

    def drive() -> tuple[float, float]:
        stop = time.perf_counter() + seconds
        done = [0] * 8

        def client(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                server.submit(inputs[i % len(inputs)]).result(timeout=120)
                done[k] += 1
                i += 8

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        cpu, wall = time.process_time(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        images = sum(done)
        return images / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / max(1, images)

    results: dict[str, list[tuple[float, float]]] = {"one BLAS thread": [], "BLAS default": []}
    try:
        drive()  # warm-up
        for index in range(rounds):
            order = list(results) if index % 2 == 0 else list(reversed(results))
            line = []
            for way in order:
                serving_module.one_blas_thread = shipped if way == "one BLAS thread" else contextlib.nullcontext()
                rate, cpu = drive()
                results[way].append((rate, cpu))
                line.append(f"{way} {rate:.1f}/s {cpu:.2f} ms")
            print(f"serving round {index + 1} (load {os.getloadavg()[0]:.1f}): " + ", ".join(line), flush=True)
    finally:
        serving_module.one_blas_thread = shipped
        server.close()
    for way, rows in results.items():
        print(f"serving, 10×256 head, 8 clients: {way}: {statistics.median(r for r, _ in rows):.1f} images/s, "
              f"{statistics.median(c for _, c in rows):.2f} ms CPU per image (medians of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serving-seconds", type=float, default=4.0)
    parser.add_argument("--backbone", type=Path, default=DEFAULT_BACKBONE)
    args = parser.parse_args()
    head_part(args.rounds)
    if args.serving_seconds > 0:
        serving_part(args.backbone, args.rounds, args.serving_seconds)


if __name__ == "__main__":
    main()
