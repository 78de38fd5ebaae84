"""The same three arms in one process, without the server: for finding out *why*, quickly (seconds, not minutes).

    .venv/bin/python -m bench.loop_simulation.offline [--training recommended|seed] [--threshold 70] \
        [--batch-size 50] [--seeds 0 1 2]

It calls what the server's steps call — `train_head` for training (same split, calibration, familiarity) and
`Head.predict_proba` for detection confidences — on cached embeddings, with the same data plan, the same
retraining rule (≥ 20 new labels) and the same selection rule as `detection.service.needs_human_review`.
The numbers it prints are diagnostics; the figures that count come from `python -m bench.loop_simulation`,
which runs the real system.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.export import ensure_backbone_onnx
from labelloop.modeling.images import content_hash
from labelloop.modeling.training import Head, LabeledImage, train_head

from .data import Digit, Plan, make_plan
from .run import OUT

MIN_UNTRAINED = 20


@dataclass
class World:
    plan: Plan
    embedder: Embedder
    cache: EmbeddingCache
    vectors: dict[int, np.ndarray]
    digests: dict[int, str]

    def x(self, digits: list[Digit]) -> np.ndarray:
        return np.stack([self.vectors[d.index] for d in digits])

    def train(self, labeled: list[Digit], **options) -> Head:
        examples = [LabeledImage(f"images_labeled_by_folder/{d.label}/{d.name}", d.label, d.png,
                                 self.digests[d.index]) for d in labeled]
        return train_head(examples, self.embedder, self.cache, **options).head

    def f1(self, head: Head) -> float:
        from sklearn.metrics import f1_score

        predicted = [head.labels[i] for i in head.predict_proba(self.x(self.plan.holdout)).argmax(1)]
        return float(f1_score([d.label for d in self.plan.holdout], predicted, average="macro"))


def world(seed: int, batch_size: int) -> World:
    plan = make_plan(seed=seed, batch_size=batch_size)
    embedder = Embedder(ensure_backbone_onnx(OUT / "cache"))
    cache = EmbeddingCache.for_embedder(OUT / "offline-embeddings", embedder)
    every = plan.holdout + plan.seed_set + plan.stream
    digests = {d.index: content_hash(d.png) for d in every}
    got = embed_cached(embedder, cache, {digests[d.index]: d.png for d in every})
    return World(plan, embedder, cache, {d.index: got.get(digests[d.index]) for d in every}, digests)


Selector = Callable[[Head, np.ndarray], np.ndarray]


def below(threshold: float) -> Selector:
    """The product's rule: top confidence (0–100) below the threshold."""
    return lambda head, x: head.predict_proba(x).max(1) * 100 < threshold


def simulate(w: World, select: Selector | None, budget: list[int] | None = None, seed: int = 0,
             **options: bool) -> tuple[list[tuple[int, float]], list[int]]:
    """One arm: select=None and budget=None is full supervision; budget given is random selection."""
    rng = np.random.default_rng(seed + 100)
    labeled = list(w.plan.seed_set)
    head = w.train(labeled, **options)
    curve, per_batch, answers, untrained = [(0, w.f1(head))], [], 0, 0
    for i, batch in enumerate(w.plan.batches):
        if budget is not None:
            chosen = [batch[j] for j in sorted(rng.choice(len(batch), budget[i], replace=False))]
        elif select is None:
            chosen = batch
        else:
            mask = select(head, w.x(batch))
            chosen = [d for d, m in zip(batch, mask, strict=True) if m]
        per_batch.append(len(chosen))
        labeled += chosen
        answers += len(chosen)
        untrained += len(chosen)
        if untrained >= MIN_UNTRAINED:
            head = w.train(labeled, **options)
            untrained = 0
            curve.append((answers, w.f1(head)))
    return curve, per_batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float, default=70.0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--random-draws", type=int, default=3)
    parser.add_argument("--training", choices=["recommended", "seed"], default="recommended")
    args = parser.parse_args()
    on = args.training == "recommended"
    options = {"final_on_all": on, "balance_labels": on}
    for seed in args.seeds:
        started = time.perf_counter()
        w = world(seed, args.batch_size)
        loop, budget = simulate(w, below(args.threshold), **options)
        draws = [simulate(w, None, budget, seed + draw, **options)[0] for draw in range(args.random_draws)]
        full, _ = simulate(w, None, **options)
        target = full[-1][1] - 0.02
        reached = next(((a, f) for a, f in loop if f >= target), None)
        print(f"seed {seed} ({time.perf_counter() - started:.0f}s): full {full[-1][1]:.4f} at {full[-1][0]}, "
              f"target {target:.4f}, loop reaches it at {reached[0] if reached else 'never'} answers "
              f"(allowed {0.3 * (full[-1][0] + 20) - 20:.0f}); loop last {loop[-1][1]:.4f} at {loop[-1][0]}")
        for i, (a, f) in enumerate(loop):
            r = [d[i][1] for d in draws]
            print(f"  {a:5d} answers: loop {f:.4f} random mean {np.mean(r):.4f} ({min(r):.4f}-{max(r):.4f}) "
                  f"{'+' if f > np.mean(r) else '-'}")


if __name__ == "__main__":
    main()
