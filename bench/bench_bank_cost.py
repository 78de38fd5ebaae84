"""What a familiarity bank costs a serving process per image, in process: where `bench_detect`'s difference between
``--bank 10x256`` and ``--bank two-label`` goes.

    PYTHONPATH=src .venv/bin/python bench/bench_bank_cost.py [--rounds 4] [--seconds 6] [--clients 8]

Two inference units (a `Serving` with the real backbone, one single-thread session per core, as `labelloop serve`
runs them) are fed by ``--clients`` threads; each decodes one ~320 px photograph on a one-thread pool (the
server's prepare pool), submits it and waits for the answer. The serving version's head is switched between heads
of the same shape as the benchmark's two models, in turn, the order rotating each round: ``10x256`` (a realistic
bank: 10 labels × 256 rows) and ``2x18`` (sessions 1–14's model), random unit rows (a product's cost does not
depend on its values); ``10x256:blas`` is the realistic bank with its product in numpy, as before item 45. Per
phase: images/s, the process's CPU per image and, of it, the units' backbone runs and heads (each unit thread's
CPU around the call), and the mean batch size. A pair's difference is the bank's cost.

``--head-alone`` also prints each head's CPU per ``predict_proba`` call at batch 1, 2, 4 and 8 on this thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from photos import uploads  # noqa: E402
from threads import run_concurrently  # noqa: E402

from labelloop.modeling.embedding import Embedder, default_threads  # noqa: E402
from labelloop.modeling.export import ensure_backbone_onnx  # noqa: E402
from labelloop.modeling.images import prepare  # noqa: E402
from labelloop.modeling.serving import Serving  # noqa: E402
from labelloop.modeling.training import Head, l2_normalize, rowwise_product  # noqa: E402

BACKBONE = Path(os.environ.get("LABELLOOP_TEST_BACKBONE_FOLDER", f"/tmp/labelloop-test-backbone-{os.getuid()}"))
DIM = 1280


class BlasHead(Head):
    """A head whose bank product is numpy's (OpenBLAS), as before item 45: the bank's columns copied once, the
    product on blocks of 8 rows, the maximum per label after it."""

    def nearest_similarity(self, embeddings: np.ndarray) -> np.ndarray:
        assert self.bank is not None
        labels, rows, dim = self.bank.shape
        columns = self.__dict__.get("columns")
        if columns is None:
            columns = self.__dict__["columns"] = np.ascontiguousarray(self.bank.reshape(labels * rows, dim).T)
        cos = rowwise_product(l2_normalize(embeddings).astype(np.float32), columns)
        return cos.reshape(len(cos), labels, rows).max(axis=2).astype(np.float64)


def random_head(spec: str, seed: int = 0) -> Head:
    """A format-3 familiarity head with a bank of LABELSxROWS random unit rows (``spec``; with ``:blas``, its
    product in numpy as before item 45)."""
    size, _, kind = spec.partition(":")
    labels, rows = (int(part) for part in size.split("x"))
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((labels, rows, DIM)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=2, keepdims=True)
    return (BlasHead if kind == "blas" else Head)(
        [f"label{i}" for i in range(labels)], rng.standard_normal((labels, DIM)) * 0.05, rng.standard_normal(labels),
        bank=bank, familiar_slope=12.0, familiar_offset=rng.standard_normal(labels), format=3)


class Timed:
    """Thread CPU seconds spent inside a wrapped call, summed over every thread that made one."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.lock = threading.Lock()

    def call(self, function: Callable[[np.ndarray], np.ndarray], argument: np.ndarray) -> np.ndarray:
        """``function(argument)``, its thread CPU added to the sum."""
        started = time.thread_time()
        try:
            return function(argument)
        finally:
            spent = time.thread_time() - started
            with self.lock:
                self.seconds += spent
                self.calls += 1

    def take(self) -> tuple[float, int]:
        with self.lock:
            taken, self.seconds, calls, self.calls = self.seconds, 0.0, self.calls, 0
        return taken, calls


class TimedHead:
    """A head whose ``predict_proba`` calls are timed (thread CPU)."""

    def __init__(self, head: Head, timed: Timed) -> None:
        self.head, self.timed, self.labels = head, timed, head.labels

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return self.timed.call(self.head.predict_proba, embeddings)


class TimedEmbedder:
    """An embedder whose ``embed`` calls are timed (thread CPU)."""

    def __init__(self, embedder: Embedder, timed: Timed) -> None:
        self.embedder, self.timed = embedder, timed

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.timed.call(self.embedder.embed, batch)


def drive(serving: Serving, photos: list[bytes], clients: int, seconds: float) -> int:
    """``clients`` threads decode (on one shared thread, as the server's prepare pool) and submit one photo each
    and wait for it, for ``seconds``; returns the images answered."""
    done = [0] * clients
    stop = time.perf_counter() + seconds
    with ThreadPoolExecutor(max_workers=1) as decoder:
        def loop(k: int) -> None:
            i = k * 97
            while time.perf_counter() < stop:
                inputs = decoder.submit(prepare, photos[i % len(photos)]).result()[None, ...]
                serving.submit(inputs).result(timeout=120)
                done[k] += 1
                i += 1

        run_concurrently(loop, range(clients))
    return sum(done)


def phase(serving: Serving, name: str, head: Head, photos: list[bytes], args: argparse.Namespace,
          backbone: Timed, heads: Timed) -> dict[str, Any]:
    """One measured phase with ``head`` serving: images/s, CPU ms per image (process, backbone, head), batch."""
    serving.switch(serving.warm(name, TimedHead(head, heads)))
    drive(serving, photos, args.clients, 1.0)  # warm
    backbone.take(), heads.take()
    batches, cpu, wall = serving.batches, time.process_time(), time.perf_counter()
    images = drive(serving, photos, args.clients, args.seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    backbone_s, _ = backbone.take()
    head_s, calls = heads.take()
    return {"name": name, "rate": images / wall, "cpu": 1e3 * cpu / images, "backbone": 1e3 * backbone_s / images,
            "head": 1e3 * head_s / images, "head_call": 1e3 * head_s / max(1, calls),
            "batch": images / max(1, serving.batches - batches), "load": os.getloadavg()[0]}


def head_alone(heads: dict[str, Head]) -> None:
    """CPU per predict_proba call at batch 1, 2, 4, 8 (best of 5 × 30 calls) on this thread."""
    rng = np.random.default_rng(1)
    for name, head in heads.items():
        cells = []
        for batch in (1, 2, 4, 8):
            x = rng.standard_normal((batch, DIM)).astype(np.float32)
            head.predict_proba(x)
            best = float("inf")
            for _ in range(5):
                started = time.process_time()
                for _ in range(30):
                    head.predict_proba(x)
                best = min(best, (time.process_time() - started) / 30)
            cells.append(f"batch {batch} {1e3 * best:.2f} ms")
        print(f"head alone {name:>8}: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--heads", nargs="+", default=["10x256", "2x18"],
                        help="LABELSxROWS banks to compare (LABELSxROWS:blas: the product in numpy, as before item 45)")
    parser.add_argument("--head-alone", action="store_true")
    args = parser.parse_args()
    heads = {name: random_head(name) for name in args.heads}
    if args.head_alone:
        head_alone(heads)
    photos = [data for _, _, data in uploads(args.photos)]
    backbone, timed_heads = Timed(), Timed()
    path = ensure_backbone_onnx(BACKBONE)
    serving = Serving(lambda threads: TimedEmbedder(Embedder(path, threads=threads), backbone),  # type: ignore[arg-type, return-value]
                      units=default_threads())
    print(f"load average at start {os.getloadavg()}; {serving.units} units, {args.clients} clients")
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in heads}
    try:
        for index in range(args.rounds):
            names = list(heads)
            names = names[index % len(names):] + names[:index % len(names)]
            for name in names:
                row = phase(serving, name, heads[name], photos, args, backbone, timed_heads)
                rows[name].append(row)
                print(f"round {index + 1} {name:>8}: {row['rate']:6.1f} images/s, CPU {row['cpu']:5.2f} ms/img "
                      f"(backbone {row['backbone']:5.2f}, head {row['head']:4.2f}: {row['head_call']:4.2f} ms a "
                      f"batch), batch {row['batch']:.2f}, load {row['load']:.1f}", flush=True)
    finally:
        serving.close()
    first, *others = heads
    for other in others:
        for key in ("cpu", "backbone", "head"):
            pairs = [a[key] - b[key] for a, b in zip(rows[first], rows[other], strict=True)]
            print(f"{first} − {other}, {key} ms/img per round: " + ", ".join(f"{d:+.2f}" for d in pairs)
                  + f" (median {statistics.median(pairs):+.2f})")


if __name__ == "__main__":
    main()
