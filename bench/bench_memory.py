"""Serving RSS through a serving process's life, stage by stage, and where it lives (heap, arenas, files).

One server at a time (each ``--src``, or this checkout's code): start, train v1 on ``--bank`` (as bench_detect
does: by default 10 labels × 256 crops, a full familiarity bank), export it (``GET /models/v1/export``), sync
detect from 1, 8 and 32 clients, then the upload pipeline. After each stage the table gives the process's RSS,
its peak (VmHWM; reset after the export, as bench_detect resets it after training, so that the last column is
the peak while serving) and where the resident memory lives, from ``/proc/PID/smaps``: glibc's main heap
(``[heap]``), its thread arenas' heaps (anonymous mappings on a 64 MiB boundary), other anonymous memory (ONNX
Runtime's and malloc's large blocks, Python's object arenas, OpenBLAS's buffers, thread stacks) and mapped files
(the libraries).

    PYTHONPATH=src .venv/bin/python bench/bench_memory.py [--bank 10x256] [--uploads 1000] [--src /work/base/src]

``--src`` (repeatable) runs a server on another source tree as well, one after the other (memory does not
depend on the machine's load as CPU time does), e.g. main's code before a change; ``--settings KEY=VALUE``
(repeatable) gives every server those ``LABELLOOP_*`` settings (e.g. ``LABELLOOP_MALLOC_ARENAS=0``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import OUT, Bank, drive_sync, multipart, pipeline, start_server, train, uploads
from profile_summary import memory_mib

ARENA_HEAP = 64 << 20  # glibc's thread arenas map their heaps on this boundary (HEAP_MAX_SIZE on 64-bit)
PARTS = ("main heap", "thread arenas", "other anonymous", "files")


def resident_parts(pid: int) -> Counter[str]:
    """The process's resident memory (MiB) by where it lives (``PARTS``), from /proc/PID/smaps."""
    parts: Counter[str] = Counter()
    part = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            start = int(fields[0].split("-")[0], 16)
            name = fields[5] if len(fields) > 5 else ""
            part = ("main heap" if name == "[heap]" else "files" if name.startswith("/") else
                    None if name.startswith("[") else
                    "thread arenas" if start % ARENA_HEAP == 0 and "w" in fields[1] else "other anonymous")
        elif fields[0] == "Rss:" and part is not None:
            parts[part] += int(fields[1]) / 1024
    return parts


def stages(src: str | None, bank: Bank, uploads_per_phase: int, seconds: float,
           settings: dict[str, str]) -> dict[str, tuple[float, float, Counter[str]]]:
    """RSS, peak RSS (MiB) and the resident parts of one server after each stage of its life."""
    server = start_server(src, OUT / "memory-home", **settings)
    pid, found = server.process.pid, {}

    def note(stage: str) -> None:
        found[stage] = (memory_mib(pid, "VmRSS"), memory_mib(pid, "VmHWM"), resident_parts(pid))
        print(f"  {stage}: RSS {found[stage][0]:.0f} MiB, peak {found[stage][1]:.0f} MiB", flush=True)

    try:
        note("started")
        with server.client() as api:
            print(f"  {train(server, api, bank)}")
            note("trained v1")
            api.get("/models/v1/export", params={"format": "onnx"}).raise_for_status()
            note("exported v1")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak from here on is the serving one
        token = server.token()
        photos = uploads(uploads_per_phase)
        bodies = [multipart(data) for _, _, data in photos]
        for clients in (1, 8, 32):
            drive_sync(server, token, bodies, clients, seconds)
            note(f"sync detect, {clients} clients, {seconds:g} s")
        pipeline(server, token, photos, "memory", timeout=900)
        note(f"upload pipeline, {uploads_per_phase} photos")
        time.sleep(5)
        note("5 s later")
    finally:
        server.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=Bank.parse, default=Bank(10, 256), help="what v1 is trained on (10x256)")
    parser.add_argument("--uploads", type=int, default=1000, help="photos of the upload-pipeline phase (1000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each sync-detect phase (8)")
    parser.add_argument("--src", action="append", default=[], metavar="PYTHONPATH",
                        help="also run a server on this source tree (repeatable), after this checkout's")
    parser.add_argument("--settings", action="append", default=[], metavar="LABELLOOP_KEY=VALUE",
                        help="a setting for every server (repeatable)")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.settings)
    print(f"load average at start: {os.getloadavg()}; bank {args.bank}; settings {settings or 'none'}")
    runs = {}
    for src in [None, *args.src]:
        name = src or os.environ.get("PYTHONPATH", "this checkout")
        print(f"server on {name}:", flush=True)
        runs[name] = stages(src, args.bank, args.uploads, args.seconds, settings)
    for name, found in runs.items():
        print(f"\n{name}\n{'stage':40s} {'RSS MiB':>8s} {'peak MiB':>9s}" + "".join(f"{part:>16s}" for part in PARTS))
        for stage, (rss, peak, parts) in found.items():
            print(f"{stage:40s} {rss:>8.0f} {peak:>9.0f}" + "".join(f"{parts[part]:>16.0f}" for part in PARTS))
    print(f"load average at end: {os.getloadavg()}; the peak after the export is the peak while serving")


if __name__ == "__main__":
    main()
