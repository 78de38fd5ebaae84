"""Decoding uploads in every common form, EXIF rotation, and rejection of bad input."""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, features

from labelloop.modeling.images import (
    ImageRejected,
    content_hash,
    decode_image,
    prepare,
    prepare_views,
)

from .conftest import png_bytes

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _split_image(size: tuple[int, int], first: tuple, second: tuple, vertical: bool = True) -> Image.Image:
    """Left/right (vertical=True) or top/bottom halves in two colours."""
    image = Image.new("RGB", size, first)
    w, h = size
    box = (w // 2, 0, w, h) if vertical else (0, h // 2, w, h)
    image.paste(second, box)
    return image


def _gradient(mode: str = "RGB", size: tuple[int, int] = (320, 240)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.float64)[None, :].repeat(size[1], 0)
    rgb = np.stack([x, x[::-1], np.full_like(x, 128)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def _noise(size: tuple[int, int] = (640, 480)) -> Image.Image:
    rgb = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(rgb)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (120, 90), RED), Image.new("RGB", (120, 90), BLUE)]
    return png_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _forms() -> dict[str, bytes]:
    rgba = _gradient("RGBA")
    palette = _gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    sixteen = Image.fromarray(np.linspace(0, 65535, 200 * 150).reshape(150, 200).astype(np.uint16))
    thirty_two = Image.fromarray(np.linspace(0, 65535, 200 * 150).reshape(150, 200).astype(np.int32))
    assert (sixteen.mode, thirty_two.mode) == ("I;16", "I")
    forms = {
        "jpeg": png_bytes(_gradient(), "JPEG", quality=90),
        "png-rgba": png_bytes(rgba, "PNG"),
        "png-la": png_bytes(_gradient("LA"), "PNG"),
        "png-palette": png_bytes(palette, "PNG"),
        "png-palette-transparent": png_bytes(palette, "PNG", transparency=0),
        "png-16bit": png_bytes(sixteen, "PNG"),
        "tiff-32bit-int": png_bytes(thirty_two, "TIFF"),
        "png-greyscale": png_bytes(_gradient("L"), "PNG"),
        "jpeg-greyscale": png_bytes(_gradient("L"), "JPEG"),
        "png-bilevel": png_bytes(_gradient("1"), "PNG"),
        "jpeg-cmyk": png_bytes(_gradient("CMYK"), "JPEG"),
        "gif-animated": _animated_gif(),
        "bmp": png_bytes(_gradient(), "BMP"),
        "tiff": png_bytes(_gradient(), "TIFF"),
        "extreme-aspect": png_bytes(_gradient(size=(4000, 12)), "PNG"),
        "tiny": png_bytes(_gradient(size=(3, 2)), "PNG"),
    }
    if features.check("webp"):
        forms["webp"] = png_bytes(_gradient(), "WEBP")
        forms["webp-alpha"] = png_bytes(rgba, "WEBP", lossless=True)
    return forms


FORMS = _forms()


@pytest.mark.parametrize("name", sorted(FORMS))
def test_every_form_decodes_to_a_model_input(name: str) -> None:
    x = prepare(FORMS[name])
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_webp_is_supported_by_this_pillow() -> None:
    assert features.check("webp")


def test_transparent_png_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    np.testing.assert_allclose(prepare(png_bytes(clear)), 1.0)


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0] * 256)
    np.testing.assert_allclose(prepare(png_bytes(image, "PNG", transparency=0)), 1.0)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    white = Image.fromarray(np.full((50, 50), 65535, dtype=np.uint16))
    mid = Image.fromarray(np.full((50, 50), 32896, dtype=np.uint16))  # 128 × 257
    np.testing.assert_allclose(prepare(png_bytes(white)), 1.0)
    np.testing.assert_allclose(prepare(png_bytes(mid)), 128 / 127.5 - 1, atol=1e-6)


def test_animated_gif_gives_its_first_frame() -> None:
    x = prepare(_animated_gif())
    assert x[0].mean() > 0.9 and x[2].mean() < -0.9  # red, not blue


def test_cmyk_colours_survive() -> None:
    red = Image.new("RGB", (64, 64), RED).convert("CMYK")
    x = prepare(png_bytes(red, "JPEG", quality=95))
    assert x[0].mean() > 0.9 and x[1].mean() < -0.8 and x[2].mean() < -0.8


def test_exif_orientation_is_applied() -> None:
    # Stored pixels: red left half, blue right half, landscape 200×100. EXIF orientation 6 says "rotate 90°
    # clockwise to display", so the upright image is portrait 100×200 with red on top and blue below.
    stored = _split_image((200, 100), RED, BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png_bytes(stored, "JPEG", quality=95, exif=exif.tobytes())
    upright = decode_image(data)
    assert upright.size == (100, 200)
    x = prepare(data)
    top, bottom = x[:, :80, :].mean(axis=(1, 2)), x[:, -80:, :].mean(axis=(1, 2))
    assert top[0] > 0.8 and top[2] < -0.8, "top should be red"
    assert bottom[2] > 0.8 and bottom[0] < -0.8, "bottom should be blue"


def test_preprocessing_is_short_side_resize_then_center_crop() -> None:
    # 448×224 with a 112-px black band on each side: the center crop keeps only the white middle.
    image = Image.new("RGB", (448, 224), WHITE)
    image.paste((0, 0, 0), (0, 0, 112, 224))
    image.paste((0, 0, 0), (336, 0, 448, 224))
    x = prepare(png_bytes(image))
    assert x[:, :, 2:-2].min() > 0.95


def test_augmented_views_differ_and_flip_mirrors() -> None:
    data = png_bytes(_split_image((300, 300), RED, BLUE))
    orig, flip, zoom = prepare_views(data, ("orig", "flip", "zoom"))
    np.testing.assert_allclose(flip, orig[:, :, ::-1], atol=1e-6)
    assert not np.allclose(orig, zoom)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A real 1×1 PNG whose IHDR claims width×height (CRC fixed), as a decompression bomb would."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


BAD = {
    "empty": (b"", "empty"),
    "text": (b"just some text, not an image\n" * 10, "not a recognised image"),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    "html": (b"<!DOCTYPE html><html><body><img src=x></body></html>", "HTML"),
    "random": (hashlib.sha256(b"x").digest() * 64, "not a recognised image"),
    "truncated-jpeg": (png_bytes(_noise(), "JPEG")[:30_000], "truncated"),
    "truncated-png": (png_bytes(_noise())[:30_000], "truncated"),
    "corrupt-png-data": (png_bytes(_noise())[:30_000] + b"\0" * 900_000, "corrupt"),
    "bomb-over-pillow-limit": (_png_with_header_size(20000, 20000), "too large"),
    "bomb-over-our-limit": (_png_with_header_size(9000, 9000), "too large"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_rejected_with_a_reason(name: str) -> None:
    data, words = BAD[name]
    with pytest.raises(ImageRejected) as caught:
        prepare(data)
    assert words.lower() in caught.value.reason.lower()
    assert isinstance(caught.value, ValueError)


def test_max_pixels_is_configurable_and_checked_before_decoding() -> None:
    data = png_bytes(_gradient(size=(400, 300)))
    assert prepare(data, max_pixels=120_000).shape == (3, 224, 224)
    with pytest.raises(ImageRejected, match="too large"):
        prepare(data, max_pixels=119_999)


def test_content_hash_is_sha256_hex() -> None:
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_damaged_exif_keeps_the_pixels() -> None:
    data = png_bytes(_gradient(), "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    assert prepare(data).shape == (3, 224, 224)


def test_letterbox_keeps_the_whole_image_and_pads_with_the_border_colour() -> None:
    from labelloop.modeling.images import letterbox

    wide = Image.new("RGB", (400, 100), (250, 250, 250))
    wide.paste((200, 0, 0), (0, 0, 20, 100))  # a red bar at the left edge: a centre crop would lose it
    boxed = np.asarray(letterbox(wide, 224))
    assert boxed.shape == (224, 224, 3)
    assert (boxed[100:124, :6, 0] > 150).all() and (boxed[100:124, :6, 1] < 60).all()  # the bar survives
    rgb = np.asarray(wide, dtype=np.float64)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).mean(axis=0)
    np.testing.assert_allclose(boxed[:40, 112], np.broadcast_to(np.rint(border), (40, 3)), atol=1)
    x = prepare_views(png_bytes(wide), ("orig", "letterbox", "letterbox_flip"))
    assert x.shape == (3, 3, 224, 224)
    assert x[0, 0, 112, 0] > 0.9  # centre crop: the bar is cut away, the left edge is white-ish
    np.testing.assert_allclose(x[2], x[1][:, :, ::-1], atol=1e-6)


def test_decoding_on_many_threads_leaves_the_process_warning_filters_alone() -> None:
    """`warnings.catch_warnings` swaps the process's one filter list: threads decoding at once used to leave
    "ignore every warning" installed for the rest of the process."""
    import threading
    import warnings

    data = png_bytes(_gradient(size=(427, 320)), "JPEG")
    before = list(warnings.filters)

    def decode_many() -> None:
        for _ in range(200):
            prepare(data, view="letterbox_fast")

    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before


def test_a_limit_above_pillows_bomb_limit_is_capped_there() -> None:
    from PIL import Image

    over_pillow = _png_with_header_size(10000, 9000)  # 90 MP: over Image.MAX_IMAGE_PIXELS, under twice it
    assert Image.MAX_IMAGE_PIXELS < 10000 * 9000
    with pytest.raises(ImageRejected, match=f"the limit is {Image.MAX_IMAGE_PIXELS:,}"):
        prepare(over_pillow, max_pixels=200_000_000)


@pytest.mark.parametrize("mode", ["P", "P-transparent", "1", "I;16"])
def test_a_mode_changed_to_reduce_is_converted_in_bands_with_the_same_pixels(mode: str, monkeypatch) -> None:
    from labelloop.modeling import images

    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (301, 457, 3), dtype=np.uint8))
    if mode.startswith("P"):
        image = rgb.quantize(64)
        if mode == "P-transparent":
            image.info["transparency"] = 3
    elif mode == "1":
        image = rgb.convert("1")
    else:
        image = Image.fromarray(rng.integers(0, 65536, (301, 457), dtype=np.uint16)).convert("I;16")
    target = images._reducible_mode(image)
    assert target != image.mode
    monkeypatch.setattr(images, "REDUCE_BAND_PIXELS", 457 * 7)  # 7-row bands: dozens of them, none aligned by chance
    for factor in (2, 3, 5):
        whole = image.convert(target).reduce(factor)
        banded = images._reduced_in_bands(image, factor, target)
        assert banded.mode == whole.mode and banded.size == whole.size
        assert np.array_equal(np.asarray(banded), np.asarray(whole)), (mode, factor)
