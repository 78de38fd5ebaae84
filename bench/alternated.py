"""The `--compare-src` runner of the in-process benches: fresh child processes of one bench script, this source tree
and another alternated (the order swapped every pair, so neither side always runs first on a machine that drifts),
each child printing its figures as JSON on its last line; and the median (range) cell those figures are shown in."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any


def sides(other: str | None) -> dict[str, str]:
    """The PYTHONPATH of each side: "this" (the caller's, else ``src``) and, when given, "compared"."""
    found = {"this": os.environ.get("PYTHONPATH", "src")}
    if other:
        found["compared"] = other
    return found


def run_alternated(script: str, child_args: list[str], paths: dict[str, str], pairs: int) -> dict[str, list[Any]]:
    """Run ``script`` with ``child_args`` ``pairs`` times per side, the sides alternated; per side, what each child
    printed as JSON on its last line of output."""
    found: dict[str, list[Any]] = {name: [] for name in paths}
    for pair in range(pairs):
        for name, path in (paths.items() if pair % 2 == 0 else reversed(paths.items())):
            out = subprocess.run([sys.executable, script, *child_args], env={**os.environ, "PYTHONPATH": path},
                                 check=True, capture_output=True, text=True)
            found[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return found


def pooled(found: dict[str, list[list[Any]]]) -> dict[str, list[Any]]:
    """Per side, the lists its children printed joined into one (for children that print several figures each)."""
    return {name: [value for printed in children for value in printed] for name, children in found.items()}


def spread(values: list[float], width: int = 0) -> str:
    """"median (min-max)" of ``values`` to 3 decimals, the median right-aligned in ``width`` characters."""
    return f"{statistics.median(values):{width}.3f} ({min(values):.3f}-{max(values):.3f})"
