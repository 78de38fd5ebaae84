"""Real photographs for the benchmarks: Debian wallpaper photos and scikit-learn's sample photos, cut into uploads.

`make bench-photos` installs the wallpaper packages (gnome-backgrounds, mate-backgrounds,
plasma-workspace-wallpapers). Only the photographs among them are used (renders, illustrations and patterns are
left out by name); each is labelled by hand with what it shows (`SCENES`), so a small labelled set can be cut
from them. `uploads()` cuts random crops (scale, position and aspect vary) resized to about 320 px on the short
side and saved as JPEG, like a typical upload; they are cached under bench/out/photos.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "out" / "photos"
PLASMA = Path("/usr/share/wallpapers")
MATE = Path("/usr/share/backgrounds/mate")

# Photograph name -> what it shows (labelled by looking at each one). "plant": flowers, leaves, grass, moss close
# up; "landscape": water, sky, shore, forest seen from afar; "object": man-made things.
SCENES = {
    "BytheWater": "landscape", "ColdRipple": "landscape", "DarkestHour": "landscape", "EveningGlow": "landscape",
    "Path": "landscape", "summer_1am": "landscape", "Dune": "landscape", "Storm": "landscape", "Kite": "landscape",
    "FallenLeaf": "plant", "OneStandsOut": "plant", "Aqua": "plant", "Blinds": "plant", "FreshFlower": "plant",
    "Garden": "plant", "GreenMeadow": "plant", "LadyBird": "plant", "RainDrops": "plant", "TwoWings": "plant",
    "YellowFlower": "plant", "flower": "plant",
    "ColorfulCups": "object", "Grey": "object", "Wood": "object", "china": "object",
}


@dataclass(frozen=True)
class Photo:
    """One source photograph."""

    name: str
    scene: str
    image: Image.Image


def _largest(folder: Path) -> Path | None:
    """The biggest JPEG of a Plasma wallpaper (its file names are WIDTHxHEIGHT.jpg)."""
    def area(path: Path) -> int:
        match = re.fullmatch(r"(\d+)x(\d+)", path.stem)
        return int(match[1]) * int(match[2]) if match else 0

    files = sorted((folder / "contents" / "images").glob("*.jpg"), key=area)
    return files[-1] if files else None


def photographs() -> list[Photo]:
    """Every photograph available on this machine, in a fixed order (RGB, full size)."""
    from sklearn.datasets import load_sample_images

    found: dict[str, Path] = {}
    for name in SCENES:
        candidates = [_largest(PLASMA / name) if (PLASMA / name).is_dir() else None,
                      *sorted(MATE.rglob(f"{name}.jpg"))]
        path = next((c for c in candidates if c is not None), None)
        if path is not None:
            found[name] = path
    photos = [Photo(name, SCENES[name], Image.open(path).convert("RGB")) for name, path in found.items()]
    samples = load_sample_images()
    for filename, array in zip(samples.filenames, samples.images, strict=True):
        name = Path(filename).stem
        photos.append(Photo(name, SCENES[name], Image.fromarray(array)))
    if len(photos) < 10:
        raise SystemExit(f"only {len(photos)} photographs found: run `make bench-photos` (installs the Debian "
                         "wallpaper packages) first")
    return photos


def crop(photo: Photo, rng: np.random.Generator, short_side: int = 320) -> Image.Image:
    """A random crop of the photograph (10–100 % of its short side, aspect 1:1 to 16:9, either orientation)."""
    width, height = photo.image.size
    aspect = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9])
    side = min(width, height) * rng.uniform(0.1, 1.0)
    long = min(side * aspect, max(width, height))
    w, h = (long, side) if (width >= height) == bool(rng.integers(0, 4)) else (side, long)
    w, h = min(w, width), min(h, height)
    left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
    scale = short_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return photo.image.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + w, top + h))


def jpeg(image: Image.Image, quality: int) -> bytes:
    """The image as JPEG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def uploads(count: int, seed: int = 0, short_side: int = 320,
            photos: Sequence[Photo] | None = None) -> list[tuple[str, str, bytes]]:
    """``count`` JPEG uploads (name, scene, bytes) cut from the photographs in turn, cached on disk; ``photos``:
    those to cut from (default: every one; a crop depends on seed, index and photograph only, so the cache is
    shared)."""
    folder = OUT / f"{short_side}px-seed{seed}"
    photos = photographs() if photos is None else photos
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        path = folder / f"{i:05d}-{photo.name}.jpg"
        if path.is_file():
            out.append((path.stem, photo.scene, path.read_bytes()))
            continue
        rng = np.random.default_rng([seed, i])
        data = jpeg(crop(photo, rng, short_side), quality=int(rng.integers(80, 96)))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: bench_detect sets its servers up at once, and one server's set-up must never
        # read a file another is still writing (an empty upload failed a cold-cache run).
        aside = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}")
        aside.write_bytes(data)
        aside.replace(path)
        out.append((path.stem, photo.scene, data))
    return out
