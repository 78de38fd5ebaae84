"""The product's head against a plain logistic regression on real photographs (issue 13, item 3).

Two classes of Tux Paint photo stamps (Debian `tuxpaint-stamps-default`, installed by `make test-images`):
animal photos (mammals, birds, insects, fish …) against every other photo stamp (plants, food, household
things, vehicles …); 10 training photos per class, every other photo held out (whole photos, never a crop of a
training photo). The reference is what a user would try first: scikit-learn's LogisticRegression with its
defaults on the raw embeddings of the same backbone (what the issue compared: 0.941 against 0.947). On
this test's 8 draws the head scored −0.5 to +3.8 points of macro-F1 above it, +1.2 on average (the benchmark's
own 8 draws of this task: +0.0 to +9.2, +4.3 on average; README "Better features"). A head that reads the
raw embeddings as plain logistic regression does, instead of L2-normalising them, is plain logistic
regression up to its C, and gives up that lead (measured on the benchmark: within ±0.5 point of it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from labelloop.modeling.embedding import CachedEmbeddings, Embedder, EmbeddingCache, embed_cached
from labelloop.modeling.images import content_hash
from labelloop.modeling.training import LabeledImage, train_head

STAMPS = Path("/usr/share/tuxpaint/stamps")
DRAWN = ("cartoon", "symbols", "town", "seasonal", "people", "naturalforces", "medical")
OTHER = ("plants", "food", "household", "vehicles", "clothes", "space", "hobbies", "military", "sports")
TRAIN_PER_CLASS = 10
DRAWS = 8


def _photos(top: str) -> list[Path]:
    return sorted(p for p in (STAMPS / top).rglob("*.png")
                  if not any(word in p.relative_to(STAMPS).parts for word in DRAWN))


@pytest.fixture(scope="module")
def photos() -> dict[str, list[LabeledImage]]:
    if not STAMPS.is_dir():
        if os.environ.get("LABELLOOP_REQUIRE_REAL_IMAGES") == "1":
            pytest.fail(f"{STAMPS} is missing: run `make test-images`")
        pytest.skip(f"{STAMPS} is missing: run `make test-images`")
    classes = {"animal": _photos("animals"), "other": [p for top in OTHER for p in _photos(top)]}
    return {label: [LabeledImage(f"{label}/{p.relative_to(STAMPS)}", label, p.read_bytes()) for p in paths]
            for label, paths in classes.items()}


def draws(photos: dict[str, list[LabeledImage]]) -> Iterator[tuple[int, list[LabeledImage], list[LabeledImage]]]:
    """Each draw's number, training photos (TRAIN_PER_CLASS per class, seeded by the draw) and held-out photos."""
    everything = [e for items in photos.values() for e in items]
    for draw in range(DRAWS):
        rng = np.random.default_rng(draw)
        train_keys = {items[i].key for items in photos.values()
                      for i in rng.permutation(len(items))[:TRAIN_PER_CLASS]}
        yield (draw, [e for e in everything if e.key in train_keys],
               [e for e in everything if e.key not in train_keys])


def plain_macro_f1(labels: list[str], train: list[LabeledImage], test: list[LabeledImage],
                   vectors: CachedEmbeddings) -> float:
    """Macro-F1 on ``test`` of scikit-learn's ``LogisticRegression()`` fitted on ``train``'s ``vectors``."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = ([vectors.get(content_hash(e.data())) for e in part] for part in (train, test))
    y_train, y_test = (np.array([labels.index(e.label) for e in part]) for part in (train, test))
    return _macro_f1(y_test, LogisticRegression(max_iter=5000).fit(x_train, y_train).predict(x_test))


def _macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, average="macro"))


def test_head_beats_plain_logistic_regression_on_two_classes_of_real_photos(photos, embedder: Embedder,
                                                                              cache: EmbeddingCache) -> None:
    everything = [e for items in photos.values() for e in items]
    vectors = embed_cached(embedder, cache, {content_hash(e.data()): e.content for e in everything})
    gains = []
    for draw, train, test in draws(photos):
        head = train_head(everything, embedder, cache, test_split={e.key for e in test}, seed=draw).head
        x_test = np.stack([vectors.get(content_hash(e.data())) for e in test])
        ours = _macro_f1(np.array([head.labels.index(e.label) for e in test]), head.predict_proba(x_test).argmax(1))
        gains.append(ours - plain_macro_f1(head.labels, train, test, vectors))
    # Measured: −0.005, 0.038, −0.004, 0.013, 0.003, 0.021, 0.006, 0.021 (mean +0.012).
    assert np.mean(gains) >= 0.005, f"head − plain logistic regression, macro-F1 per draw: {np.round(gains, 3)}"
