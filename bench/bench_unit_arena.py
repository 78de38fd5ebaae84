"""The inference units' memory under ONNX Runtime's memory pattern and arena options, each way in a fresh process
(the shared arena is registered once per process): what two unit sessions keep after serving batches of 1 to 8.

    PYTHONPATH=src .venv/bin/python bench/bench_unit_arena.py [--ways serving,pattern,...] [--batches 80]

Per way, a child process makes two one-thread unit sessions on the process's shared arena (as
``embedding.session_options(1)``, with the way's changes), runs one batch of 1 on each (as a server's warm-up), then
both run ``--batches`` batches of random sizes 1 to 8 at the same time (the sizes the micro-batcher forms), then
``--full`` batches of 8; it prints resident memory (MiB) after the batch of 1, and what it grew by after the mixed
sizes and after the batches of 8, the peak (VmHWM), the CPU per image of the mixed part, and whether the embeddings
are bit for bit those of the first way. Ways (``--ways``), "+"-joined words:

- ``by-tensor``: the units' options of sessions 16-18 (item 44: the shared arena growing by what is asked, the
  memory pattern off); any other way starts from them and changes (``pattern+split+pow2=192`` is what the units
  run since item 55):
- ``pattern``: the memory pattern on (item 44 measured 238 MiB of arena after the sync phases);
- ``split`` or ``split=BYTES``: the arena splits a free chunk it hands out when it is at least BYTES (1 MiB) larger
  than asked (``max_dead_bytes_per_chunk``; by default a chunk less than twice the request and less than 128 MB
  larger is handed out whole; 0 crashed ONNX Runtime 1.32 here);
- ``warm``: each unit first runs the largest batch (``--largest``) twice, both units at once (the first run of a
  shape records its memory pattern, the second allocates its block), so the arena's first regions can hold every
  later batch;
- ``pow2=MIB``: the arena's first region MIB MiB, each later one twice the last (kNextPowerOfTwo) instead of
  regions of the requested size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from photos import uploads  # noqa: E402
from profile_summary import memory_mib  # noqa: E402
from threads import run_concurrently  # noqa: E402

BACKBONE = Path(os.environ.get("LABELLOOP_TEST_BACKBONE_FOLDER", f"/tmp/labelloop-test-backbone-{os.getuid()}"))
WAYS = ("by-tensor", "pattern", "pattern+split", "pattern+split+warm", "pattern+split+pow2=192")


def rss(key: str = "VmRSS") -> float:
    """This process's memory figure ``key`` in MiB."""
    return memory_mib(os.getpid(), key)


def child(args: argparse.Namespace) -> None:
    """One way, in this (fresh) process; prints a JSON line."""
    import onnxruntime as ort

    from labelloop.modeling.embedding import session_options
    from labelloop.modeling.images import prepare

    words = dict(word.partition("=")[::2] for word in args.child.split("+"))
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    dead = int(words["split"] or 1 << 20) if "split" in words else -1
    if "pow2" in words:
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, 0, int(words["pow2"]) << 20, dead))
    else:
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, 1, -1, dead))

    def options() -> ort.SessionOptions:
        """The units' options (one thread), on the arena registered above instead of the serving one."""
        chosen = session_options(1, shared_arena=False)
        chosen.add_session_config_entry("session.use_env_allocators", "1")
        chosen.enable_mem_pattern = "pattern" in words
        return chosen

    photos = np.stack([prepare(data, view="letterbox_fast") for _, _, data in uploads(16)])
    inputs = np.concatenate([photos, photos])  # 32 rows
    sessions = [ort.InferenceSession(str(args.backbone), options(), providers=["CPUExecutionProvider"])
                for _ in range(2)]

    def run(session: ort.InferenceSession, size: int) -> np.ndarray:
        return session.run(["embedding"], {"input": np.ascontiguousarray(inputs[:size])})[0]

    def both(work: Callable[[int], object]) -> None:
        run_concurrently(work, range(2))

    for session in sessions:
        run(session, 1)
    warmed = rss()
    if "warm" in words:
        both(lambda k: [run(sessions[k], args.largest) for _ in range(2)])
    sizes = [np.random.default_rng(k).integers(1, 9, args.batches) for k in range(2)]
    began = time.process_time()
    both(lambda k: [run(sessions[k], int(size)) for size in sizes[k]])
    cpu = 1000 * (time.process_time() - began) / sum(int(s.sum()) for s in sizes)
    mixed = rss()
    both(lambda k: [run(sessions[k], 8) for _ in range(args.full)])
    embeddings = run(sessions[0], 8)
    reference = Path(args.reference)
    if not reference.exists():
        np.save(reference, embeddings)
    same = bool(np.array_equal(np.load(reference), embeddings))
    print(json.dumps({"way": args.child, "warmed": warmed, "mixed": mixed, "full": rss(), "peak": rss("VmHWM"),
                      "cpu": cpu, "same": same}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", type=Path, default=BACKBONE / "efficientnet_lite0.onnx")
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, default=80)
    parser.add_argument("--full", type=int, default=10)
    parser.add_argument("--largest", type=int, default=8)
    parser.add_argument("--child")
    parser.add_argument("--reference")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    names = args.ways.split(",")
    reference = Path(tempfile.mkdtemp()) / "reference.npy"
    results: dict[str, list[dict]] = {name: [] for name in names}
    for index in range(args.rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            done = subprocess.run([sys.executable, __file__, "--child", name, "--reference", str(reference),
                                   "--backbone", str(args.backbone), "--batches", str(args.batches),
                                   "--full", str(args.full), "--largest", str(args.largest)],
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[name].append(row)
            print(f"round {index + 1} {name:26s} after a batch of 1 {row['warmed']:4.0f} MiB, mixed sizes "
                  f"+{row['mixed'] - row['warmed']:4.0f}, then batches of 8 +{row['full'] - row['warmed']:4.0f}, "
                  f"peak {row['peak']:6.0f}; mixed part {row['cpu']:.2f} CPU ms/img; embeddings the first "
                  f"way's: {row['same']}", flush=True)
    print(f"medians of {args.rounds} rounds (MiB over a batch of 1 each; CPU ms per image of the mixed part):")
    for name, rows in results.items():
        print(f"  {name:26s} mixed +{statistics.median(r['mixed'] - r['warmed'] for r in rows):4.0f}, "
              f"end +{statistics.median(r['full'] - r['warmed'] for r in rows):4.0f}, "
              f"{statistics.median(r['cpu'] for r in rows):.2f} ms")


if __name__ == "__main__":
    main()
