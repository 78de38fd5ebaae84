"""Small server-side SVG charts for the console: horizontal bars, lines, a histogram and stacked bars.

Each function returns an ``<svg>`` element as :class:`markupsafe.Markup`, drawn with presentation attributes
only (the pages' Content-Security-Policy allows no inline styles) and scaled by CSS (class ``plot``). Every
text from data is escaped. A chart with no data says so instead of drawing empty axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

# Okabe-Ito: told apart by people with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7f7f7f", "#000000")
AXIS = "#57606a"
GRID = "#e1e4e8"
FONT = 13
WIDTH = 600


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering ``low``..``high`` (whole numbers only, if ``integer``)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, math.ceil(step))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _open(width: float, height: float, label: str) -> str:
    # Drawn at its own size where there is room, scaled down (never up) where there is not: see svg.plot in CSS.
    # A wide one scrolls sideways on a phone instead of shrinking its text below legibility (svg.plot.wide).
    kind = "plot wide" if width > 420 else "plot"
    return (f'<svg class="{kind}" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
            f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" font-size="{FONT}" '
            f'font-family="system-ui, sans-serif"><title>{escape(label)}</title>')


def empty(label: str, message: str = "No data yet.", width: int = WIDTH) -> Markup:
    """A small chart-sized box that says there is nothing to draw."""
    return Markup(_open(width, 60, label) + f'<rect x="0.5" y="0.5" width="{width - 1}" height="59" rx="6" '
                  f'fill="#f6f8fa" stroke="{GRID}"/><text x="{width / 2}" y="35" text-anchor="middle" '
                  f'fill="{AXIS}">{escape(message)}</text></svg>')


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def bar_chart(items: Sequence[tuple[str, float]], *, label: str, unit: str = "", value_format: str | None = None,
              width: int = WIDTH) -> Markup:
    """Horizontal bars, one per ``(name, value)``, longest scale at the largest value; values written at the end."""
    if not items:
        return empty(label, width=width)
    show = (lambda v: value_format.format(v)) if value_format else _num
    row, top = 28, 8
    name_chars = min(28, max(len(name) for name, _ in items))
    left = 16 + name_chars * 7.5
    right = 70
    height = top * 2 + row * len(items)
    biggest = max(value for _, value in items) or 1
    span = width - left - right
    parts = [_open(width, height, label)]
    for i, (name, value) in enumerate(items):
        y = top + i * row
        length = max(1.0, span * value / biggest) if value else 0
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<g><title>{escape(name)}: {escape(show(value))}{escape(unit)}</title>'
                     f'<text x="{left - 8}" y="{y + row / 2 + 4}" text-anchor="end" fill="#1d2327">'
                     f'{escape(_clip(name, name_chars))}</text>'
                     f'<rect x="{left}" y="{y + 4}" width="{length:.1f}" height="{row - 8}" rx="3" fill="{colour}"/>'
                     f'<text x="{left + length + 6:.1f}" y="{y + row / 2 + 4}" fill="#1d2327">'
                     f'{escape(show(value))}{escape(unit)}</text></g>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - top}" stroke="{AXIS}"/></svg>')
    return Markup("".join(parts))


class _Frame:
    """Axes for a chart of ``count`` categories along x and values ``low``..``high`` up y."""

    def __init__(self, count: int, low: float, high: float, *, width: int = WIDTH, height: int = 260,
                 y_format: str | None = None, y_title: str = "", legend_rows: int = 0, integer: bool = False,
                 x_title: str = "") -> None:
        self.count, self.width, self.height = count, width, height
        self.left, self.right, self.top = 60, 16, 14 + legend_rows * 20
        self.bottom = 44
        self.ticks = nice_ticks(low, high, integer=integer)
        self.low, self.high = self.ticks[0], self.ticks[-1]
        self.y_format, self.y_title, self.x_title = y_format, y_title, x_title

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float) -> float:
        return self.top + self.plot_height * (1 - (value - self.low) / ((self.high - self.low) or 1))

    def slot(self) -> float:
        return self.plot_width / max(self.count, 1)

    def x(self, index: int) -> float:
        """The centre of category ``index``."""
        return self.left + self.slot() * (index + 0.5)

    def axes(self, x_labels: Sequence[str]) -> str:
        parts = []
        for tick in self.ticks:
            y = self.y(tick)
            shown = self.y_format.format(tick) if self.y_format else _num(tick)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.width - self.right}" y2="{y:.1f}" '
                         f'stroke="{GRID}"/><text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                         f'fill="{AXIS}">{escape(shown)}</text>')
        base = self.height - self.bottom
        parts.append(f'<line x1="{self.left}" y1="{base}" x2="{self.width - self.right}" y2="{base}" '
                     f'stroke="{AXIS}"/>')
        # At most about ten labels along x, evenly picked, always the first and last.
        every = max(1, math.ceil(len(x_labels) / max(2, self.plot_width // 56)))
        chars = max(4, int(self.slot() * every / 7.5))
        for i, text in enumerate(x_labels):
            if i % every and i != len(x_labels) - 1:
                continue
            if i != len(x_labels) - 1 and len(x_labels) - 1 - i < every and (len(x_labels) - 1) % every:
                continue  # too close to the last label
            parts.append(f'<text x="{self.x(i):.1f}" y="{base + 16}" text-anchor="middle" fill="{AXIS}">'
                         f'{escape(_clip(text, chars))}</text>')
        if self.x_title:
            parts.append(f'<text x="{self.left + self.plot_width / 2:.1f}" y="{base + 34}" text-anchor="middle" '
                         f'fill="{AXIS}">{escape(self.x_title)}</text>')
        if self.y_title:
            parts.append(f'<text x="14" y="{self.top + self.plot_height / 2:.1f}" text-anchor="middle" '
                         f'fill="{AXIS}" transform="rotate(-90 14 {self.top + self.plot_height / 2:.1f})">'
                         f'{escape(self.y_title)}</text>')
        return "".join(parts)


def _legend(names: Sequence[str], chart_width: int = WIDTH, y: float = 13) -> tuple[str, int]:
    """A legend across the top; returns the markup and how many rows it took."""
    parts, x, rows = [], 60.0, 1
    for i, name in enumerate(names):
        text = _clip(name, 24)
        width = 22 + len(text) * 7.5 + 14
        if x + width > chart_width - 10 and x > 60:
            x, rows = 60.0, rows + 1
        top = y + (rows - 1) * 20
        parts.append(f'<rect x="{x:.0f}" y="{top - 9:.0f}" width="14" height="10" rx="2" '
                     f'fill="{PALETTE[i % len(PALETTE)]}"/><text x="{x + 19:.0f}" y="{top:.0f}" fill="#1d2327">'
                     f'{escape(text)}</text>')
        x += width
    return "".join(parts), rows


def _legend_rows(names: Sequence[str], width: int) -> int:
    return _legend(names, width)[1] if len(names) > 1 else 0


def line_chart(x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, label: str,
               y_min: float | None = None, y_max: float | None = None, y_format: str | None = None,
               y_title: str = "", reference: tuple[float, str] | None = None, value_format: str = "{:.2f}",
               width: int = WIDTH, x_title: str = "") -> Markup:
    """Lines with a dot at each value (``None`` leaves a gap); an optional dashed reference line; axis titles."""
    values = [v for _, points in series for v in points if v is not None]
    if not x_labels or not values:
        return empty(label, width=width)
    low = min(values + ([reference[0]] if reference else [])) if y_min is None else y_min
    high = max(values + ([reference[0]] if reference else [])) if y_max is None else y_max
    names = [name for name, _ in series]
    frame = _Frame(len(x_labels), low, high, width=width, y_format=y_format, y_title=y_title,
                   legend_rows=_legend_rows(names, width), x_title=x_title)
    parts = [_open(width, frame.height, label), frame.axes(x_labels)]
    if reference is not None:
        y = frame.y(reference[0])
        parts.append(f'<line x1="{frame.left}" y1="{y:.1f}" x2="{width - frame.right}" y2="{y:.1f}" '
                     f'stroke="#a4262c" stroke-dasharray="6 4" stroke-width="1.5"/>'
                     f'<text x="{width - frame.right - 4}" y="{y - 5:.1f}" text-anchor="end" fill="#a4262c">'
                     f'{escape(reference[1])}</text>')
    for s, (name, points) in enumerate(series):
        colour = PALETTE[s % len(PALETTE)]
        runs: list[list[tuple[float, float]]] = [[]]
        for i, value in enumerate(points):
            if value is None:
                runs.append([])
            else:
                runs[-1].append((frame.x(i), frame.y(value)))
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
        for i, value in enumerate(points):
            if value is not None:
                parts.append(f'<circle cx="{frame.x(i):.1f}" cy="{frame.y(value):.1f}" r="4" fill="{colour}">'
                             f'<title>{escape(name)} · {escape(x_labels[i])}: '
                             f'{escape(value_format.format(value))}</title></circle>')
    if len(series) > 1:
        parts.append(_legend(names, width)[0])
    parts.append("</svg>")
    return Markup("".join(parts))


def histogram(values: Sequence[float], *, label: str, low: float = 0.0, high: float = 100.0, bins: int = 20,
              x_title: str = "", y_title: str = "", reference: tuple[float, str] | None = None,
              width: int = WIDTH) -> Markup:
    """Counts of ``values`` in ``bins`` equal bins from ``low`` to ``high``; an optional dashed marker."""
    if not values:
        return empty(label, width=width)
    bin_width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, max(0, int((value - low) // bin_width)))] += 1
    frame = _Frame(bins, 0, max(counts), width=width, y_title=y_title, integer=True)
    frame.bottom = 52 if x_title else 44
    parts = [_open(width, frame.height, label), frame.axes([])]
    base = frame.height - frame.bottom
    for i, count in enumerate(counts):
        x = frame.left + frame.slot() * i
        y = frame.y(count)
        parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{frame.slot() - 2:.1f}" height="{base - y:.1f}" '
                     f'fill="{PALETTE[0]}"><title>{escape(_num(low + i * bin_width))}–'
                     f'{escape(_num(low + (i + 1) * bin_width))}: {count}</title></rect>')
    for tick in nice_ticks(low, high):
        if low <= tick <= high:
            x = frame.left + frame.plot_width * (tick - low) / (high - low)
            parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="{AXIS}"/>'
                         f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle" fill="{AXIS}">'
                         f'{escape(_num(tick))}</text>')
    if x_title:
        parts.append(f'<text x="{frame.left + frame.plot_width / 2:.1f}" y="{base + 34}" text-anchor="middle" '
                     f'fill="{AXIS}">{escape(x_title)}</text>')
    if reference is not None and low <= reference[0] <= high:
        x = frame.left + frame.plot_width * (reference[0] - low) / (high - low)
        parts.append(f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{base}" stroke="#a4262c" '
                     f'stroke-dasharray="6 4" stroke-width="1.5"/><text x="{x - 4:.1f}" y="{frame.top + 12}" '
                     f'text-anchor="end" fill="#a4262c">{escape(reference[1])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, label: str,
                 y_title: str = "", width: int = WIDTH) -> Markup:
    """One bar per x category, stacked by series (e.g. detections per day, stacked by label)."""
    totals = [sum(points[i] for _, points in series) for i in range(len(x_labels))]
    if not x_labels or not any(totals):
        return empty(label, width=width)
    names = [name for name, _ in series]
    frame = _Frame(len(x_labels), 0, max(totals), width=width, y_title=y_title,
                   legend_rows=_legend_rows(names, width), integer=True)
    parts = [_open(width, frame.height, label), frame.axes(x_labels)]
    bar = min(48.0, frame.slot() * 0.7)
    for i, day in enumerate(x_labels):
        below = 0.0
        for s, (name, points) in enumerate(series):
            value = points[i]
            if not value:
                continue
            top, bottom = frame.y(below + value), frame.y(below)
            parts.append(f'<rect x="{frame.x(i) - bar / 2:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                         f'height="{bottom - top:.1f}" fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(day)} · '
                         f'{escape(name)}: {escape(_num(value))}</title></rect>')
            below += value
    if len(series) > 1:
        parts.append(_legend(names, width)[0])
    parts.append("</svg>")
    return Markup("".join(parts))


def silent_error_chart(report: dict[str, Any], *, width: int = WIDTH) -> Markup:
    """The silent-error bound of a version after each answered audit, with the observed rate and the target
    (``report`` as ``sampling.service.silent_error_report`` gives it)."""
    points = report["history"]
    label = f"Silent errors of {report['model_version'] or 'the serving version'} by audits answered"
    if not points:
        return empty(label, "No answered audit yet.", width=width)
    target = report["target"]
    return line_chart([str(p["audits"]) for p in points],
                      [("95 % upper bound", [p["upper_bound"] for p in points]),
                       ("observed", [round(100 * p["wrong"] / p["audits"], 2) for p in points])],
                      label=label, y_min=0, y_format="{:.0f}", y_title="% wrong", x_title="audits answered",
                      reference=(target, f"target {target:g} %") if target > 0 else None,
                      value_format="{:.1f} %", width=width)
