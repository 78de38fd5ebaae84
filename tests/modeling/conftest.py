"""Fixtures for the ML core: one backbone export per test run, real images (Pillow, scikit-learn data)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.export import ensure_backbone_onnx
from labelloop.modeling.training import LabeledImage

DIGIT_SIZE = 64


def png_bytes(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """Encode a Pillow image in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def render_digit(pixels: np.ndarray, size: int = DIGIT_SIZE) -> bytes:
    """An 8×8 load_digits array (0–16, ink high) as a size×size PNG, dark ink on white."""
    grey = (255 - pixels * (255 / 16)).round().astype(np.uint8)
    return png_bytes(Image.fromarray(grey).resize((size, size), Image.Resampling.BICUBIC))


@pytest.fixture(scope="session")
def digits() -> list[tuple[str, bytes]]:
    """All 1,797 load_digits images as (label, PNG bytes), label 'digit-N', in a fixed random order.

    The dataset is stored roughly by writer, so slices of it in stored order would test on other writers
    than they train on; a seeded shuffle makes each slice a random sample, the usual protocol.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    return [(f"digit-{data.target[i]}", render_digit(data.images[i])) for i in order]


def pick(digits: list[tuple[str, bytes]], per_label: int, skip: int = 0, prefix: str = "img") -> list[LabeledImage]:
    """`per_label` examples of each digit, after skipping the first `skip` of each (disjoint slices)."""
    seen: dict[str, int] = {}
    out = []
    for i, (label, data) in enumerate(digits):
        n = seen.get(label, 0)
        seen[label] = n + 1
        if skip <= n < skip + per_label:
            out.append(LabeledImage(f"images_labeled_by_folder/{label}/{prefix}-{i}.png", label, data))
    return out


@pytest.fixture(scope="session")
def backbone_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backbone ONNX file, exported once per test run."""
    return ensure_backbone_onnx(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def embedder(backbone_onnx: Path) -> Embedder:
    """An ONNX Runtime embedder on the session's backbone file."""
    return Embedder(backbone_onnx)


@pytest.fixture(scope="session")
def embedding_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder of the embedding cache shared by the training tests."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def cache(embedding_root: Path, embedder: Embedder) -> EmbeddingCache:
    """The session's embedding cache, namespaced by the backbone fingerprint."""
    return EmbeddingCache.for_embedder(embedding_root, embedder)


@pytest.fixture(scope="session")
def digits_split(digits: list[tuple[str, bytes]]) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """20 training images per digit and a disjoint held-out set of 40 per digit."""
    return pick(digits, 20, prefix="train"), pick(digits, 40, skip=20, prefix="test")


@pytest.fixture(scope="session")
def digits_result(digits_split, embedder: Embedder, cache: EmbeddingCache):
    """A head trained on 20 digits per label, evaluated on the disjoint held-out set."""
    from labelloop.modeling.training import train_head

    train, test = digits_split
    return train_head(train + test, embedder, cache, test_split={e.key for e in test})
