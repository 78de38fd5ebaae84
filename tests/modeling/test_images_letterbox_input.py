"""The letterbox views' input, scaled straight into the float array (issue 15, decode), is the picture the views
define, bit for bit: the whole image, long side to the input size, centred on a canvas of its border's mean colour,
mirrored for the flip views, value / 127.5 − 1 in float32. The reference below builds that picture the plain way
(a Pillow canvas, a float mean over the border, the old float32 arithmetic), independent of `images`' code."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from labelloop.modeling.images import (
    INPUT_SIZE,
    RESAMPLE,
    SMALL_DECODE_RESAMPLE,
    SMALL_DECODE_VIEWS,
    VIEWS,
    _border_fill,
    to_input,
)

LETTERBOX_VIEWS = sorted(view for view, (fraction, _, _, _) in VIEWS.items() if fraction == 0)
# Landscape (the typical upload decoded at 1/2), portrait, square, odd margins on either axis (the flip views
# move the picture by one pixel there), a single pixel, and extreme aspects.
SIZES = [(285, 160), (160, 285), (240, 240), (300, 199), (199, 300), (1, 1), (2000, 3), (3, 700)]


def _photo_like(size: tuple[int, int]) -> Image.Image:
    """Smooth colour ramps with noise, so the border's colour and the resized pixels both vary."""
    width, height = size
    rng = np.random.default_rng(width * 7919 + height)
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    ramps = np.stack([200 * x + 30, 180 * y + 20, 120 * (1 - x * y) + 60], axis=-1)
    pixels = np.clip(ramps + rng.normal(0, 12, ramps.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _border_colour(image: Image.Image) -> tuple[int, ...]:
    """The mean over the top and bottom rows and the left and right columns (corners twice), rounded half to even,
    in floats over the whole image."""
    pixels = np.asarray(image, dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.rint(border.mean(axis=0)))


def _reference(image: Image.Image, view: str) -> np.ndarray:
    """The view's input the plain way: a Pillow canvas, the resized image pasted centred, mirrored, old scaling."""
    width, height = image.size
    scale = INPUT_SIZE / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = SMALL_DECODE_RESAMPLE if view in SMALL_DECODE_VIEWS else RESAMPLE
    canvas = Image.new("RGB", (INPUT_SIZE, INPUT_SIZE), _border_colour(image))
    canvas.paste(image.resize(inner, resample), ((INPUT_SIZE - inner[0]) // 2, (INPUT_SIZE - inner[1]) // 2))
    if VIEWS[view][3]:
        canvas = ImageOps.mirror(canvas)
    out = np.array(np.asarray(canvas).transpose(2, 0, 1), dtype=np.float32, order="C")
    out /= 127.5
    out -= 1.0
    return out


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("view", LETTERBOX_VIEWS)
def test_a_letterbox_view_is_the_padded_picture_bit_for_bit(view: str, size: tuple[int, int]) -> None:
    image = _photo_like(size)
    got = to_input(image, view)
    assert got.dtype == np.float32 and got.shape == (3, INPUT_SIZE, INPUT_SIZE) and got.flags.c_contiguous
    assert np.array_equal(got, _reference(image, view))


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_the_border_colour_is_the_float_mean_of_the_border(size: tuple[int, int]) -> None:
    image = _photo_like(size)
    assert _border_fill(image) == _border_colour(image)


def test_the_margins_have_the_border_colour_and_the_picture_is_not_mirrored_twice() -> None:
    image = _photo_like((199, 300))  # portrait: 149 px wide, 37 px margin on the left and 38 on the right
    plain, mirrored = to_input(image, "letterbox_fast"), to_input(image, "letterbox_fast_flip")
    colour = (np.array(_border_colour(image), dtype=np.float32) / np.float32(127.5) - np.float32(1.0))
    assert np.array_equal(plain[:, :, :37], np.broadcast_to(colour[:, None, None], (3, INPUT_SIZE, 37)))
    assert np.array_equal(plain[:, :, 37 + 149:], np.broadcast_to(colour[:, None, None], (3, INPUT_SIZE, 38)))
    assert np.array_equal(mirrored, plain[:, :, ::-1])
