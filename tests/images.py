"""Test images drawn with Pillow: two logo-like classes and an unseen third kind."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """The image as bytes of ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def smile_logo(seed: int, size: int = 160) -> bytes:
    """An 'amazon_logo'-like image: dark word on white with an orange smile arrow underneath."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    dx, dy = rng.randint(-12, 12), rng.randint(-12, 12)
    draw.text((25 + dx, 45 + dy), "amazon", fill=(20, 20, 20), font=_font(rng.randint(26, 32)))
    draw.arc((30 + dx, 55 + dy, 130 + dx, 110 + dy), 20, 160, fill=(255, 153, 0), width=rng.randint(6, 9))
    return encode(image)


def box_logo(seed: int, size: int = 160) -> bytes:
    """An 'aws_logo'-like image: white word on dark navy with an orange bar."""
    rng = random.Random(1000 + seed)
    image = Image.new("RGB", (size, size), (35, 47, 62))
    draw = ImageDraw.Draw(image)
    dx, dy = rng.randint(-12, 12), rng.randint(-12, 12)
    draw.text((45 + dx, 40 + dy), "aws", fill=(255, 255, 255), font=_font(rng.randint(36, 44)))
    draw.rectangle((40 + dx, 100 + dy, 120 + dx, 108 + dy), fill=(255, 153, 0))
    return encode(image)


def unseen(seed: int, size: int = 160) -> bytes:
    """A third kind the model never saw: green circles on a pale background."""
    rng = random.Random(2000 + seed)
    image = Image.new("RGB", (size, size), (230, 240, 220))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y, r = rng.randint(10, 150), rng.randint(10, 150), rng.randint(8, 30)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randint(0, 80), rng.randint(120, 200), 60))
    return encode(image)


def upload_training_set(api, per_label: int = 5, offset: int = 0) -> list[str]:  # type: ignore[no-untyped-def]
    """Put ``per_label`` images of each logo under ``images_labeled_by_folder/``; returns the keys."""
    keys = []
    for i in range(offset, offset + per_label):
        for label, draw in (("amazon_logo", smile_logo), ("aws_logo", box_logo)):
            key = f"images_labeled_by_folder/{label}/{label}_{i}.png"
            response = api.put(f"/objects/{key}", content=draw(i))
            assert response.status_code == 201, response.text
            keys.append(key)
    return keys


def blend(seed: int, size: int = 160) -> bytes:
    """Half of each logo side by side: an image the model should be unsure about."""
    left = Image.open(io.BytesIO(smile_logo(seed, size))).convert("RGB")
    right = Image.open(io.BytesIO(box_logo(seed, size))).convert("RGB")
    left.paste(right.crop((size // 2, 0, size, size)), (size // 2, 0))
    return encode(left)


def huge_rgba_png(side: int = 8000) -> bytes:
    """A side×side RGBA PNG that compresses to a few hundred KB yet costs side² × 4 bytes to decode: the
    lowest role's cheapest memory attack."""
    image = Image.new("RGBA", (side, side), (200, 30, 30, 128))
    ImageDraw.Draw(image).ellipse((side // 8, side // 8, side * 7 // 8, side * 7 // 8), fill=(20, 200, 20, 255))
    return encode(image)
