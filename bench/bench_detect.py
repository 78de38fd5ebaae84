"""End-to-end detect throughput and latency against raw ONNX Runtime, per inference-unit count.

    .venv/bin/python bench/bench_detect.py [--seconds 10] [--units 1 2]

Starts a real `labelloop serve` (its own home in bench/out/detect-home), trains a tiny two-label model,
then for each `Minimum-Inference-Units` value drives `POST /api/v1/detect` with 1, 8 and 32 concurrent
clients (threads with keep-alive HTTP connections, a 224-px JPEG each) and reports images/s and latency
percentiles. In the same run it measures the raw ONNX Runtime backbone at batch 32 (all cores), the
reference the targets are stated against: end-to-end ≥ 70 % of raw, p50 with one client ≤ 50 ms, serving
process peak RSS ≤ 1 GiB. Rekognition Custom Labels serves 5 transactions/s per inference unit; the last
column puts ours beside that.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Server, server_env  # noqa: E402
from images import smile_logo, upload_training_set  # noqa: E402
from labelloop.modeling.embedding import Embedder  # noqa: E402
from labelloop.modeling.export import ensure_backbone_onnx  # noqa: E402

OUT = ROOT / "bench" / "out"
REKOGNITION_TPS_PER_UNIT = 5.0


def jpeg_224() -> bytes:
    image = Image.open(io.BytesIO(smile_logo(3, size=224))).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def raw_throughput(seconds: float) -> float:
    embedder = Embedder(ensure_backbone_onnx(OUT / "cache"))
    batch = np.random.default_rng(0).uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32)
    embedder.embed(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.embed(batch)
        done += 32
    return done / (time.perf_counter() - started)


def drive(server: Server, clients: int, seconds: float, image: bytes) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop() -> None:
        with server.client(token) as api:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = api.post("/detect", files={"file": ("a.jpg", image, "image/jpeg")})
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1

    token = server.token()
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - began), latencies, errors[0]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--units", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    home = OUT / "detect-home"
    shutil.rmtree(home, ignore_errors=True)
    server = Server(home=home, env=server_env(LABELLOOP_LOG_LEVEL="WARNING")).start()
    try:
        with server.client() as api:
            upload_training_set(api, 5)
            server.wait_run(api.post("/training/check").json()["run_id"], timeout=600)
        image = jpeg_224()
        raw = raw_throughput(args.seconds)
        print(f"raw ONNX Runtime backbone, batch 32, {os.cpu_count()} cores: {raw:.1f} images/s\n")
        print(f"{'units':>5} {'clients':>7} {'images/s':>9} {'% of raw':>8} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'p99 ms':>7} {'errors':>6} {'img/s per unit':>14} {'Rekognition/unit':>16}")
        for units in args.units:
            with server.client() as api:
                api.put("/parameters/Minimum-Inference-Units", json={"value": str(units)})
            drive(server, 2, 2.0, image)  # the server picks the new unit count up and warms
            for clients in (1, 8, 32):
                rate, latencies, errors = drive(server, clients, args.seconds, image)
                q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [float("nan")] * 99
                print(f"{units:>5} {clients:>7} {rate:>9.1f} {100 * rate / raw:>7.0f}% {1000 * q[49]:>7.1f} "
                      f"{1000 * q[94]:>7.1f} {1000 * q[98]:>7.1f} {errors:>6} {rate / units:>14.1f} "
                      f"{REKOGNITION_TPS_PER_UNIT:>16.1f}")
        print(f"\nserving process peak RSS: {peak_rss_mib(server.process.pid):.0f} MiB (target ≤ 1024)")
    finally:
        server.stop()


if __name__ == "__main__":
    try:
        main()
    except (httpx.HTTPError, subprocess.SubprocessError) as exc:
        sys.exit(f"benchmark failed: {exc}")
