"""Are this tree's model inputs bit-identical to another tree's? ``images.prepare`` of both, every view both trees
have, compared with ``np.array_equal``.

    PYTHONPATH=src .venv/bin/python bench/prepare_identity.py --compare-src <main's src> [--uploads 300]

The images: ``--uploads`` bench uploads (~320-px JPEGs cut from the real photographs, `bench/photos.py`), 6
phone-size photos (1536 px on the short side), every 4th Tux Paint stamp when the stamps are installed (PNG with
alpha), and 40 of the photos re-encoded as greyscale JPEG, CMYK JPEG, RGBA PNG, EXIF-rotated JPEG (orientation
6), palette PNG and WebP. An image the compared tree rejects but this one reads is counted apart (a fix, not a
difference); any other difference, or a rejection only here, fails.
"""

from __future__ import annotations

import argparse
import glob
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync_parts import load_images_module
from photos import uploads

STAMPS = "/usr/share/tuxpaint/stamps/**/*.png"


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _forms(data: bytes) -> list[bytes]:
    """One photo in the other forms an upload takes."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return [_encoded(image.convert("L"), "JPEG"), _encoded(image.convert("CMYK"), "JPEG"),
            _encoded(image.convert("RGBA"), "PNG"), _encoded(image, "JPEG", exif=exif.tobytes()),
            _encoded(image.convert("P"), "PNG"), _encoded(image, "WEBP")]


def images_to_compare(count: int) -> list[bytes]:
    """The uploads, phone photos, stamps and converted forms described above."""
    photos = [data for _, _, data in uploads(count)]
    found = photos + [data for _, _, data in uploads(6, short_side=1536)]
    found += [Path(path).read_bytes() for path in sorted(glob.glob(STAMPS, recursive=True))[::4]]
    for data in photos[:40]:
        found += _forms(data)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-src", type=Path, required=True, metavar="SRC")
    parser.add_argument("--uploads", type=int, default=300)
    args = parser.parse_args()
    this, other = load_images_module(None), load_images_module(args.compare_src)
    compared = fixed = 0
    datas = images_to_compare(args.uploads)
    shared = [view for view in this.VIEWS if view in other.VIEWS]  # a view new in this tree has nothing to match
    for index, data in enumerate(datas):
        for view in shared:
            mine = this.prepare(data, view=view)
            try:
                theirs = other.prepare(data, view=view)
            except other.ImageRejected:
                fixed += 1
                continue
            if not (np.array_equal(mine, theirs) and mine.dtype == theirs.dtype):
                raise SystemExit(f"image {index}, view {view}: the inputs differ")
            compared += 1
    print(f"{len(datas)} images × {len(shared)} views ({', '.join(shared)}): {compared} prepares bit-identical; "
          f"{fixed} rejected by {args.compare_src} only; not in {args.compare_src}: "
          f"{', '.join(sorted(set(this.VIEWS) - set(shared))) or 'none'}")


if __name__ == "__main__":
    main()
