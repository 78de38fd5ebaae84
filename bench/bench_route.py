"""CPU of routing one confident detection (``silent_errors.route``) with N answered audits, against a reference.

    PYTHONPATH=src .venv/bin/python bench/bench_route.py --compare-src /tmp/before/src [--rounds 5]

With the silent-error target on (the default) a detection at or above the threshold is routed through
``raised_threshold``, which computes a Clopper–Pearson bound per audit of its label and per audit of all labels.
Both trees' ``silent_errors`` modules are loaded in this process and alternated; the audits are random (15 %
wrong, 3 labels, seed 15) and the same for both, and the script checks that both route every confidence and
label the same way and give the same estimate.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

from labelloop.detection import silent_errors

ROUTE = {"base": 50.0, "base_name": "Minimum-Confidence", "review": True}


def load_reference(src: Path) -> ModuleType:
    """The reference tree's silent_errors module, loaded beside this tree's."""
    spec = importlib.util.spec_from_file_location("reference_silent_errors",
                                                  src / "labelloop" / "detection" / "silent_errors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def audits_for(module: ModuleType, count: int) -> list:
    """``count`` random answered audits of auto-accepted detections (the same for every module)."""
    rng = random.Random(15)
    return [module.Audit(rng.choice("abc"), rng.uniform(50, 100), rng.random() < 0.15, True) for _ in range(count)]


def ms_per_route(module: ModuleType, count: int, detections: int = 50) -> float:
    """CPU milliseconds per ``route`` call with ``count`` audits."""
    audits = audits_for(module, count)
    found = module.estimate_from("v1", 5.0, audits, count)
    start = time.process_time()
    for i in range(detections):
        module.route("a", 90.0, f"request-{i}", found=found, audits=audits, **ROUTE)
    return (time.process_time() - start) / detections * 1000


def same_decisions(modules: list[ModuleType], count: int) -> bool:
    """Whether the modules give the same estimate and route every confidence 50–99 of every label alike."""
    found = [m.estimate_from("v1", 5.0, audits_for(m, count), count) for m in modules]
    if len({repr(f.to_dict()) for f in found}) != 1:
        return False
    routes = [[(str(r.rule), r.threshold, r.reason) for r in (
        m.route(label, c, f"r{c}", found=f, audits=audits_for(m, count), **ROUTE)
        for label in "abc" for c in range(50, 100))] for m, f in zip(modules, found, strict=True)]
    return all(r == routes[0] for r in routes)


def main() -> None:
    """Alternate the two modules ``--rounds`` times per audit count; print medians (min–max) and the check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-src", type=Path, required=True, metavar="SRC")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    modules = {"reference": load_reference(args.compare_src), "this": silent_errors}
    print("| answered audits | reference: ms per route, median (min–max) | this | same decisions |")
    print("|---|---|---|---|")
    for count in (20, 200):
        times: dict[str, list[float]] = {name: [] for name in modules}
        for round_ in range(args.rounds):
            for name, module in (list(modules.items())[::1 if round_ % 2 == 0 else -1]):
                times[name].append(ms_per_route(module, count))
        cells = [f"{statistics.median(t):.2f} ({min(t):.2f}–{max(t):.2f})" for t in times.values()]
        print(f"| {count} | {cells[0]} | {cells[1]} | {same_decisions(list(modules.values()), count)} |")


if __name__ == "__main__":
    main()
