"""The data of the simulation: scikit-learn's load_digits as PNGs, a fixed held-out 30 %, a seed set and a stream."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _render_digit():
    """tests/modeling/conftest.py's renderer (8×8 digit → 64×64 PNG, dark ink on white), so tests and bench agree."""
    spec = importlib.util.spec_from_file_location("labelloop_tests_modeling_conftest",
                                                  ROOT / "tests" / "modeling" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render_digit


@dataclass(frozen=True)
class Digit:
    """One load_digits image: its index in the data set, true label ('digit-N') and PNG bytes."""

    index: int
    label: str
    png: bytes

    @property
    def name(self) -> str:
        return f"digit{self.index:04d}.png"


@dataclass
class Plan:
    """Who is held out, who seeds v1, and the stream in arrival order (cut into batches)."""

    holdout: list[Digit]
    seed_set: list[Digit]
    stream: list[Digit]
    batch_size: int

    @property
    def batches(self) -> list[list[Digit]]:
        return [self.stream[i:i + self.batch_size] for i in range(0, len(self.stream), self.batch_size)]

    @property
    def labels(self) -> list[str]:
        return sorted({d.label for d in self.holdout})


def load_digits_png() -> list[Digit]:
    """All 1,797 digits rendered as tests/modeling renders them."""
    from sklearn.datasets import load_digits

    render = _render_digit()
    data = load_digits()
    return [Digit(i, f"digit-{int(t)}", render(pixels)) for i, (pixels, t) in
            enumerate(zip(data.images, data.target, strict=True))]


def make_plan(seed: int = 0, holdout_fraction: float = 0.3, seed_per_label: int = 2,
              batch_size: int = 50) -> Plan:
    """Stratified, seeded: hold out `holdout_fraction`; `seed_per_label` per label start; the rest streams."""
    from sklearn.model_selection import train_test_split

    digits = load_digits_png()
    labels = [d.label for d in digits]
    pool, holdout = train_test_split(digits, test_size=holdout_fraction, stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    order = [pool[i] for i in rng.permutation(len(pool))]
    seed_set, seen = [], {}
    for digit in order:
        if seen.get(digit.label, 0) < seed_per_label:
            seed_set.append(digit)
            seen[digit.label] = seen.get(digit.label, 0) + 1
    chosen = {d.index for d in seed_set}
    stream = [d for d in order if d.index not in chosen]
    holdout = sorted(holdout, key=lambda d: d.index)
    return Plan(holdout, seed_set, stream, batch_size)
