"""Open-set confidence on real photographs: Tux Paint's photo stamps (Debian `tuxpaint-stamps-default`,
installed by `make test-images`).

Five labels (mammal, bird, fruit, flower, vegetable) trained on 5 photos each, as the seed's walkthrough
trains on 5 images per label; the other photos of those labels are the known test; photos of kinds never
trained on (tools, hats, instruments, planets, fish, insects, vehicles, …) are the open set. The benchmark
(bench/real_images) measures the same on more tasks; this pins the behaviour the product promises.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.training import LabeledImage, softmax, train_head

STAMPS = Path("/usr/share/tuxpaint/stamps")
KNOWN = {"animals/mammals": "mammal", "animals/birds": "bird", "food/fruit": "fruit", "plants/flowers": "flower",
         "food/vegetables": "vegetable"}
OPEN = ("household", "clothes", "hobbies", "space", "vehicles", "sports", "military", "animals/fish",
        "animals/insects")
TRAIN_PER_LABEL = 5
THRESHOLD = 0.70


def _photos(folder: str) -> list[Path]:
    return sorted(p for p in (STAMPS / folder).rglob("*.png") if "cartoon" not in p.parts)


@pytest.fixture(scope="module")
def stamps() -> tuple[list[LabeledImage], list[LabeledImage], list[bytes]]:
    if not STAMPS.is_dir():
        if os.environ.get("LABELLOOP_REQUIRE_REAL_IMAGES") == "1":
            pytest.fail(f"{STAMPS} is missing: run `make test-images`")
        pytest.skip(f"{STAMPS} is missing: run `make test-images`")
    train, test = [], []
    for folder, label in KNOWN.items():
        for i, path in enumerate(_photos(folder)):
            example = LabeledImage(f"{label}/{path.name}", label, path.read_bytes())
            (train if i % 3 == 0 and sum(e.label == label for e in train) < TRAIN_PER_LABEL else test).append(example)
    strangers = [path.read_bytes() for folder in OPEN for path in _photos(folder)]
    return train, test, strangers


def test_photos_of_kinds_never_trained_on_rarely_reach_the_threshold(stamps, embedder: Embedder,
                                                                     cache: EmbeddingCache) -> None:
    train, test, strangers = stamps
    head = train_head(train + test, embedder, cache, test_split={e.key for e in test}).head
    known_x = embedder.embed_images([e.data() for e in test])
    open_x = embedder.embed_images(strangers)
    y = np.array([head.labels.index(e.label) for e in test])

    confidence, plain = head.predict_proba(known_x), softmax(head.logits(known_x))
    right = confidence.argmax(1) == y
    assert right.mean() >= 0.7  # the closed-set answer is mostly right (measured 0.78)
    confident_right = float((confidence.max(1)[right] >= THRESHOLD).mean())
    open_confident = float((head.predict_proba(open_x).max(1) >= THRESHOLD).mean())
    open_confident_softmax = float((softmax(head.logits(open_x)).max(1) >= THRESHOLD).mean())

    # Softmax alone lets about a quarter of the strangers through (measured 26 %); familiarity stops about half
    # of them (measured 14 %: the price of the coverage constraint, which keeps right answers confident on
    # labels that look alike; the contrast fit alone stopped all but 4 % and kept 44 % of right answers) …
    assert open_confident_softmax >= 0.15
    assert open_confident <= 0.2 and open_confident <= open_confident_softmax * 0.7
    # … while most right answers stay confident (measured 66 %) and confidence never exceeds the softmax's.
    assert confident_right >= 0.55
    assert np.all(confidence <= plain + 1e-9)
    assert (plain.max(1)[right] >= THRESHOLD).mean() >= confident_right


# A label of photos of *other* kinds ("none of the above": what reviewers answer for strangers), and strangers of
# kinds in neither: the benchmark's "What it would take: negatives" (bench/real_images/README.md) on the same
# photos.
NEGATIVE_KINDS = ("household", "clothes", "hobbies")
FURTHER_KINDS = ("space", "vehicles", "sports", "military", "animals/fish", "animals/insects")
NONE_LABEL = "none of the above"


def _strangers_confident(head, x: np.ndarray) -> float:
    """Share of images answered with a known label (not NONE_LABEL) at ≥ THRESHOLD."""
    proba = head.predict_proba(x)
    known = np.array([head.labels[i] != NONE_LABEL for i in proba.argmax(1)])
    return float(np.mean(known & (proba.max(1) >= THRESHOLD)))


def test_a_label_of_other_kinds_keeps_strangers_of_further_kinds_below_the_threshold(
        stamps, embedder: Embedder, cache: EmbeddingCache) -> None:
    train, test, _ = stamps
    negatives = [LabeledImage(f"none/{path.relative_to(STAMPS)}", NONE_LABEL, path.read_bytes())
                 for folder in NEGATIVE_KINDS for path in _photos(folder)]
    strangers = embedder.embed_images([path.read_bytes() for folder in FURTHER_KINDS for path in _photos(folder)])
    known_x = embedder.embed_images([e.data() for e in test])
    held_out = {e.key for e in test}
    plain = train_head(train + test, embedder, cache, test_split=held_out, balance_labels=True).head
    # balanced, as the server trains by default (Balance-Labels-In-Training): the extra label has 63 photos
    guarded = train_head(train + test + negatives, embedder, cache, test_split=held_out, balance_labels=True).head

    before, after = _strangers_confident(plain, strangers), _strangers_confident(guarded, strangers)
    y = np.array([guarded.labels.index(e.label) for e in test])
    right = float((guarded.predict_proba(known_x).argmax(1) == y).mean())
    # Without it a fifth of the strangers get a known label at ≥ 70 (measured 20.5 %); with 63 photos of other
    # kinds one in twenty does (measured 5.5 %), though none of their kinds was in that label …
    assert before >= 0.1
    assert after <= 0.08 and after <= before / 2
    # … at a price: at 5 photos per known label, some known photos are answered "none of the above" (right
    # answers measured 0.78 without the label, 0.59 with it; "none" answers count wrong here).
    assert right >= 0.5
