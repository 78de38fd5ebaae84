"""CPU per `Head.predict_proba` call with a familiarity bank, for the source tree on PYTHONPATH.

Run it under each tree in turn, fresh processes alternated, e.g.
`for i in 1 2 3; do for src in /path/to/old/src src; do PYTHONPATH=$src .venv/bin/python
bench/bench_familiarity_head.py --name $src; done; done` (add `OPENBLAS_NUM_THREADS=1` for one BLAS thread).
Prints the best of 5 × 50 calls per batch size and a digest of the probabilities (rounded to 6 places).
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

from labelloop.modeling.training import Head


def per_call_ms(head: Head, embeddings: np.ndarray, calls: int = 50, repeats: int = 5) -> float:
    """Best of ``repeats`` windows of ``calls`` calls: CPU milliseconds per call."""
    head.predict_proba(embeddings)
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            head.predict_proba(embeddings)
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="this tree")
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--rows", type=int, default=256, help="bank rows per label (at most 256 in training)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 4])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    dim = 1280
    bank = rng.standard_normal((args.labels, args.rows, dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=2, keepdims=True)
    head = Head([f"label{i}" for i in range(args.labels)], rng.standard_normal((args.labels, dim)),
                rng.standard_normal(args.labels), bank=bank, familiar_slope=12.0,
                familiar_offset=rng.standard_normal(args.labels), format=3)
    timings = {batch: per_call_ms(head, rng.standard_normal((batch, dim)).astype(np.float32))
               for batch in args.batches}
    digest = hashlib.sha256(np.round(head.predict_proba(rng.standard_normal((64, dim))), 6).tobytes()).hexdigest()
    print(args.name, " ".join(f"batch {b}: {ms:.2f} ms" for b, ms in timings.items()), f"digest {digest[:10]}")


if __name__ == "__main__":
    main()
