"""Formatting for pages and templates: times, durations, sizes, JSON, percentages and query strings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode


def as_datetime(value: Any) -> datetime | None:
    """A datetime from a datetime or an ISO string (naive values are UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def when(value: Any) -> str:
    """``2026-11-28 19:37:05`` in UTC (the time zone the server records in), or an em dash."""
    moment = as_datetime(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def duration(seconds: float | None) -> str:
    """``850 ms``, ``7.5 s``, ``3 min 20 s``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def size(count: int | None) -> str:
    """A byte count for people."""
    if count is None:
        return "—"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


MAX_JSON_CHARS = 20000


def pretty_json(value: Any) -> str:
    """Indented JSON, cut at ``MAX_JSON_CHARS`` characters."""
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + f"\n… ({len(text) - MAX_JSON_CHARS} more characters)"
    return text


def percent(value: float | None, digits: int = 1) -> str:
    """``0.875`` → ``87.5%``."""
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def query(params: dict[str, Any], **changes: Any) -> str:
    """``?a=1&b=2`` from ``params`` with ``changes`` applied (empty values left out)."""
    merged = {**params, **changes}
    clean = {k: v for k, v in merged.items() if v not in (None, "")}
    return "?" + urlencode(clean) if clean else "?"


FILTERS = {"when": when, "duration": duration, "size": size, "pretty_json": pretty_json, "percent": percent}
