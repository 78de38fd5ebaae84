"""The letterbox-draft input view: decoded at the smallest scale whose long side is still ≥ 7/8 of the input size
(196 of 224; JPEG in the DCT domain, other formats by Image.reduce), then letterboxed with the bilinear resize, so
a 4:3 upload at 320 px (427×320) decodes at 1/2 instead of in full; the decoding rules (limits, modes) still hold.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from labelloop.modeling.export import VIEW_PREPROCESSING
from labelloop.modeling.images import (
    DRAFT_FLOOR,
    INPUT_VIEW_SUMMARIES,
    INPUT_VIEWS,
    SMALL_DECODE_VIEWS,
    ImageRejected,
    decode_for,
    decode_small,
    prepare,
    prepare_views,
    view_key,
)

from .conftest import png_bytes
from .test_images import FORMS, _gradient
from .test_images_fast import _photo

DRAFT = "letterbox_draft"


def _jpeg(size: tuple[int, int]) -> bytes:
    return png_bytes(_photo(size), "JPEG", quality=90)


def test_the_view_is_an_input_view_with_its_own_cache_key_and_words() -> None:
    assert view_key("letterbox-draft") == DRAFT == INPUT_VIEWS["letterbox-draft"]
    assert DRAFT not in {view_key(other) for other in INPUT_VIEWS if other != "letterbox-draft"}
    assert SMALL_DECODE_VIEWS[DRAFT] == SMALL_DECODE_VIEWS["letterbox_draft_flip"] == DRAFT_FLOOR == 7 / 8
    assert "≥ 196" in VIEW_PREPROCESSING["letterbox-draft"] and "DCT" in VIEW_PREPROCESSING["letterbox-draft"]
    assert "7/8" in INPUT_VIEW_SUMMARIES["letterbox-draft"]


@pytest.mark.parametrize(("size", "fmt", "draft", "fast"), [
    ((427, 320), "JPEG", (214, 160), (427, 320)),  # a 4:3 upload at 320 px: 1/2 instead of a full decode
    ((320, 400), "JPEG", (160, 200), (320, 400)),  # portrait, long side 400 ≥ 2 × 196
    ((391, 300), "JPEG", (391, 300), (391, 300)),  # 391 // 196 = 1: decoded in full
    ((480, 320), "JPEG", (240, 160), (240, 160)),  # 3:2 and 16:9 uploads: 1/2 in both views
    ((320, 320), "JPEG", (320, 320), (320, 320)),  # a square upload: in full in both
    ((1600, 1200), "JPEG", (200, 150), (400, 300)),  # a phone-size photo: 1/8 instead of 1/4
    ((420, 300), "PNG", (210, 150), (420, 300)),  # other formats: Image.reduce by 2 instead of as it is
])
def test_the_decode_is_the_smallest_scale_whose_long_side_is_at_least_196(
        size: tuple[int, int], fmt: str, draft: tuple[int, int], fast: tuple[int, int]) -> None:
    data = png_bytes(_photo(size), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    assert decode_for(data, DRAFT).size == draft == decode_small(data, floor=7 / 8).size
    assert decode_for(data, "letterbox_draft_flip").size == draft
    assert decode_for(data, "letterbox_fast").size == fast  # letterbox-fast: as before


def test_a_4_3_upload_gives_the_letterbox_picture_from_the_half_size_decode() -> None:
    data = _jpeg((427, 320))
    draft, fast = prepare(data, view=DRAFT), prepare(data, view="letterbox_fast")
    assert draft.shape == (3, 224, 224) and draft.dtype == np.float32 and draft.flags.c_contiguous
    assert draft.min() >= -1.0 and draft.max() <= 1.0
    assert not np.array_equal(draft, fast)  # another decode, so another input ...
    assert np.abs(draft - fast).mean() < 0.02  # ... of the same picture
    # 214×160 → 224×167 centred: rows 28 … 194 hold the photo, the rest is one colour (the border's mean)
    assert np.ptp(draft[:, :28], axis=(1, 2)).max() == 0 and np.ptp(draft[:, 195:], axis=(1, 2)).max() == 0
    assert np.ptp(draft[:, 28:195], axis=(1, 2)).min() > 0.5


def test_the_flip_view_mirrors_and_mixed_views_decode_as_each_needs() -> None:
    data = png_bytes(_gradient(size=(427, 320)), "JPEG", quality=90)
    views = ("letterbox", "letterbox_fast", DRAFT, "letterbox_draft_flip")
    letterbox, fast, draft, flip = prepare_views(data, views)
    for view, x in zip(views[:3], (letterbox, fast, draft), strict=True):
        np.testing.assert_array_equal(x, prepare(data, view=view))
    np.testing.assert_allclose(flip, draft[:, :, ::-1], atol=1e-6)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_every_form_decodes_to_a_model_input(name: str) -> None:
    x = prepare(FORMS[name], view=DRAFT)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0


def _palette(size: tuple[int, int]) -> Image.Image:
    return _gradient(size=size).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)


@pytest.mark.parametrize("size", [(420, 300), (480, 320)])  # reduced by 2 here (from 392 px), by 2 in both at 448
def test_palette_bilevel_and_16_bit_images_reduced_by_the_draft_are_inputs(size: tuple[int, int]) -> None:
    """`Image.reduce` refuses '1', 'P' and 'I;16' (the session-9 bug of letterbox-fast, from 448 px on): the
    draft view reduces from 392 px on, and reads them as their RGB (or 8-bit) equivalents."""
    palette = _palette(size)
    for fmt in ("PNG", "GIF"):
        assert np.array_equal(prepare(png_bytes(palette, fmt), view=DRAFT),
                              prepare(png_bytes(palette.convert("RGB"), "PNG"), view=DRAFT))
    bilevel = _gradient("1", size)
    assert np.array_equal(prepare(png_bytes(bilevel, "PNG"), view=DRAFT),
                          prepare(png_bytes(bilevel.convert("L"), "PNG"), view=DRAFT))
    wide = Image.fromarray(np.linspace(0, 65535, size[0] * size[1]).reshape(size[1], size[0]).astype(np.uint16))
    grey = Image.fromarray(np.rint(np.asarray(wide, dtype=np.float64) / 257).astype(np.uint8))
    draft = prepare(png_bytes(wide, "PNG"), view=DRAFT)
    assert np.abs(draft - prepare(png_bytes(grey, "PNG"), view=DRAFT)).max() <= 1 / 127.5 + 1e-6


def test_the_pixel_limit_is_checked_on_the_stored_size() -> None:
    data = _jpeg((800, 600))
    assert prepare(data, max_pixels=480_000, view=DRAFT).shape == (3, 224, 224)
    with pytest.raises(ImageRejected, match="too large"):
        prepare(data, max_pixels=479_999, view=DRAFT)


def test_the_decode_budget_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PNG over the memory budget is refused before decoding; a JPEG is judged at its DCT-scaled size."""
    from labelloop.modeling import images

    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 1000 * 1000)
    with pytest.raises(ImageRejected, match=r"too large to decode: 1000×1000 in mode RGBA"):
        prepare(png_bytes(Image.new("RGBA", (1000, 1000), (1, 2, 3, 4))), view=DRAFT)
    jpeg = _jpeg((4000, 2000))
    with pytest.raises(ImageRejected, match="too large to decode: 1000×500"):  # 1/2 for letterbox
        prepare(jpeg, view="letterbox")
    assert decode_for(jpeg, DRAFT).size == (250, 125)  # 1/8, then reduced by 2 (long side ≥ 196)
    assert prepare(jpeg, view=DRAFT).shape == (3, 224, 224)


def test_a_broken_image_is_still_rejected() -> None:
    data = _jpeg((427, 320))
    with pytest.raises(ImageRejected, match=r"truncated|corrupt"):
        prepare(data[: len(data) // 2], view=DRAFT)
