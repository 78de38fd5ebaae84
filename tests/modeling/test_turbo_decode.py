"""The small-decode views (letterbox-fast, letterbox-draft) decode a plain JPEG with libjpeg-turbo through simplejpeg
(`images._turbo_decode`): the same model inputs as Pillow's decode, bit for bit, and Pillow's path, with its verdict,
for every other image."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from labelloop.modeling import images
from labelloop.modeling.images import SMALL_DECODE_VIEWS, ImageRejected, prepare


def _jpeg(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **{"quality": 90, **params})
    return buffer.getvalue()


def _photos() -> tuple[Image.Image, Image.Image]:
    """The two real photographs scikit-learn ships (640×427)."""
    china, flower = (Image.fromarray(pixels) for pixels in load_sample_images().images)
    return china, flower


def _uploads() -> dict[str, bytes]:
    """Plain JPEGs as uploads come: every aspect and orientation, chroma subsampling, progressive, tiny to
    phone-sized."""
    china, flower = _photos()
    return {
        "4:3 at 320 px": _jpeg(china.resize((427, 320))),
        "square at 320 px": _jpeg(flower.crop((100, 0, 527, 427)).resize((320, 320)), quality=85),
        "3:2 portrait": _jpeg(flower.crop((200, 0, 485, 427)).resize((320, 480))),
        "16:9, 4:4:4": _jpeg(china.crop((0, 40, 640, 400)).resize((569, 320)), subsampling=0),
        "4:2:2": _jpeg(flower, subsampling=1),
        "progressive": _jpeg(china, progressive=True),
        "odd size": _jpeg(flower.resize((333, 251))),
        "smaller than the input": _jpeg(china.resize((200, 133))),
        "phone-sized, decoded at 1/8": _jpeg(china.resize((2048, 1365), Image.Resampling.BILINEAR)),
    }


UPLOADS = _uploads()


class Spy:
    """Counts the calls of simplejpeg's decoder, and passes them on."""

    def __init__(self, decode: Callable[..., np.ndarray]) -> None:
        self.decode, self.calls = decode, 0

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        self.calls += 1
        return self.decode(*args, **kwargs)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    recorder = Spy(images.simplejpeg.decode_jpeg)
    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", recorder)
    return recorder


def _pillows(data: bytes, view: str, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """``view``'s input through Pillow's decode alone (as before simplejpeg)."""
    with monkeypatch.context() as patch:
        patch.setattr(images, "_turbo_decode", lambda *args: None)
        return prepare(data, view=view)


@pytest.mark.parametrize("name", sorted(UPLOADS))
def test_a_plain_jpeg_is_decoded_by_libjpeg_turbo_into_pillows_pixels(name: str, spy: Spy,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for view in SMALL_DECODE_VIEWS:
        calls = spy.calls
        got = prepare(UPLOADS[name], view=view)
        assert spy.calls == calls + 1, view
        np.testing.assert_array_equal(got, _pillows(UPLOADS[name], view, monkeypatch), err_msg=view)


def _others() -> dict[str, bytes]:
    """Images the small-decode views leave to Pillow: other modes and formats, an orientation to apply, a decode
    that is reduced further, and bytes libjpeg-turbo warns about but Pillow reads."""
    china, flower = _photos()
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = _jpeg(flower)
    return {
        "EXIF orientation 6": _jpeg(china, exif=exif.tobytes()),
        "greyscale JPEG": _jpeg(china.convert("L")),
        "CMYK JPEG": _jpeg(flower.convert("CMYK")),
        "PNG": (buffer := io.BytesIO(), china.save(buffer, "PNG"), buffer.getvalue())[2],
        "very large: reduced after the DCT scale": _jpeg(china.resize((4096, 2731), Image.Resampling.NEAREST),
                                                         quality=70),
        "stray bytes before the end marker": plain[:-2] + b"\0\0\0" + plain[-2:],
    }


OTHERS = _others()


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_images_get_pillows_decode(name: str, spy: Spy, monkeypatch: pytest.MonkeyPatch) -> None:
    for view in SMALL_DECODE_VIEWS:
        got = prepare(OTHERS[name], view=view)
        np.testing.assert_array_equal(got, _pillows(OTHERS[name], view, monkeypatch), err_msg=view)
    if name != "stray bytes before the end marker":  # simplejpeg refuses that one (a warning), then Pillow reads it
        assert spy.calls == 0


def test_a_truncated_jpeg_is_rejected_as_pillow_rejects_it(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(_photos()[0])[:20_000]
    for view in SMALL_DECODE_VIEWS:
        with pytest.raises(ImageRejected) as turbo:
            prepare(data, view=view)
        with pytest.raises(ImageRejected) as pillow:
            _pillows(data, view, monkeypatch)
        assert turbo.value.reason == pillow.value.reason and "truncated" in turbo.value.reason
