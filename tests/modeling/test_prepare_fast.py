"""Cheaper preprocessing gives the same model inputs bit for bit (the embedding cache and trained heads depend on
them), and the letterbox-fast view reads every mode `to_rgb` reads, at any size (Image.reduce refuses some)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from labelloop.modeling.images import VIEWS, ImageRejected, decode_for, prepare, to_input

from .conftest import png_bytes
from .test_images import FORMS, _gradient

FAST = "letterbox_fast"


def _reference_scaled(pixels: np.ndarray) -> np.ndarray:
    """[-1, 1] as `images._scaled` computed it before: a float32 copy, divided by 127.5, less 1, in place."""
    out = np.array(pixels.transpose(2, 0, 1), dtype=np.float32, order="C")
    out /= 127.5
    out -= 1.0
    return out


def _reference_input(data: bytes, view: str) -> np.ndarray:
    """``view``'s input from the pixels `to_input` scales: its [-1, 1] array inverted back to uint8 (exact:
    every step of 1/127.5 is more than a float32 rounding apart), then scaled the old way."""
    pixels = np.rint((to_input(decode_for(data, view), view) + 1.0) * 127.5).astype(np.uint8).transpose(1, 2, 0)
    return _reference_scaled(pixels)


def _exif_rotated() -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 (turn 90° clockwise to view)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return png_bytes(_gradient(size=(480, 320)), "JPEG", quality=90, exif=exif.tobytes())


CASES = {**{name: FORMS[name] for name in ("jpeg", "png-rgba", "png-la", "png-greyscale", "jpeg-greyscale",
                                            "jpeg-cmyk", "png-palette-transparent", "tiny", "extreme-aspect")},
         "jpeg-exif-rotated": _exif_rotated(), "jpeg-large": png_bytes(_gradient(size=(1200, 800)), "JPEG")}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_the_fused_scaling_is_the_old_float32_arithmetic_bit_for_bit(name: str, view: str) -> None:
    fresh = prepare(CASES[name], view=view)
    assert fresh.flags.c_contiguous and fresh.dtype == np.float32 and fresh.shape == (3, 224, 224)
    assert np.array_equal(fresh, _reference_input(CASES[name], view))


def test_every_uint8_value_scales_as_the_old_arithmetic() -> None:
    pixels = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    from labelloop.modeling.images import _scaled

    assert np.array_equal(_scaled(pixels), _reference_scaled(pixels))
    assert _scaled(pixels).flags.c_contiguous


def _palette_photo(size: tuple[int, int] = (480, 320)) -> Image.Image:
    return _gradient(size=size).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_a_palette_image_of_448_px_or_more_is_an_input_not_a_corrupt_image(fmt: str) -> None:
    palette = _palette_photo()
    fast = prepare(png_bytes(palette, fmt), view=FAST)  # was ImageRejected: "image has wrong mode"
    assert np.array_equal(fast, prepare(png_bytes(palette.convert("RGB"), "PNG"), view=FAST))


def test_a_transparent_palette_image_is_composited_on_white_when_reduced() -> None:
    palette = _palette_photo()
    palette.info["transparency"] = 0
    fast = prepare(png_bytes(palette, "PNG"), view=FAST)
    rgba = palette.convert("RGBA")
    assert rgba.getextrema()[3] == (0, 255)  # some pixels are transparent
    assert np.array_equal(fast, prepare(png_bytes(rgba, "PNG"), view=FAST))


def test_bilevel_and_16_bit_greyscale_images_of_448_px_or_more_are_inputs() -> None:
    bilevel = _gradient("1", (480, 320))
    assert np.array_equal(prepare(png_bytes(bilevel, "PNG"), view=FAST),
                          prepare(png_bytes(bilevel.convert("L"), "PNG"), view=FAST))
    wide = Image.fromarray(np.linspace(0, 65535, 480 * 320).reshape(320, 480).astype(np.uint16))
    assert wide.mode == "I;16"
    grey = Image.fromarray(np.rint(np.asarray(wide, dtype=np.float64) / 257).astype(np.uint8))
    fast = prepare(png_bytes(wide, "PNG"), view=FAST)
    assert np.abs(fast - prepare(png_bytes(grey, "PNG"), view=FAST)).max() <= 1 / 127.5 + 1e-6


def test_a_broken_image_is_still_rejected_in_the_fast_view() -> None:
    data = png_bytes(_palette_photo(), "PNG")
    with pytest.raises(ImageRejected, match=r"truncated|corrupt"):
        prepare(data[: len(data) // 2], view=FAST)
