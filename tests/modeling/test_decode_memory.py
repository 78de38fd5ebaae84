"""Decoding stays within a memory budget: refused by pixels × bytes before decoding, large images reduced
before any copy is made, and few large decodes at a time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from labelloop.modeling import images
from labelloop.modeling.images import ImageRejected, decode_image

from .conftest import png_bytes

MIB = 2**20


def _peak_growth_mib(code: str) -> float:
    """Run ``code`` in a fresh interpreter and return how far its peak RSS (VmHWM) rose while it ran."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")
        from images import huge_rgba_png
        from labelloop.modeling.images import decode_image
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
        data = huge_rgba_png()
        before = hwm()
    """) + textwrap.dedent(code) + "\nprint(hwm() - before)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def test_a_64_megapixel_rgba_png_decodes_within_its_own_size() -> None:
    # Before: +1.2 GB (the full image, its transposed copy, RGBA copy, white background, composite, RGB).
    growth = _peak_growth_mib("image = decode_image(data)\nassert min(image.size) >= 448, image.size\n")
    assert growth < 400, f"decoding one 8000×8000 RGBA PNG raised the peak RSS by {growth:.0f} MiB"


def test_an_image_over_the_decode_budget_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_DECODE_BYTES", 1000 * 1000 * 4 - 1)
    with pytest.raises(ImageRejected, match=r"too large to decode: 1000×1000 in mode RGBA needs 4 MiB"):
        decode_image(png_bytes(Image.new("RGBA", (1000, 1000), (1, 2, 3, 4))))
    # Greyscale needs a byte per pixel: the same size fits.
    assert decode_image(png_bytes(Image.new("L", (1000, 1000), 9))).size == (1000, 1000)


def test_large_images_are_reduced_small_ones_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "LARGE_DECODE_BYTES", 1000 * 1000)
    assert decode_image(png_bytes(Image.new("RGB", (400, 300), (1, 2, 3)))).size == (400, 300)
    reduced = decode_image(png_bytes(Image.new("RGBA", (1800, 900), (255, 0, 0, 0))))
    assert reduced.size == (900, 450) and reduced.mode == "RGB"
    assert reduced.getpixel((10, 10)) == (255, 255, 255)  # transparent still composited on white
