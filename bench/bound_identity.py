"""The Clopper–Pearson bound is bit-identical through ``scipy.special.betaincinv`` and ``scipy.stats.beta.ppf``.

    PYTHONPATH=src .venv/bin/python bench/bound_identity.py [--max-audits 3000]

``silent_errors.upper_bound`` calls ``betaincinv(k + 1, n - k, level)`` (scipy.stats is not imported at start-up
any more); it used ``beta.ppf(level, k + 1, n - k)``. Both are evaluated at every level the module uses (the
overall one and the three stratified ones) for every 0 ≤ k < n ≤ ``--max-audits``, and for 200,000 random
(k, n) with n up to 10⁷ (counts of accepted detections reach that); the SHA-256 of each result array is printed
and the script fails unless they are equal.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np
from scipy.special import betaincinv
from scipy.stats import beta

from labelloop.detection.silent_errors import CONFIDENCE_LEVEL, STRATA_SPLIT


def levels() -> list[float]:
    """The levels upper_bound is called at: the overall one and each stratified part's, computed as the module
    computes them."""
    miss = 1 - CONFIDENCE_LEVEL
    return sorted({CONFIDENCE_LEVEL, *(1 - miss * share for share in STRATA_SPLIT)})


def cases(max_audits: int) -> tuple[np.ndarray, np.ndarray]:
    """(wrong, audits): every 0 ≤ k < n ≤ max_audits, then random pairs with n up to 10⁷."""
    n = np.arange(1, max_audits + 1)
    audits, wrong = np.meshgrid(n, np.arange(max_audits))
    keep = wrong < audits
    rng = np.random.default_rng(15)
    big = rng.integers(1, 10**7, 200_000)
    return (np.concatenate([wrong[keep], (rng.random(big.size) * big).astype(np.int64)]),
            np.concatenate([audits[keep], big]))


def main() -> int:
    """Print one line per level with both hashes; exit 1 unless every pair is equal."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-audits", type=int, default=3000)
    wrong, audits = cases(parser.parse_args().max_audits)
    same = True
    for level in levels():
        old = beta.ppf(level, wrong + 1, audits - wrong)
        new = betaincinv(wrong + 1, audits - wrong, level)
        digests = [hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()[:16] for values in (old, new)]
        same &= digests[0] == digests[1]
        print(f"level {level!r}: {wrong.size} bounds, beta.ppf {digests[0]}, betaincinv {digests[1]}")
    print("bit-identical" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
