"""The letterbox-fast input view: decoded at the smallest scale whose long side is still ≥ 224 (JPEG in the DCT
domain, other formats by Image.reduce), then letterboxed; the decoding rules (limits, EXIF, modes) still hold."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from labelloop.modeling.images import (
    INPUT_VIEWS,
    SMALL_DECODE_VIEWS,
    ImageRejected,
    decode_for,
    decode_image,
    decode_small,
    prepare,
    prepare_views,
    view_key,
)

from .conftest import png_bytes
from .test_images import BAD, BLUE, FORMS, RED, _gradient, _split_image

FAST = "letterbox_fast"


def _photo(size: tuple[int, int]) -> Image.Image:
    """A smooth, photo-like RGB image (gradients in two directions) of ``size``."""
    width, height = size
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    rgb = np.stack([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 128 + 100 * np.sin(6 * x + 4 * y)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def test_the_view_is_an_input_view_with_its_own_cache_key() -> None:
    assert view_key("letterbox-fast") == FAST == INPUT_VIEWS["letterbox-fast"]
    assert SMALL_DECODE_VIEWS[FAST] == SMALL_DECODE_VIEWS["letterbox_fast_flip"] == 1.0  # long side ≥ the input
    assert FAST not in {view_key("letterbox"), view_key("crop")}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_every_form_decodes_to_a_model_input(name: str) -> None:
    x = prepare(FORMS[name], view=FAST)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x.min() >= -1.0 and x.max() <= 1.0


@pytest.mark.parametrize(("size", "fmt", "decoded"), [
    ((480, 320), "JPEG", (240, 160)),  # a typical upload: DCT-domain 1/2
    ((320, 569), "JPEG", (160, 285)),  # portrait: the long side decides (1/2 rounds up)
    ((2560, 1600), "JPEG", (320, 200)),  # a wallpaper: 1/8
    ((4000, 2000), "JPEG", (250, 125)),  # 1/8 is as far as the DCT goes, then Image.reduce by 2
    ((300, 200), "JPEG", (300, 200)),  # already small: decoded as it is
    ((960, 640), "PNG", (240, 160)),  # other formats: Image.reduce by 4
    ((447, 300), "PNG", (447, 300)),  # factor 1: as it is
    ((2000, 12), "PNG", (250, 2)),  # extreme aspect ratio: the long side decides
])
def test_the_decode_is_the_smallest_scale_whose_long_side_is_at_least_224(size: tuple[int, int], fmt: str,
                                                                          decoded: tuple[int, int]) -> None:
    data = png_bytes(_photo(size), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    image = decode_small(data)
    assert image.size == decoded and image.mode == "RGB"
    assert decode_for(data, FAST).size == decoded
    assert decode_for(data, "letterbox").size == decode_image(data).size  # the other views: as before


def test_the_picture_is_the_letterbox_views_picture() -> None:
    """On a photo-like JPEG the two letterbox views differ only by resampling: same padding, same content."""
    data = png_bytes(_photo((480, 320)), "JPEG", quality=95)
    fast, letterbox = prepare(data, view=FAST), prepare(data, view="letterbox")
    assert np.abs(fast - letterbox).mean() < 0.02
    # 480×320 → 224×149 centred: rows 37 … 185 hold the photo, the rest is the border's mean colour
    np.testing.assert_allclose(fast[:, :37], letterbox[:, :37], atol=2 / 127.5)
    np.testing.assert_allclose(fast[:, 186:], letterbox[:, 186:], atol=2 / 127.5)
    assert np.ptp(fast[:, :36], axis=(1, 2)).max() == 0  # padding is one colour


def test_the_letterbox_padding_is_the_border_colour_and_keeps_the_edges() -> None:
    wide = Image.new("RGB", (1200, 300), (250, 250, 250))
    wide.paste((200, 0, 0), (0, 0, 60, 300))  # a red bar at the left edge: the letterbox keeps it
    for data in (png_bytes(wide), png_bytes(wide, "JPEG", quality=95)):
        x = prepare(data, view=FAST)
        pixels = np.rint((x.transpose(1, 2, 0) + 1) * 127.5)
        assert (pixels[100:124, :6, 0] > 150).all() and (pixels[100:124, :6, 1] < 60).all()
        rgb = np.asarray(wide.reduce(4) if data[:4] == b"\x89PNG" else decode_small(data), dtype=np.float64)
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(axis=0)
        np.testing.assert_allclose(pixels[:40, 112], np.broadcast_to(np.rint(border), (40, 3)), atol=1)


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (2, 3), (225, 1), (1, 500), (449, 449)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_odd_sizes_give_a_model_input(size: tuple[int, int], fmt: str) -> None:
    x = prepare(png_bytes(_photo(size), fmt), view=FAST)
    assert x.shape == (3, 224, 224) and x.min() >= -1.0 and x.max() <= 1.0


def test_exif_orientation_is_applied_after_the_small_decode() -> None:
    stored = _split_image((960, 480), RED, BLUE)  # red left, blue right; orientation 6: red on top upright
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png_bytes(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert decode_small(data).size == (120, 240)
    x = prepare(data, view=FAST)
    top, bottom = x[:, 10:100, 60:160].mean(axis=(1, 2)), x[:, -100:-10, 60:160].mean(axis=(1, 2))
    assert top[0] > 0.8 and top[2] < -0.8, "top should be red"
    assert bottom[2] > 0.8 and bottom[0] < -0.8, "bottom should be blue"


def test_the_flip_view_mirrors_and_mixed_views_decode_as_each_needs() -> None:
    data = png_bytes(_gradient(size=(640, 480)), "JPEG", quality=90)
    letterbox, fast, flip = prepare_views(data, ("letterbox", FAST, "letterbox_fast_flip"))
    np.testing.assert_array_equal(letterbox, prepare(data, view="letterbox"))
    np.testing.assert_array_equal(fast, prepare(data, view=FAST))
    np.testing.assert_allclose(flip, fast[:, :, ::-1], atol=1e-6)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_rejected_with_a_reason(name: str) -> None:
    data, words = BAD[name]
    with pytest.raises(ImageRejected) as caught:
        prepare(data, view=FAST)
    assert words.lower() in caught.value.reason.lower()


def test_max_pixels_is_checked_on_the_stored_size_not_the_decoded_one() -> None:
    data = png_bytes(_photo((800, 600)), "JPEG")
    assert prepare(data, max_pixels=480_000, view=FAST).shape == (3, 224, 224)
    with pytest.raises(ImageRejected, match="too large"):
        prepare(data, max_pixels=479_999, view=FAST)


def test_the_decode_budget_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PNG over the memory budget is refused before decoding; a JPEG is judged at its DCT-scaled size, so a
    big photo the full decode would refuse fits (it never materialises more than the budget)."""
    from labelloop.modeling import images

    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 1000 * 1000)
    with pytest.raises(ImageRejected, match=r"too large to decode: 1000×1000 in mode RGBA"):
        prepare(png_bytes(Image.new("RGBA", (1000, 1000), (1, 2, 3, 4))), view=FAST)
    jpeg = png_bytes(_photo((2000, 1000)), "JPEG")
    with pytest.raises(ImageRejected, match="too large to decode: 1000×500"):  # decoded at 1/2 for letterbox
        prepare(jpeg, view="letterbox")
    assert decode_small(jpeg).size == (250, 125)


def test_transparency_survives_the_reduce() -> None:
    reduced = decode_small(png_bytes(Image.new("RGBA", (1800, 900), (255, 0, 0, 0))))
    assert reduced.size == (225, 113) and reduced.mode == "RGB"
    assert reduced.getpixel((10, 10)) == (255, 255, 255)  # transparent still composited on white
