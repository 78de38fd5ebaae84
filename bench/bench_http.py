"""The HTTP stack's CPU per request on the sync-detect route's shape, per uvicorn protocol and event loop.

    PYTHONPATH=src:EXTRA .venv/bin/python bench/bench_http.py [--rounds 5] [--seconds 4] [--clients 8]

A FastAPI app with labelloop's own request middlewares (``RequestLimits``, ``DefaultSecurityHeaders``) and one
route shaped like ``POST /api/v1/detect`` (a multipart ``file`` read whole, a ``DetectResponse`` answer with
two labels) but no token check, no decoding and no model: what is left is what uvicorn, Starlette, FastAPI
and python-multipart cost per request. Each configuration (uvicorn's pure-Python ``h11`` or ``httptools``;
asyncio's or ``uvloop``'s event loop; those that are importable) runs in its own server process; in every
round each one serves ``--clients`` keep-alive clients (``http.client``, one ~26 KB real-photo JPEG per
request) for ``--seconds``, in an order that rotates, and the table gives the server's CPU per request from
/proc (medians of the rounds) and its ratio to h11 + asyncio measured in the same rounds.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, UploadFile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

TICKS = os.sysconf("SC_CLK_TCK")


def app() -> Any:
    """The detect-shaped app (built in the server process)."""
    from labelloop.app import DefaultSecurityHeaders, RequestLimits
    from labelloop.config import get_settings
    from labelloop.modeling.models import DetectResponse

    application = FastAPI()
    application.add_middleware(RequestLimits, settings=get_settings())
    application.add_middleware(DefaultSecurityHeaders)
    answer = {"model_version": "v1", "labels": [{"name": "plant", "confidence": 91.2345},
                                                {"name": "landscape", "confidence": 8.7655}]}

    @application.post("/api/v1/detect", response_model=DetectResponse)
    async def detect(file: UploadFile) -> dict[str, Any]:
        data = await file.read()
        return {**answer, "bytes": len(data)}

    return application


def serve(port: int, http_impl: str, loop: str) -> None:
    import uvicorn

    uvicorn.run(app(), host="127.0.0.1", port=port, http=http_impl, loop=loop, access_log=False,
                log_level="warning")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def drive(port: int, body: bytes, content_type: str, clients: int, seconds: float) -> int:
    """Requests answered 200 by ``clients`` keep-alive connections in ``seconds``."""
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": "Bearer x", "Content-Type": content_type}
        while time.perf_counter() < stop:
            connection.request("POST", "/api/v1/detect", body, headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"answer {response.status}")
            done[k] += 1
        connection.close()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def configurations() -> list[tuple[str, str]]:
    """(http, loop) pairs whose packages are importable, h11 + asyncio first."""
    found = []
    for http_impl in ("h11", "httptools"):
        for loop in ("asyncio", "uvloop"):
            if all(importlib.util.find_spec(name) for name in {http_impl, loop} - {"asyncio"}):
                found.append((http_impl, loop))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "HTTP", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2])
        return
    from bench_detect import multipart
    from photos import uploads

    from conftest import free_port, wait_until

    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs shared by clients and server")
    body, content_type = multipart(uploads(1)[0][2])
    servers: dict[tuple[str, str], tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for config in configurations():
            port = free_port()
            servers[config] = (port, subprocess.Popen([sys.executable, __file__, "--serve", str(port), *config]))
        for config, (port, _) in servers.items():
            wait_until(lambda port=port: _answers(port), 60, 0.2, f"{config} server")
            drive(port, body, content_type, args.clients, 1.0)  # warm
        cpu: dict[tuple[str, str], list[float]] = {config: [] for config in servers}
        rates: dict[tuple[str, str], list[float]] = {config: [] for config in servers}
        order = list(servers)
        for index in range(args.rounds):
            turn = index % len(order)
            for config in order[turn:] + order[:turn]:
                port, process = servers[config]
                cpu0, wall0 = cpu_seconds(process.pid), time.perf_counter()
                requests = drive(port, body, content_type, args.clients, args.seconds)
                cpu[config].append((cpu_seconds(process.pid) - cpu0) / requests)
                rates[config].append(requests / (time.perf_counter() - wall0))
        reference = cpu[order[0]]
        print(f"\n{args.rounds} rounds of {args.seconds:g} s, {args.clients} clients, load average at end "
              f"{os.getloadavg()}")
        print(f"{'http':<10} {'loop':<8} {'server CPU ms/request':>21} {'range':>13} {'× h11+asyncio':>13} "
              f"{'requests/s':>10}")
        for config in order:
            ratio = statistics.median(c / r for c, r in zip(cpu[config], reference, strict=True))
            print(f"{config[0]:<10} {config[1]:<8} {1000 * statistics.median(cpu[config]):>21.3f} "
                  f"{1000 * min(cpu[config]):>6.3f}–{1000 * max(cpu[config]):<6.3f} {ratio:>13.2f} "
                  f"{statistics.median(rates[config]):>10.0f}")
    finally:
        for _, process in servers.values():
            process.terminate()
            process.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/openapi.json")
        return connection.getresponse().status == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
