"""Which head choices pay: regularisation, feature scaling, augmented views — measured on load_digits.

    PYTHONPATH=src .venv/bin/python bench/bench_head.py [--seeds 3]

Renders scikit-learn's load_digits as 64×64 PNGs (as tests/modeling does), embeds them once with every view
in `images.VIEWS` (cached in bench/out/embeddings, so a rerun skips the backbone), then for 10 and 20
training images per label and several random draws trains with `train_head` on the draw and evaluates on
all other images. Prints macro-F1 (mean ± sd over draws) and the expected calibration error of the test
confidences. The choices in training.py (C grid, no augmentation by default) come from this table.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from labelloop.modeling.embedding import Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.evaluation import evaluate
from labelloop.modeling.export import ensure_backbone_onnx
from labelloop.modeling.images import VIEWS
from labelloop.modeling.training import LabeledImage, fit_softmax, l2_normalize, train_head

OUT = Path(__file__).resolve().parent / "out"
SIZES = (10, 20)


def digits() -> list[LabeledImage]:
    """All load_digits images as 64×64 PNG examples."""
    from sklearn.datasets import load_digits

    data = load_digits()
    out = []
    for i, (pixels, target) in enumerate(zip(data.images, data.target, strict=True)):
        grey = (255 - pixels * (255 / 16)).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey).resize((64, 64), Image.Resampling.BICUBIC).save(buffer, "PNG")
        out.append(LabeledImage(f"digit-{target}/{i}.png", f"digit-{target}", buffer.getvalue()))
    return out


def draw(examples: list[LabeledImage], per_label: int, seed: int) -> tuple[list, list]:
    """`per_label` random training examples per label; the rest is the test set."""
    rng = np.random.default_rng(seed)
    train = []
    for label in sorted({e.label for e in examples}):
        members = [e for e in examples if e.label == label]
        train += [members[i] for i in rng.choice(len(members), per_label, replace=False)]
    chosen = {e.key for e in train}
    return train, [e for e in examples if e.key not in chosen]


Trainer = Callable[[list[LabeledImage], list[LabeledImage]], tuple[float, float]]


def library(embedder: Embedder, cache: EmbeddingCache, **options: object) -> Trainer:
    """train_head with options; returns (macro-F1, ECE) on the test part."""
    def run(train: list[LabeledImage], test: list[LabeledImage]) -> tuple[float, float]:
        result = train_head(train + test, embedder, cache, test_split={e.key for e in test}, **options)
        return result.evaluation.f1, result.evaluation.calibration["ece"]
    return run


def standardised(vectors: dict[str, np.ndarray], c: float) -> Trainer:
    """L2-normalise, then standardise each feature (train statistics), softmax regression, no calibration."""
    def run(train: list[LabeledImage], test: list[LabeledImage]) -> tuple[float, float]:
        labels = sorted({e.label for e in train})
        index = {label: i for i, label in enumerate(labels)}
        x, xt = (l2_normalize(np.stack([vectors[e.key] for e in part])) for part in (train, test))
        mean, std = x.mean(0), x.std(0) + 1e-6
        x, xt = (x - mean) / std, (xt - mean) / std
        theta = fit_softmax(x, np.array([index[e.label] for e in train]), len(labels), c)
        d = x.shape[1]
        logits = xt @ theta[:d * len(labels)].reshape(d, len(labels)) + theta[d * len(labels):]
        proba = np.exp(logits - logits.max(1, keepdims=True))
        evaluation = evaluate(labels, [index[e.label] for e in test], proba / proba.sum(1, keepdims=True))
        return evaluation.f1, evaluation.calibration["ece"]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="random draws per training-set size")
    args = parser.parse_args()
    examples = digits()
    embedder = Embedder(ensure_backbone_onnx(OUT / "cache"))
    cache = EmbeddingCache.for_embedder(OUT / "embeddings", embedder)
    started = time.perf_counter()
    cached = embed_cached(embedder, cache, {e.digest(): e.content for e in examples}, tuple(VIEWS))
    print(f"{len(examples)} digits × {len(VIEWS)} views ready in {time.perf_counter() - started:.0f} s "
          f"({cached.embedded} images embedded now)")
    vectors = {e.key: cached.get(e.digest()) for e in examples}
    rows: dict[str, Trainer] = {
        **{f"C={c:g} (fixed), calibrated": library(embedder, cache, c_grid=(c,)) for c in (1.0, 10.0, 100.0, 1000.0)},
        "default: C from {100, 1000} by CV": library(embedder, cache),
        "standardised features, C=100": standardised(vectors, 100.0),
        "default + flip": library(embedder, cache, augment=("flip",)),
        "default + center zoom": library(embedder, cache, augment=("zoom",)),
        "default + corner zooms": library(embedder, cache, augment=("zoom_tl", "zoom_br")),
        "default + all 4 views": library(embedder, cache, augment=("flip", "zoom", "zoom_tl", "zoom_br")),
    }
    header = "".join(f"{f'F1 @{n}/label':>16}{'ECE':>7}" for n in SIZES)
    print(f"\n{'head':<38}{header}")
    for name, trainer in rows.items():
        cells = ""
        for per_label in SIZES:
            scores = np.array([trainer(*draw(examples, per_label, seed)) for seed in range(args.seeds)])
            cells += f"{scores[:, 0].mean():>10.3f} ±{scores[:, 0].std():.3f}{scores[:, 1].mean():>7.3f}"
        print(f"{name:<38}{cells}", flush=True)


if __name__ == "__main__":
    main()
