"""Backbone throughput (ONNX Runtime vs eager torch) and training time, cold vs retrain.

    PYTHONPATH=src .venv/bin/python bench/bench_embedding.py [--images 1000] [--seconds 5]

Prints two tables:

1. raw ONNX Runtime backbone throughput at batch 1, 8 and 32 and eager PyTorch at batch 32, in the same
   run, with the ratio;
2. `train_head` on N images (load_digits rendered as 224×224 JPEGs, 10 labels) with an empty embedding
   cache, then a retrain after adding 10 new images, against the raw embedding time of those N images at
   batch 32 (targets: cold ≤ 1.5 × raw, retrain ≤ 5 s).

The backbone ONNX file is cached in bench/out/cache (ignored by git); the embedding cache is a fresh
temporary folder every run.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from labelloop.modeling.embedding import Embedder, EmbeddingCache, default_threads
from labelloop.modeling.export import ensure_backbone_onnx
from labelloop.modeling.training import LabeledImage, train_head

OUT = Path(__file__).resolve().parent / "out"


def rate(fn: Callable[[], object], batch: int, seconds: float) -> float:
    """Images per second of `fn` (one batch per call), after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 2:
            return calls * batch / elapsed


def throughput_table(embedder: Embedder, seconds: float) -> float:
    """Print the ONNX Runtime vs torch table; return ONNX Runtime images/s at batch 32."""
    import torch

    from labelloop.modeling.backbone import load_backbone

    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 8, 32):
        x = rng.uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
        rows.append((f"ONNX Runtime, batch {batch}", rate(lambda x=x: embedder.embed(x), batch, seconds)))
    torch.set_num_threads(default_threads())
    model = load_backbone()
    x32 = torch.from_numpy(rng.uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32))
    with torch.inference_mode():
        eager = rate(lambda: model(x32), 32, seconds)
    ort32 = rows[-1][1]
    print(f"\nBackbone throughput ({default_threads()} threads, {os.cpu_count()} CPUs)")
    print(f"{'engine':<28}{'images/s':>10}")
    for name, value in rows:
        print(f"{name:<28}{value:>10.1f}")
    print(f"{'eager PyTorch, batch 32':<28}{eager:>10.1f}")
    print(f"ONNX Runtime / PyTorch at batch 32: {ort32 / eager:.1f}×")
    return ort32


def digit_jpegs(count: int, offset: int = 0) -> list[tuple[str, bytes]]:
    """load_digits images rendered as 224×224 JPEGs (dark ink on white), labels 'digit-N'."""
    from sklearn.datasets import load_digits

    data = load_digits()
    out = []
    for i in range(offset, offset + count):
        pixels = data.images[i % len(data.images)]
        grey = (255 - pixels * (255 / 16)).round().astype(np.uint8)
        image = Image.fromarray(grey).resize((224, 224), Image.Resampling.BICUBIC).convert("RGB")
        if i >= len(data.images):  # beyond the dataset: a mirrored copy, so the bytes are new
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append((f"digit-{data.target[i % len(data.images)]}", buffer.getvalue()))
    return out


def as_examples(items: list[tuple[str, bytes]], offset: int = 0) -> list[LabeledImage]:
    return [LabeledImage(f"images_labeled_by_folder/{label}/{offset + i}.jpg", label, data)
            for i, (label, data) in enumerate(items)]


def training_table(embedder: Embedder, n_images: int, ort32: float) -> None:
    """Print cold training vs retrain after 10 new images."""
    base = as_examples(digit_jpegs(n_images))
    new = as_examples(digit_jpegs(10, offset=n_images), offset=n_images)
    with tempfile.TemporaryDirectory() as root:
        cache = EmbeddingCache.for_embedder(root, embedder)
        cold = train_head(base, embedder, cache)
        warm = train_head(base + new, embedder, cache)
    raw = n_images / ort32
    print(f"\nTraining ({n_images} images, 10 labels; raw backbone time for them at batch 32: {raw:.1f} s)")
    print(f"{'run':<26}{'embedded':>9}{'cached':>8}{'embed s':>9}{'fit s':>7}{'total s':>9}{'× raw':>7}{'F1':>7}")
    for name, result in (("cold (empty cache)", cold), ("retrain after +10 images", warm)):
        t = result.timings
        print(f"{name:<26}{result.images_embedded:>9}{result.images_from_cache:>8}{t['embed_s']:>9.2f}"
              f"{t['fit_s']:>7.2f}{t['total_s']:>9.2f}{t['total_s'] / raw:>7.2f}{result.evaluation.f1:>7.3f}")
    print(f"targets: cold ≤ 1.5 × raw ({1.5 * raw:.1f} s) -> {'met' if cold.timings['total_s'] <= 1.5 * raw else 'MISSED'}; "
          f"retrain ≤ 5 s -> {'met' if warm.timings['total_s'] <= 5 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images for the training table")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per throughput row")
    args = parser.parse_args()
    started = time.perf_counter()
    path = ensure_backbone_onnx(OUT / "cache")
    print(f"backbone ONNX ready in {time.perf_counter() - started:.1f} s: {path}")
    embedder = Embedder(path)
    ort32 = throughput_table(embedder, args.seconds)
    training_table(embedder, args.images, ort32)


if __name__ == "__main__":
    main()
