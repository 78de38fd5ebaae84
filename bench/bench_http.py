"""The HTTP stack's CPU per request on the sync-detect route's shape, per uvicorn protocol and event loop.

    PYTHONPATH=src:EXTRA .venv/bin/python bench/bench_http.py [--rounds 5] [--seconds 4] [--clients 8]
    PYTHONPATH=src .venv/bin/python bench/bench_http.py --detect-path [--compare-src OTHER/src ...]
    PYTHONPATH=src .venv/bin/python bench/bench_http.py --put-path [--compare-src OTHER/src ...]

A FastAPI app with labelloop's own request middlewares (``RequestLimits``, ``DefaultSecurityHeaders``) and one
route shaped like ``POST /api/v1/detect`` (a multipart ``file`` read whole, a ``DetectResponse`` answer with
two labels) but no token check, no decoding and no model: what is left is what uvicorn, Starlette, FastAPI
and python-multipart cost per request. Each configuration (uvicorn's pure-Python ``h11`` or ``httptools``;
asyncio's or ``uvloop``'s event loop; those that are importable) runs in its own server process; in every
round each one serves ``--clients`` keep-alive clients (``http.client``, one ~26 KB real-photo JPEG per
request) for ``--seconds``, in an order that rotates, and the table gives the server's CPU per request from
/proc (medians of the rounds) and its ratio to h11 + asyncio measured in the same rounds.

``--detect-path``: the real ``POST /api/v1/detect`` route of each source tree (``src`` and every
``--compare-src``; uvicorn's defaults, httptools and uvloop) with its middlewares, its token check (a token
remembered by ``recent_tokens``: no database), the prepare pool decoding real photos and the micro-batcher, on a
stub model: each inference unit sleeps ``--model-ms`` per image (the real backbone's time, without its CPU) and a
two-label head answers. Per thread role (event loop, prepare pool, inference units, other) the server's CPU per
request from /proc/PID/task, medians of the rounds, servers in an order that rotates: what the serving path costs
outside the model and the decoder.

``--put-path``: the same table for the bucket's real ``PUT /api/v1/objects/images_for_detection/…`` route of each
tree (its middlewares, its token check on a remembered token, its worker-thread hop, one real-photo JPEG per
request) with a stub store in place of ``actions.store_object`` (an MD5 and an ``ObjectInfo``; no file, no
workflow): what the HTTP path of an upload costs outside the store, per thread role ("handler threads": AnyIO's
worker threads).
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
from profile_summary import cpu_seconds, fields_cpu, stat_fields  # noqa: E402
from threads import run_concurrently  # noqa: E402


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


class StubEmbedder:
    """The backbone's stand-in: sleeps ``seconds`` per image (the model's time, not its CPU)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def embed(self, inputs: Any) -> Any:
        import numpy as np

        time.sleep(self.seconds * len(inputs))
        return np.zeros((len(inputs), 8), dtype=np.float32)


class StubHead:
    """A two-label head with fixed probabilities."""

    labels = ["plant", "landscape"]

    def predict_proba(self, embeddings: Any) -> Any:
        import numpy as np

        return np.tile(np.array([[0.912345, 0.087655]]), (len(embeddings), 1))


def detect_app(model_ms: float) -> Any:
    """The tree's own detect route, middlewares and error handlers on a stub model (built in the server)."""
    from labelloop.modeling import endpoint, views
    from labelloop.modeling.serving import LoadedVersion, Serving

    application = routes_app(views.router)
    endpoint._serving = Serving(lambda _threads: StubEmbedder(model_ms / 1000),  # type: ignore[arg-type]
                                units=endpoint.backbone_sessions(1))
    endpoint._serving.switch(LoadedVersion("v1", StubHead(), view="letterbox_fast"))
    endpoint._synced_at = float("inf")  # never asks the database what serves
    return application


def routes_app(router: Any) -> Any:
    """An app of the tree's middlewares, error handlers and ``router``, with a remembered consumer token "x"."""
    import labelloop.app as web
    from labelloop import memory
    from labelloop.config import get_settings
    from labelloop.workforce import service
    from labelloop.workforce.models import User

    memory.limit_arenas(get_settings().malloc_arenas)  # as `labelloop serve` starts
    application = FastAPI()
    web._error_handlers(application)
    install = getattr(web, "install_middleware", None)
    if install is not None:
        install(application, get_settings())
    else:
        application.add_middleware(web.RequestLimits, settings=get_settings())
        application.add_middleware(web.DefaultSecurityHeaders)
    application.include_router(router)

    @application.get("/threads")
    def threads() -> dict[str, str]:
        return {str(thread.native_id): thread.name for thread in threading.enumerate()}

    service.recent_tokens.seconds = 1e9
    user = User(username="consumer", role="consumer", must_change_password=False, disabled=False)
    service.recent_tokens.remember(service._token_digest("x"), user, 4e9, service.recent_tokens.generation)
    return application


def put_app() -> Any:
    """The tree's own bucket routes, middlewares and error handlers on a stub store (built in the server)."""
    import hashlib
    from datetime import UTC, datetime

    from labelloop.loop import actions
    from labelloop.storage import views
    from labelloop.storage.models import ObjectInfo

    def stored(key: str, data: bytes, *, source: str, actor: str = "system") -> ObjectInfo:
        return ObjectInfo(key=key, size=len(data), etag=hashlib.md5(data, usedforsecurity=False).hexdigest(),
                          last_modified=datetime.now(UTC), content_type="image/jpeg", run_id="run")

    actions.store_object = stored  # type: ignore[assignment]
    return routes_app(views.router)


def serve_put(port: int) -> None:
    import uvicorn

    uvicorn.run(put_app(), host="127.0.0.1", port=port, access_log=False, log_level="warning")


def serve_detect(port: int, model_ms: float) -> None:
    import uvicorn

    uvicorn.run(detect_app(model_ms), host="127.0.0.1", port=port, access_log=False, log_level="warning")


def serve(port: int, http_impl: str, loop: str) -> None:
    import uvicorn

    uvicorn.run(app(), host="127.0.0.1", port=port, http=http_impl, loop=loop, access_log=False,
                log_level="warning")


def drive(port: int, body: bytes, content_type: str, clients: int, seconds: float,
          bodies: list[tuple[bytes, str]] | None = None, put: bool = False) -> int:
    """Requests answered 200 (201 for a ``put``) by ``clients`` keep-alive connections in ``seconds`` (``bodies``
    in turn, else ``body``): detect requests, or with ``put`` PUTs of new keys under images_for_detection/."""
    done = [0] * clients
    stop = time.perf_counter() + seconds
    bodies = bodies or [(body, content_type)]

    def loop(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < stop:
            body, content_type = bodies[(k + done[k]) % len(bodies)]
            headers = {"Authorization": "Bearer x", "Content-Type": content_type}
            if put:
                connection.request("PUT", f"/api/v1/objects/images_for_detection/{k}/{done[k]}.jpg", body, headers)
            else:
                connection.request("POST", "/api/v1/detect", body, headers)
            response = connection.getresponse()
            response.read()
            if response.status != (201 if put else 200):
                raise RuntimeError(f"answer {response.status}")
            done[k] += 1
        connection.close()

    run_concurrently(loop, range(clients))
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
    parser.add_argument("--detect-path", action="store_true", help="the real detect route on a stub model")
    parser.add_argument("--put-path", action="store_true", help="the real bucket PUT route on a stub store")
    parser.add_argument("--compare-src", action="append", default=[], metavar="PYTHONPATH")
    parser.add_argument("--model-ms", type=float, default=8.5, help="the stub model's time per image")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "HTTP", "LOOP"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-detect", nargs=2, metavar=("PORT", "MODEL_MS"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-put", metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2])
        return
    if args.serve_detect:
        serve_detect(int(args.serve_detect[0]), float(args.serve_detect[1]))
        return
    if args.serve_put:
        serve_put(int(args.serve_put))
        return
    if args.detect_path or args.put_path:
        detect_path(args)
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


ROLES = (("event loop", "MainThread"), ("prepare pool", "detect-prepare"), ("inference units", "inference-unit"),
         ("handler threads", "AnyIO worker thread"))


def role_cpu(pid: int, names: dict[str, str]) -> dict[str, float]:
    """CPU seconds of process ``pid`` by thread role (``ROLES``, else "other"), and its minor page faults
    ("faults"), from /proc."""
    found = dict.fromkeys([role for role, _ in ROLES] + ["other", "faults"], 0.0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = stat_fields(task / "stat")
        except OSError:
            continue
        name = names.get(task.name, "")
        role = next((role for role, prefix in ROLES if name.startswith(prefix)), "other")
        found[role] += fields_cpu(fields)
        found["faults"] += int(fields[7]) / 1000  # per request, as thousands: the table's ms column scale
    return found


def detect_path(args: argparse.Namespace) -> None:
    """The ``--detect-path`` (or ``--put-path``) table: per source tree and thread role, server CPU ms per
    request."""
    import json

    from bench_detect import multipart
    from photos import uploads

    from conftest import free_port, wait_until

    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs shared by clients and server")
    put = args.put_path
    bodies = [(data, "image/jpeg") if put else multipart(data) for _, _, data in uploads(16)]
    serving = ["--serve-put"] if put else ["--serve-detect"]
    trees = ["src", *args.compare_src]
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for tree in trees:
            port = free_port()
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            command = [sys.executable, __file__, *serving, str(port)] + ([] if put else [str(args.model_ms)])
            servers[tree] = (port, subprocess.Popen(command, env=env))
        names: dict[str, dict[str, str]] = {}
        for tree, (port, _) in servers.items():
            wait_until(lambda port=port: _answers(port), 60, 0.2, f"{tree} server")
            drive(port, b"", "", args.clients, 1.0, bodies, put)  # warm: every pool thread started
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/threads")
            names[tree] = json.loads(connection.getresponse().read())
        cpu: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
        rates: dict[str, list[float]] = {tree: [] for tree in trees}
        for index in range(args.rounds):
            turn = index % len(trees)
            for tree in trees[turn:] + trees[:turn]:
                port, process = servers[tree]
                cpu0, wall0 = role_cpu(process.pid, names[tree]), time.perf_counter()
                requests = drive(port, b"", "", args.clients, args.seconds, bodies, put)
                cpu1 = role_cpu(process.pid, names[tree])
                cpu[tree].append({role: 1000 * (cpu1[role] - cpu0[role]) / requests for role in cpu0})
                rates[tree].append(requests / (time.perf_counter() - wall0))
        stub = "stub store" if put else f"stub model {args.model_ms:g} ms/image"
        print(f"\n{args.rounds} rounds of {args.seconds:g} s, {args.clients} clients, {stub}, load average at end "
              f"{os.getloadavg()}; server CPU ms per request (median of the rounds, min–max); faults: "
              "the process's minor page faults per request")
        roles = [role for role, _ in ROLES] + ["other", "all", "faults"]
        print(f"{'tree':<28} " + " ".join(f"{role:>17}" for role in roles) + f" {'requests/s':>10}")
        for tree in trees:
            for row in cpu[tree]:
                row["all"] = sum(cpu for role, cpu in row.items() if role != "faults")
            cells = [f"{statistics.median(r[role] for r in cpu[tree]):.3f} "
                     f"({min(r[role] for r in cpu[tree]):.2f}–{max(r[role] for r in cpu[tree]):.2f})"
                     for role in roles]
            print(f"{tree[-28:]:<28} " + " ".join(f"{cell:>17}" for cell in cells)
                  + f" {statistics.median(rates[tree]):>10.0f}")
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
