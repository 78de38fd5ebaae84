"""A model version's input view (crop | letterbox | letterbox-fast | letterbox-draft): preprocessing, the embedding
cache keys, training on the view, and serving that never runs a request prepared for one view on a version of another
(blue-green)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelloop.modeling.embedding import Embedder, EmbeddingCache
from labelloop.modeling.export import VIEW_PREPROCESSING
from labelloop.modeling.images import INPUT_VIEWS, prepare, view_key
from labelloop.modeling.serving import Serving, ViewChanged

from .conftest import pick, png_bytes
from .test_serving import GatedHead, RecordingHead


def _wide_photo() -> bytes:
    """A 300×120 image whose left and right edges differ from its centre (a centre crop loses them)."""
    pixels = np.full((120, 300, 3), 128, dtype=np.uint8)
    pixels[:, :60] = (255, 0, 0)
    pixels[:, -60:] = (0, 0, 255)
    return png_bytes(Image.fromarray(pixels))


def test_each_input_view_has_a_cache_key_and_a_preprocessing_in_words() -> None:
    assert view_key("crop") == "orig" and view_key(None) == "orig"  # rows and cache entries from before
    assert view_key("letterbox") == "letterbox"
    assert view_key("letterbox-fast") == "letterbox_fast"
    assert view_key("letterbox-draft") == "letterbox_draft"
    assert set(VIEW_PREPROCESSING) == set(INPUT_VIEWS)
    with pytest.raises(ValueError, match="unknown input view"):
        view_key("square")


def test_letterbox_keeps_the_edges_a_centre_crop_cuts_off() -> None:
    data = _wide_photo()
    crop, letterbox = prepare(data), prepare(data, view="letterbox")
    assert crop.shape == letterbox.shape == (3, 224, 224)
    red = (crop[0] > 0.9) & (crop[2] < -0.9)
    assert not red.any(), "the centre crop of a 300×120 image has no red edge"
    red = (letterbox[0] > 0.9) & (letterbox[2] < -0.9)
    assert red[:, :40].mean() > 0.3  # the left edge is there, long side scaled to 224


@pytest.mark.parametrize("view", ["letterbox", "letterbox_fast", "letterbox_draft"])
def test_training_on_a_letterbox_view_embeds_and_evaluates_that_view(digits: list[tuple[str, bytes]],
                                                                     embedder: Embedder, embedding_root: Path,
                                                                     view: str) -> None:
    from labelloop.modeling.training import train_head

    cache = EmbeddingCache(embedding_root / f"{view}-training", embedder.fingerprint)
    examples = pick(digits, 6, prefix="lb")
    result = train_head(examples, embedder, cache, view=view)
    assert result.head.meta["views"] == [view]
    digests = [result.digests[e.key] for e in examples]
    assert all((digest, view) in cache for digest in digests)
    others = {"orig", "letterbox", "letterbox_fast", "letterbox_draft"} - {view}
    assert not any((digest, other) in cache for digest in digests for other in others)  # only this view
    x = np.stack([prepare(e.data(), view=view) for e in examples[:2]])
    np.testing.assert_allclose(embedder.embed(x), np.stack([cache.get(digests[i], view) for i in range(2)]),
                               atol=1e-4)  # trained on the view's own preparation
    test = [e for e in examples if e.key in set(result.test_keys)]
    x = np.stack([cache.get(result.digests[e.key], view) for e in test])
    decided = {e.key: result.head.labels[int(p.argmax())] for e, p in zip(test, result.head.predict_proba(x),
                                                                         strict=True)}
    assert decided == {key: label for key, (label, _) in result.test_decisions.items()}  # evaluated on letterbox


def test_a_request_prepared_for_the_old_view_is_not_run_by_a_version_with_another(backbone_onnx: Path) -> None:
    """Blue-green from a crop version to a letterbox one: the request prepared (for crop) while the switch happens
    gets ViewChanged instead of being answered by the letterbox version; one prepared for letterbox is answered."""
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=1, max_batch=8)
    old, new = GatedHead(), RecordingHead()
    x = np.zeros((1, 3, 224, 224), dtype=np.float32)
    try:
        old.gate.set()
        serving.switch(serving.warm("v1", old, view="orig"))
        old.gate.clear()
        old.entered.clear()
        first = serving.submit(x, view="orig")
        assert old.entered.wait(timeout=120)  # v1 is running the first request's batch
        waiting = serving.submit(x, view="orig")  # prepared for v1's crop view, still queued
        serving.switch(serving.warm("v2", new, view="letterbox"))
        new.sizes.clear()
        old.gate.set()
        assert first.result(timeout=120)[0].version == "v1"
        with pytest.raises(ViewChanged, match="letterbox"):
            waiting.result(timeout=120)
        assert new.sizes == []  # v2 never ran the crop-prepared input
        again = serving.submit(x, view="letterbox").result(timeout=120)
        assert again[0].version == "v2" and again[0].view == "letterbox"
    finally:
        serving.close()


@pytest.mark.parametrize("view", ["letterbox", "letterbox_fast", "letterbox_draft"])
def test_the_predictor_prepares_images_with_its_heads_training_view(digits: list[tuple[str, bytes]],
                                                                    embedder: Embedder, embedding_root: Path,
                                                                    view: str) -> None:
    from labelloop.modeling.predict import Predictor
    from labelloop.modeling.training import train_head

    cache = EmbeddingCache(embedding_root / f"{view}-predictor", embedder.fingerprint)
    head = train_head(pick(digits, 4, prefix="lp"), embedder, cache, view=view).head
    predictor = Predictor(embedder, head)
    assert predictor.view == view
    data = _wide_photo()
    expected = head.predict_proba(embedder.embed(prepare(data, view=view)[None]))[0]
    [answer] = predictor.predict_bytes([data])
    np.testing.assert_allclose([c for _, c in sorted(answer)], 100 * expected[np.argsort(head.labels)], atol=1e-3)


def test_an_int8_backbone_calibrated_on_another_view_is_another_file() -> None:
    from labelloop.modeling import int8

    digests = ["a" * 64, "b" * 64]
    crop = int8.fingerprint("fp32", digests)
    assert crop == int8.fingerprint("fp32", digests, "orig")  # files built before input views keep their name
    assert int8.fingerprint("fp32", digests, "letterbox") != crop
