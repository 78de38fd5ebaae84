"""Serving RSS through a serving process's life, with glibc's default malloc arenas and with labelloop's limit.

One server at a time (the same code, ``LABELLOOP_MALLOC_ARENAS=0`` — glibc's default, eight arenas per core —
then the default 2): start, train a two-label model on real photos, export it (``GET /models/v1/export``), sync
detect from 8 then 32 clients, then the upload pipeline twice. After each stage the table gives the process's
RSS and its peak (VmHWM), and the last column the ratio of the limited server's RSS to the default one's.

    PYTHONPATH=src .venv/bin/python bench/bench_memory.py [--uploads 500] [--seconds 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import OUT, drive_sync, memory_mib, multipart, pipeline, start_server, train, uploads

SETTINGS = {"glibc default (0)": "0", "labelloop default (2)": "2"}


def stages(arenas: str, uploads_per_round: int, seconds: float) -> dict[str, tuple[float, float]]:
    """RSS and peak RSS (MiB) of one server after each stage of its life."""
    server = start_server(None, OUT / "memory-home", LABELLOOP_MALLOC_ARENAS=arenas)
    pid, found = server.process.pid, {}

    def note(stage: str) -> None:
        found[stage] = (memory_mib(pid, "VmRSS"), memory_mib(pid, "VmHWM"))

    try:
        note("started")
        with server.client() as api:
            train(server, api)
            note("trained v1")
            api.get("/models/v1/export", params={"format": "onnx"}).raise_for_status()
            note("exported v1")
        token = server.token()
        photos = uploads(2 * uploads_per_round)
        bodies = [multipart(data) for _, _, data in photos[:uploads_per_round]]
        for clients in (8, 32):
            drive_sync(server, token, bodies, clients, seconds)
            note(f"sync detect, {clients} clients, {seconds:g} s")
        for turn in range(2):
            pipeline(server, token, photos[turn * uploads_per_round:(turn + 1) * uploads_per_round],
                     f"memory{arenas}-{turn}", timeout=900)
            note(f"upload pipeline, {(turn + 1) * uploads_per_round} photos in all")
    finally:
        server.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=500, help="photos per upload-pipeline round (two rounds)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each sync-detect phase")
    args = parser.parse_args()
    runs = {name: stages(arenas, args.uploads, args.seconds) for name, arenas in SETTINGS.items()}
    names = list(SETTINGS)
    print(f"\n{'stage':45s}" + "".join(f"{name + ': RSS / peak MiB':>40s}" for name in names) + f"{'RSS ratio':>11s}")
    for stage in runs[names[0]]:
        cells = [runs[name][stage] for name in names]
        print(f"{stage:45s}" + "".join(f"{rss:>30.0f} / {peak:>7.0f}" for rss, peak in cells)
              + f"{cells[1][0] / cells[0][0]:>11.2f}")


if __name__ == "__main__":
    main()
