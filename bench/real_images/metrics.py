"""What the benchmark reports: macro-F1, silent errors, confident share, calibration (ECE), reliability diagram."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

THRESHOLD = 0.70  # Minimum-Label-Detection-Confidence's default (70)
BINS = 10


def macro_f1(y: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    """Macro-F1 over the labels present in y or pred."""
    scores = []
    for k in range(n_labels):
        tp = np.sum((pred == k) & (y == k))
        fp = np.sum((pred == k) & (y != k))
        fn = np.sum((pred != k) & (y == k))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


@dataclass
class Outcome:
    """Per evaluated image: was the top label right (open-set images never are), its confidence, its weight."""

    correct: np.ndarray
    confidence: np.ndarray
    weight: np.ndarray
    is_open: np.ndarray


def outcome(y: np.ndarray, pred: np.ndarray, conf: np.ndarray, n_known: int) -> Outcome:
    """Known test images (y ≥ 0) and open-set images (y = -1); the open set weighs as much as the known
    images together (a stream where half the images are of kinds never trained on)."""
    is_open = y < 0
    weight = np.ones(len(y))
    if is_open.any() and (~is_open).any():
        weight[is_open] = (~is_open).sum() / is_open.sum()
    return Outcome((pred == y) & ~is_open, conf, weight, is_open)


def silent_error_rate(o: Outcome, threshold: float = THRESHOLD) -> float:
    """Share of the auto-accepted answers (confidence ≥ threshold) that are wrong."""
    accepted = o.confidence >= threshold
    total = o.weight[accepted].sum()
    return float(o.weight[accepted & ~o.correct].sum() / total) if total else 0.0


def confident_share(o: Outcome, threshold: float = THRESHOLD) -> float:
    """Share of the correct answers that still clear the threshold."""
    right = o.correct
    return float((o.confidence[right] >= threshold).mean()) if right.any() else 0.0


def open_accepted(o: Outcome, threshold: float = THRESHOLD) -> float:
    """Share of open-set images that reach the threshold."""
    return float((o.confidence[o.is_open] >= threshold).mean()) if o.is_open.any() else 0.0


def reliability(o: Outcome, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy, weight."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(o.confidence, edges[1:-1]), 0, bins - 1)
    conf, acc, mass = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for b in range(bins):
        sel = which == b
        mass[b] = o.weight[sel].sum()
        if mass[b]:
            conf[b] = np.average(o.confidence[sel], weights=o.weight[sel])
            acc[b] = np.average(o.correct[sel], weights=o.weight[sel])
    return conf, acc, mass


def ece(o: Outcome, bins: int = BINS) -> float:
    """Expected calibration error: weighted mean |accuracy − confidence| over confidence bins."""
    conf, acc, mass = reliability(o, bins)
    return float(np.sum(mass * np.abs(acc - conf)) / mass.sum()) if mass.sum() else 0.0


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def reliability_plot(curves: dict[str, Outcome], path: Path, title: str) -> None:
    """Reliability diagrams side by side (one panel per recipe), drawn with Pillow, saved as PNG."""
    panel, pad = 300, 50
    width = pad + len(curves) * (panel + pad)
    image = Image.new("RGB", (width, panel + 2 * pad + 30), "white")
    draw = ImageDraw.Draw(image)
    small, big = _font(13), _font(16)
    draw.text((pad, 8), title, fill="black", font=big)
    for i, (name, o) in enumerate(curves.items()):
        x0, y0 = pad + i * (panel + pad), pad
        _, acc, mass = reliability(o)
        draw.rectangle((x0, y0, x0 + panel, y0 + panel), outline="black")
        draw.line((x0, y0 + panel, x0 + panel, y0), fill=(170, 170, 170), width=1)
        total = mass.sum() or 1.0
        for b in range(BINS):
            left, right = x0 + b * panel / BINS, x0 + (b + 1) * panel / BINS
            if mass[b]:
                draw.rectangle((left + 2, y0 + panel * (1 - acc[b]), right - 2, y0 + panel), fill=(70, 110, 200))
                share = mass[b] / total
                draw.rectangle((left + 2, y0 + panel - 4 - 40 * share, right - 2, y0 + panel - 4),
                               outline=(220, 120, 40))
        draw.line((x0 + THRESHOLD * panel, y0, x0 + THRESHOLD * panel, y0 + panel), fill=(200, 40, 40), width=1)
        draw.text((x0, y0 + panel + 6), f"{name}  ECE {ece(o):.3f}", fill="black", font=small)
        draw.text((x0, y0 + panel + 22), "x: confidence, bars: accuracy, orange: share", fill=(90, 90, 90),
                  font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def best_confident_share(o: Outcome, target: float = 0.05) -> float:
    """Ranking quality: the share of correct answers kept confident at the best single threshold whose silent
    error rate is ≤ target (an oracle threshold: what a perfect calibration of this ranking would give)."""
    order = np.argsort(-o.confidence, kind="stable")
    wrong = np.cumsum(o.weight[order] * ~o.correct[order])
    total = np.cumsum(o.weight[order])
    right = np.cumsum(o.correct[order])
    ok = wrong / total <= target
    return float(right[ok].max() / max(1, o.correct.sum())) if ok.any() else 0.0


def save_outcomes(outcomes: dict[str, Outcome], path: Path) -> None:
    """Outcomes (for the plot) in one .npz, four arrays per name."""
    arrays = {f"{name}|{field}": getattr(o, field) for name, o in outcomes.items()
              for field in ("correct", "confidence", "weight", "is_open")}
    np.savez(path, **arrays)


def load_outcomes(path: Path) -> dict[str, Outcome]:
    """Outcomes written by save_outcomes."""
    with np.load(path, allow_pickle=False) as data:
        names = sorted({key.split("|")[0] for key in data.files})
        return {name: Outcome(*(data[f"{name}|{f}"] for f in ("correct", "confidence", "weight", "is_open")))
                for name in names}
