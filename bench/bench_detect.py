"""Detection throughput end to end against the raw exported model, in one run: sync API, upload pipeline, RSS.

    .venv/bin/python bench/bench_detect.py [--quick] [--rounds 3] [--seconds 8] [--uploads 1000] [--profile]

Needs the real photographs of `make bench-photos`. Starts a real `labelloop serve` (home in
bench/out/detect-home), trains a model on real photos (``--bank``: by default 10 labels, one photograph each, of
256 crops each, so that the familiarity bank every served batch is multiplied by has its full 10 × 256 rows, as a
real deployment's would; ``--bank two-label`` trains the plant / landscape model of sessions 1–14, whose bank has
about 18 rows a label), exports it (`GET /models/v1/export`) and, per round:

1. **raw**: the exported ONNX file in ONNX Runtime in this process, both cores, preprocessed real photos, batch
   1, 8 and 32 (the serving session options; batch 32 also with ONNX Runtime's default spinning thread pool,
   and the faster of the two batch-32 figures is the reference);
2. **sync**: ``POST /api/v1/detect`` (multipart, one ~320 px JPEG photo each) from 1, 8 and 32 client threads
   with keep-alive connections, for ``--seconds`` each: images/s and p50/p95/p99 latency;
3. **upload pipeline**: ``--uploads`` JPEG photos PUT to ``images_for_detection/`` by 4 client threads, timed
   from the first PUT until the last of their detection events is DETECTED (polled through
   ``GET /api/v1/detections``; the end is the last event's ``detected_at``); then ``--single-uploads`` photos
   one at a time, each from its PUT to its event's ``detected_at`` (a lone upload's latency). With
   ``--compare-src`` every server runs both, in turn. Each phase's note also says how it went inside the
   server: its runs (batches) and their median size, how its detections were routed (audits open loops), the
   server's CPU until the last detection (and its system part), page faults, waits and preemptions per image,
   the RSS before and after, and what the phase's own listings of events and loops cost after it;
4. **raw** again.

Every figure is also given as a ratio to raw batch 32 of the same round (mean of before and after). The
clients run in this process, on the same 2 cores as the server: the table gives the CPU seconds each side
used per image (server from /proc, clients from this process), so client overhead is visible, not hidden.
Peak RSS of the serving process is read from /proc (VmHWM), reset after training so that it is the peak
while serving. With ``--profile`` py-spy records the server during each end-to-end phase (raw stacks in
bench/out/profile, a summary printed); profiled rounds are slower, use them for where the time goes only.

``--compare-src`` (A/B in one run): every server is set up alike, each set-up step (start, train, export, warm,
idle) on all of them at once, and each round's phases take the servers in turn, the order rotating; a table of
each server's CPU per image, round by round, ends the run. Run the same src as both (``--compare-src src``) to
see the bench's own residue between positions, and an A/B both ways round (README Performance, item 51).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from photos import photographs, uploads  # noqa: E402
from profile_summary import (  # noqa: E402
    TICKS,
    cpu_roles,
    cpu_seconds,
    memory_mib,
    stat_fields,
    summarize,
    thread_cpu,
    thread_names,
)
from threads import run_concurrently  # noqa: E402

from conftest import Server, server_env, wait_until  # noqa: E402
from labelloop.modeling.embedding import default_threads, session_options  # noqa: E402
from labelloop.modeling.images import prepare  # noqa: E402

OUT = ROOT / "bench" / "out"
REKOGNITION_TPS_PER_UNIT = 5.0


@dataclass
class Row:
    """One measured figure of a round."""

    phase: str
    rate: float  # images/s
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    server_cpu: float = float("nan")  # server CPU seconds per image
    client_cpu: float = float("nan")  # this process's CPU seconds per image
    idle_cpu: float = float("nan")  # of server_cpu, what the idle server burns in the same time, per image
    note: str = ""

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 3:
            return float("nan")
        return 1000 * statistics.quantiles(self.latencies, n=100)[q - 1]


def machine_idle_seconds() -> float:
    """CPU seconds the whole machine has spent idle (all cores, idle and iowait, /proc/stat) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / TICKS


@contextmanager
def metered(server_pid: int, idle: float = float("nan")) -> Iterator[dict[str, Any]]:
    """Time a phase and count both sides' CPU; the caller fills ``box['images']``, gets ``box['row']``.
    ``idle``: the server's CPU seconds per second with no request (its share of the phase is noted). The note
    also gives how many cores the machine left idle meanwhile: near 0, both cores were busy (with this server,
    its clients or other work); on a quiet machine, what the server did not use."""
    box: dict[str, Any] = {}
    server0, client0, wall0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    machine0 = machine_idle_seconds()
    yield box
    images = max(1, box["images"])
    row = box["row"]
    box["wall"] = time.perf_counter() - wall0
    row.server_cpu = (cpu_seconds(server_pid) - server0) / images
    row.client_cpu = (time.process_time() - client0) / images
    row.idle_cpu = idle * box["wall"] / images
    cores_idle = f"machine idle {(machine_idle_seconds() - machine0) / box['wall']:.2f} cores"
    row.note = f"{row.note}; {cores_idle}" if row.note else cores_idle


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU seconds per second the server burns with no request at all."""
    started, wall = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - started) / (time.perf_counter() - wall)


# ── raw exported model ───────────────────────────────────────────────────────


def raw_session(path: Path, spinning: bool) -> Any:
    import onnxruntime as ort

    if spinning:  # ONNX Runtime's own defaults, with the same thread count
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads()
    else:
        options = session_options(default_threads())
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def raw_rate(session: Any, inputs: np.ndarray, batch: int, seconds: float) -> Row:
    x = np.ascontiguousarray(inputs[:batch])
    session.run(None, {"input": x})
    done, client0, started = 0, time.process_time(), time.perf_counter()
    latencies = []
    while time.perf_counter() - started < seconds:
        began = time.perf_counter()
        session.run(None, {"input": x})
        latencies.append(time.perf_counter() - began)
        done += batch
    wall = time.perf_counter() - started
    return Row(f"raw, batch {batch}", done / wall, latencies, client_cpu=(time.process_time() - client0) / done)


def raw_phase(model: Path, inputs: np.ndarray, seconds: float, when: str) -> dict[str, Row]:
    rows = {}
    session = raw_session(model, spinning=False)
    for batch in (1, 8, 32):
        rows[f"raw{batch}"] = raw_rate(session, inputs, batch, seconds)
    spinning = raw_rate(raw_session(model, spinning=True), inputs, 32, seconds)
    spinning.phase = "raw, batch 32, spinning pool"
    rows["raw32spin"] = spinning
    for row in rows.values():
        row.phase += f" ({when})"
    return rows


# ── sync detect ──────────────────────────────────────────────────────────────


class Connection:
    """A keep-alive HTTP/1.1 connection with requests built once: the lightest client the standard library has.

    httpx cost 5-16 ms of client CPU per request here, on the same two cores as the server; this costs well
    under 1 ms (the table shows it), so the server gets the CPU a remote client would leave it.
    """

    def __init__(self, server: Server, token: str) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        self.auth = f"Bearer {token}"

    def send(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """One request; sent again once on a fresh connection when the server had closed the kept-alive one
        (uvicorn drops a connection idle for 5 s: a lone upload whose detection took longer under load)."""
        try:
            return self._send(method, path, body, content_type)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.http.close()
            return self._send(method, path, body, content_type)

    def _send(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        self.http.request(method, path, body, {"Authorization": self.auth, "Content-Type": content_type})
        response = self.http.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.http.close()


def multipart(data: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``file`` part, and its content type."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n")
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def drive_sync(server: Server, token: str, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> Row:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop(offset: int) -> None:
        connection = Connection(server, token)
        i = offset
        try:
            while time.perf_counter() < stop:
                body, content_type = bodies[i % len(bodies)]
                i += 1
                began = time.perf_counter()
                try:
                    status, payload = connection.send("POST", "/api/v1/detect", body, content_type)
                except (OSError, http.client.HTTPException) as exc:
                    status, payload = 0, repr(exc).encode()
                    connection.close()
                    connection = Connection(server, token)
                elapsed = time.perf_counter() - began
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{status} {payload[:200]!r}")
        finally:
            connection.close()

    began = time.perf_counter()
    run_concurrently(loop, [k * 97 for k in range(clients)])
    row = Row(f"sync detect, {clients} clients", len(latencies) / (time.perf_counter() - began), latencies,
              len(errors))
    if errors:
        row.note = f"first error: {errors[0]}"
    return row


# ── upload pipeline ──────────────────────────────────────────────────────────


def detected_count(api: httpx.Client) -> int:
    return len(api.get("/detections", params={"status": "DETECTED", "limit": 100_000}).json())


def pipeline(server: Server, token: str, photos: list[tuple[str, str, bytes]], tag: str,
             timeout: float, before: int | None = None, on_detected: Callable[[], None] = lambda: None) -> Row:
    """PUT every photo to images_for_detection/ from 4 threads; images/s until the last one is DETECTED (``before``:
    the DETECTED events there were, counted here if not given). The row's latencies are the PUTs' round trips
    (what bounds the pipeline when the server keeps up). ``on_detected`` is called once all are detected, before
    the phase lists the events it counts."""
    if before is None:
        with server.client(token) as api:
            before = detected_count(api)
    objects = [(f"images_for_detection/{tag}/{name}.jpg", data) for name, _, data in photos]
    started_at = datetime.now().astimezone()
    started = time.perf_counter()
    failures, round_trips = put_objects(server, token, objects)
    put_seconds = time.perf_counter() - started
    expected = before + len(photos) - len(failures)
    with server.client(token) as api:
        def all_detected() -> bool:
            # One row when the expected number of DETECTED events exists: a cheap poll of the event log.
            page = api.get("/detections", params={"status": "DETECTED", "offset": expected - 1, "limit": 1})
            return bool(page.json())

        wait_until(all_detected, timeout, 0.5, f"{len(photos)} detections")
        on_detected()
        events = [e for e in api.get("/detections", params={"limit": 100_000}).json()
                  if e["object_key"].startswith(f"images_for_detection/{tag}/")]
        # The API lists at most 5,000 loops a page (a larger limit is refused with 422).
        open_loops = api.get("/human-loops", params={"status": "InProgress", "limit": 5000})
        open_loops.raise_for_status()
        loops = len(open_loops.json())
    detected = [e for e in events if e["status"] == "DETECTED"]
    last = max(datetime.fromisoformat(e["detected_at"]) for e in detected)
    seconds = (last - started_at).total_seconds()
    errors = len(failures) + len(photos) - len(detected)
    return Row(f"upload pipeline, 4 clients, {len(photos)} photos", len(detected) / seconds, round_trips, errors,
               note=f"PUTs took {put_seconds:.1f} s (p50 etc.: a PUT's round trip); {loops} human loops open in all; "
                    f"{batch_sizes(events)}; {routed(detected)}")


def batch_sizes(events: list[dict[str, Any]]) -> str:
    """How the phase's uploads were batched: runs, their median size, runs of one upload."""
    sizes = sorted(Counter(event["run_id"] for event in events).values())
    return f"{len(sizes)} runs (median {statistics.median(sizes):.0f} uploads, {sizes.count(1)} of one)"


def routed(events: list[dict[str, Any]]) -> str:
    """How many of the phase's detections each routing rule sent where (the loops a phase opens cost CPU)."""
    return "routed " + ", ".join(f"{rule} {n}" for rule, n in Counter(e["routing_rule"] for e in events).most_common())


def one_upload_latency(server: Server, token: str, photos: list[tuple[str, str, bytes]], tag: str) -> Row:
    """Uploads one at a time, each waited for: from just before its PUT to its event's ``detected_at`` (the
    same clock: server and clients share the machine). The latency of a lone upload, batched or not."""
    connection = Connection(server, token)
    latencies, errors = [], 0
    try:
        with server.client(token) as api:
            for name, _, data in photos:
                key = f"images_for_detection/{tag}/{name}.jpg"
                started = datetime.now().astimezone()
                status, _ = connection.send("PUT", f"/api/v1/objects/{key}", data, "image/jpeg")
                if status != 201:
                    errors += 1
                    continue

                def detected(key: str = key) -> dict[str, Any] | None:
                    newest = api.get("/detections", params={"limit": 1}).json()
                    return newest[0] if newest and newest[0]["object_key"] == key and newest[0]["detected_at"] \
                        else None

                event = wait_until(detected, 60, 0.01, f"the detection of {key}")
                latencies.append((datetime.fromisoformat(event["detected_at"]) - started).total_seconds())
    finally:
        connection.close()
    return Row(f"one upload at a time, {len(photos)} photos", len(latencies) / max(sum(latencies), 1e-9),
               latencies, errors, note="PUT to detected_at")


def process_counters(pid: int) -> dict[str, float]:
    """The server's CPU (user, system), page faults, context switches and RSS so far, from /proc."""
    fields = stat_fields(Path(f"/proc/{pid}/stat"))
    status = {line.split(":")[0]: line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
              if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt", "VmRSS"))}
    return {"user": int(fields[11]) / TICKS, "system": int(fields[12]) / TICKS, "minflt": int(fields[7]),
            "majflt": int(fields[9]), "switches": int(status["voluntary_ctxt_switches"]),
            "preempted": int(status["nonvoluntary_ctxt_switches"]), "rss": int(status["VmRSS"]) / 1024}


def counted(before: dict[str, float], detected: dict[str, float], after: dict[str, float],
            images: int) -> tuple[float, str]:
    """The server's CPU seconds per image until a pipeline phase's last detection (the row's figure: the phase's
    own listings after it, and the count of events before it, are the bench's work, not the pipeline's, and
    grow with every round's events), and a note of the rest, per image."""
    def per_image(key: str, end: dict[str, float]) -> float:
        return (end[key] - before[key]) / images

    cpu = per_image("user", detected) + per_image("system", detected)
    listing = per_image("user", after) + per_image("system", after) - cpu
    note = (f"until the last detection {1000 * cpu:.2f} CPU ms/img {counts(before, detected, images)}, RSS "
            f"{before['rss']:.0f} → {after['rss']:.0f} MiB; the bench's listings after it {1000 * listing:.2f} ms/img "
            "(not in the row's CPU)")
    return cpu, note


def counts(before: dict[str, float], end: dict[str, float], images: int) -> str:
    """The system part of the server's CPU, its page faults, waits and preemptions per image between two
    :func:`process_counters`."""
    def per_image(key: str) -> float:
        return (end[key] - before[key]) / images

    return (f"(system {1000 * per_image('system'):.2f}), {per_image('minflt'):.1f} page faults/img, "
            f"{per_image('switches'):.1f} waits/img, {per_image('preempted'):.1f} preempted/img")


def pipeline_phases(servers: list[Served], photos: list[tuple[str, str, bytes]], args: argparse.Namespace,
                    index: int) -> dict[str, Row]:
    """The upload pipeline (and one upload at a time) on every server in turn, the order rotating each round."""
    rows: dict[str, Row] = {}
    turn = index % len(servers)
    alone, together = photos[:args.single_uploads], photos[args.single_uploads:]
    for served in servers[turn:] + servers[:turn]:
        pid, name = served.server.process.pid, served.name
        suffix = f" [{name}]" if name else ""
        with served.server.client(served.token) as api:
            before = detected_count(api)  # the bench's own listing, before the phase's CPU is counted
        counters, marks = process_counters(pid), {}
        with profiled(args.profile, args.py_spy, pid, f"upload{name}") as spied, \
                metered(pid, served.idle) as box:
            row = pipeline(served.server, served.token, together, f"round{index}{name}",
                           timeout=args.pipeline_timeout, before=before,
                           on_detected=lambda: marks.update(process_counters(pid)))  # noqa: B023
            box["images"], box["row"] = len(together), row
            spied["images"] = len(together)
        row.server_cpu, note = counted(counters, marks, process_counters(pid), len(together))
        row.note += "; " + note
        row.phase += suffix
        rows[f"upload{name}"] = row
        if alone:
            with metered(pid, served.idle) as box:
                row = one_upload_latency(served.server, served.token, alone, f"alone{index}{name}")
                box["images"], box["row"] = len(alone), row
            row.phase += suffix
            rows[f"alone{name}"] = row
    return rows


# ── set-up ───────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Bank:
    """What v1 is trained on, so what its familiarity bank holds (``--bank``): ``labels`` photographs × ``per_label``
    crops of each (labelled by photograph; with the default Train-Final-Model-On-All-Images every crop, at most 256 a
    label, is a bank row), or with ``labels`` 0 the two-label model of sessions 1–14 (plant / landscape, about 18
    crops a label)."""

    labels: int
    per_label: int

    def __str__(self) -> str:
        return "two-label" if self.two_label else f"{self.labels}x{self.per_label}"

    @property
    def two_label(self) -> bool:
        return self.labels == 0

    @classmethod
    def parse(cls, text: str) -> Bank:
        """``LABELSxPER_LABEL`` (e.g. 10x256) or ``two-label``."""
        if text == "two-label":
            return cls(0, 0)
        try:
            labels, per_label = (int(part) for part in text.lower().split("x"))
        except ValueError:
            message = f"a bank is LABELSxPER_LABEL (e.g. 10x256) or two-label, not {text!r}"
            raise argparse.ArgumentTypeError(message) from None
        if labels < 2 or per_label < 5:
            raise argparse.ArgumentTypeError(f"a bank needs at least 2 labels of 5 crops: {text!r}")
        return cls(labels, per_label)

    def training_images(self) -> list[tuple[str, str, bytes]]:
        """(label, name, JPEG) per training image: crops like the benchmark's uploads but of another seed (the
        uploads are seed 0), the ``labels`` photographs spread over the available ones in their fixed order."""
        if self.two_label:
            return [(scene, name, data) for name, scene, data in uploads(40, seed=1)
                    if scene in ("plant", "landscape")]
        every = photographs()
        if self.labels > len(every):
            raise SystemExit(f"--bank {self}: only {len(every)} photographs here, one label each")
        chosen = [every[i * len(every) // self.labels] for i in range(self.labels)]
        # An upload's name is INDEX-PHOTOGRAPH: its photograph is its label.
        return [(name.split("-", 1)[1], name, data)
                for name, _, data in uploads(self.labels * self.per_label, seed=2, photos=chosen)]


def put_objects(server: Server, token: str, objects: list[tuple[str, bytes]],
                clients: int = 4) -> tuple[list[str], list[float]]:
    """PUT every (key, JPEG) from ``clients`` keep-alive connections, each sending every ``clients``-th; the
    failures ("key: status body") and every PUT's round trip in seconds."""
    failures: list[str] = []
    round_trips: list[float] = []

    def put(worker: int) -> None:
        connection = Connection(server, token)
        try:
            for key, data in objects[worker::clients]:
                sent = time.perf_counter()
                status, payload = connection.send("PUT", f"/api/v1/objects/{key}", data, "image/jpeg")
                round_trips.append(time.perf_counter() - sent)
                if status != 201:
                    failures.append(f"{key}: {status} {payload[:200]!r}")
        finally:
            connection.close()

    run_concurrently(put, range(clients))
    return failures, round_trips


def put_labelled(server: Server, token: str, images: list[tuple[str, str, bytes]]) -> None:
    """PUT every (label, name, JPEG) to images_labeled_by_folder/LABEL/ (raises on any failure)."""
    failures, _ = put_objects(server, token, [(f"images_labeled_by_folder/{label}/{name}.jpg", data)
                                              for label, name, data in images])
    if failures:
        raise RuntimeError(f"{len(failures)} training uploads failed, the first: {failures[0]}")


def train(server: Server, api: httpx.Client, bank: Bank, quantize: bool = False) -> str:
    """v1 trained on ``bank``'s images, deployed; with ``quantize``, trained with Quantize-Backbone on (says whether
    its int8 twin serves). Returns a line on what was trained and how long it took."""
    if quantize:
        api.put("/parameters/Quantize-Backbone", json={"value": "true"}).raise_for_status()
    images = bank.training_images()
    started = time.perf_counter()
    put_labelled(server, server.token(), images)
    run = server.wait_run(api.post("/training/check").json()["run_id"], timeout=1800)
    if run["status"] != "SUCCESS":
        raise RuntimeError(f"training failed: {run}")
    wait_until(lambda: api.get("/models/v1").json()["status"] == "RUNNING", 600, 0.5, "v1 RUNNING")
    if quantize:
        print(f"Quantize-Backbone: {api.get('/models/v1').json()['evaluation']['int8']['reason']}")
    labels = Counter(label for label, _, _ in images)
    return (f"v1 trained on bank {bank}: {len(labels)} labels, {min(labels.values())}–{max(labels.values())} "
            f"images a label, {len(images)} in all, PUT and trained in {time.perf_counter() - started:.0f} s")


@contextmanager
def profiled(enabled: bool, py_spy: str, pid: int, name: str) -> Iterator[dict[str, Any]]:
    """py-spy records the server while the block runs (raw collapsed stacks in bench/out/profile/NAME.txt);
    the caller may set ``box['images']`` to get each thread role's real CPU per image from /proc as well.

    Samples are wall-clock samples of active threads: under CPU contention a thread that is runnable but
    waiting for a core, or in SQLite waiting for its lock, counts too. (py-spy's ``--gil`` mode, which would
    count Python work only, put 90 % of the samples on the idle queue pollers here: not used.)

    py-spy's own CPU is printed too: at 100 samples a second of every thread it took 0.45 of a core here, on the
    cores the server uses, so a profiled phase's images/s are lower than an unprofiled one's (README
    Performance, item 15).
    """
    box: dict[str, Any] = {}
    if not enabled:
        yield box
        return
    folder = OUT / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.txt"
    recorder = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
                                 "--rate", "100", "--threads", "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    cpu_before, spy_before, wall = thread_cpu(pid), cpu_seconds(recorder.pid), time.perf_counter()
    try:
        yield box
    finally:
        cpu_after, spy_cpu = thread_cpu(pid), cpu_seconds(recorder.pid) - spy_before
        wall = time.perf_counter() - wall
        recorder.send_signal(2)  # SIGINT: py-spy writes its file and exits
        _, err = recorder.communicate(timeout=60)
        if not out.is_file():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode()[-2000:]}")
        text = out.read_text()
        print(f"\n── profile: {name} ──")
        print(f"py-spy itself: {spy_cpu:.2f} CPU s in {wall:.1f} s, {spy_cpu / wall:.2f} of a core taken from the "
              "server's cores (this phase's images/s are lowered by it)")
        print(summarize(text))
        if "images" in box:
            print(cpu_roles(cpu_before, cpu_after, thread_names(text), box["images"]))


# ── the run ──────────────────────────────────────────────────────────────────


@dataclass
class Served:
    """A benchmarked server: the one under test (name "") or a compared one (``--compare-src``)."""

    name: str
    server: Server
    bank: Bank
    token: str = ""
    idle: float = float("nan")  # CPU seconds per second with no request


def sync_phases(servers: list[Served], bodies: list[tuple[bytes, str]], args: argparse.Namespace,
                index: int) -> dict[str, Row]:
    """Sync detect at 1, 8 and 32 clients; with compared servers, each phase runs on every server in turn
    (the order rotating each round), so that they meet the same load."""
    rows: dict[str, Row] = {}
    for clients in () if args.no_sync else args.clients:
        turn = index % len(servers)
        for served in servers[turn:] + servers[:turn]:
            pid = served.server.process.pid
            suffix = f" [{served.name}]" if served.name else ""
            counters = process_counters(pid)
            with profiled(args.profile and clients == 8, args.py_spy, pid, f"sync-{clients}{served.name}") as spied, \
                    metered(pid, served.idle) as box:
                row = drive_sync(served.server, served.token, bodies, clients, args.seconds)
                box["images"], box["row"] = len(row.latencies), row
                spied["images"] = len(row.latencies)
            row.note += f"; CPU {counts(counters, process_counters(pid), max(1, len(row.latencies)))}"
            row.phase += suffix
            rows[f"sync{clients}{served.name}"] = row
    return rows


def run_round(servers: list[Served], model: Path, inputs: np.ndarray, bodies: list[tuple[bytes, str]],
              photos: list[tuple[str, str, bytes]], args: argparse.Namespace, index: int) -> dict[str, Row]:
    rows = raw_phase(model, inputs, args.raw_seconds, "before")
    rows.update(sync_phases(servers, bodies, args, index))
    if not args.no_pipeline:
        rows.update(pipeline_phases(servers, photos, args, index))
    after = raw_phase(model, inputs, args.raw_seconds, "after")
    rows.update({f"{key}_after": value for key, value in after.items()})
    return rows


def reference(rows: dict[str, Row]) -> float:
    best = [max(rows[f"raw32{k}"].rate, rows[f"raw32spin{k}"].rate) for k in ("", "_after")]
    return statistics.fmean(best)


def fastest(rows: dict[str, Row]) -> tuple[str, float]:
    """The raw model's fastest batch in this round (each batch's mean of before and after) and its images/s: on a
    CPU with VNNI batch 8 beats batch 32, so a ratio to batch 32 alone flatters the server there."""
    rates = {batch: statistics.fmean(rows[f"raw{batch}{k}"].rate for k in ("", "_after")) for batch in (1, 8)}
    rates[32] = reference(rows)
    batch = max(rates, key=lambda size: rates[size])
    return f"batch {batch}", rates[batch]


def raw_cpu(rows: dict[str, Row]) -> float:
    """CPU seconds per image of raw batch 32 (mean of before and after)."""
    return statistics.fmean(rows[key].client_cpu for key in ("raw32", "raw32_after"))


def print_round(rows: dict[str, Row], ref: float, title: str) -> None:
    cpu = raw_cpu(rows)
    best, best_rate = fastest(rows)
    print(f"\n{title} — reference: raw batch 32 = {ref:.1f} images/s, {1000 * cpu:.1f} CPU ms/image "
          f"(mean of before and after); the fastest raw batch: {best}, {best_rate:.1f} images/s")
    print(f"{'phase':<52} {'images/s':>9} {'× raw32':>7} {'× fastest':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'server CPU ms/img':>17} {'of it idle':>10} {'raw32 CPU / server CPU':>22} "
          f"{'client CPU ms/img':>17}")
    for row in rows.values():
        print(f"{row.phase:<52} {row.rate:>9.1f} {row.rate / ref:>7.2f} {row.rate / best_rate:>9.2f} "
              f"{row.percentile(50):>7.1f} {row.percentile(95):>7.1f} {row.percentile(99):>7.1f} {row.errors:>6} "
              f"{1000 * row.server_cpu:>17.1f} {1000 * row.idle_cpu:>10.1f} {cpu / row.server_cpu:>22.2f} "
              f"{1000 * row.client_cpu:>17.1f}" + (f"  {row.note}" if row.note else ""))


def print_positions(rounds: list[dict[str, Row]], servers: list[Served]) -> None:
    """Each server's CPU ms per image, round by round, per phase, and each compared server's difference from the
    server under test (median and range of the rounds): with the same code on every server, the bench's own
    bias between positions (README Performance, item 51) and its noise."""
    leading = Counter(label(servers[index % len(servers)]) for index in range(len(rounds)))
    print("\nserver CPU ms/img per server, round by round (same code on two servers: the difference is the bench's "
          "own position bias and noise); rounds each server's phases came first in: "
          + ", ".join(f"{label(served)} {leading[label(served)]}" for served in servers))
    for key, first in rounds[0].items():
        if not key.startswith(("sync", "upload", "alone")) or key.endswith(tuple(other.name for other in servers[1:])):
            continue
        per_server = {served.name: [1000 * r[key + served.name].server_cpu for r in rounds] for served in servers}
        cells = [f"{label(served)} {' '.join(f'{v:.2f}' for v in per_server[served.name])}" for served in servers]
        diffs = [f"{served.name} − under test {cpu_difference(per_server[served.name], per_server[''])}"
                 for served in servers[1:]]
        print(f"{first.phase:<40} " + "; ".join(cells + diffs))


def cpu_difference(values: list[float], reference_values: list[float]) -> str:
    """The median and range of the round-by-round differences ``values - reference_values``."""
    diffs = [a - b for a, b in zip(values, reference_values, strict=True)]
    return f"{statistics.median(diffs):+.2f} ({min(diffs):+.2f} to {max(diffs):+.2f})"


def print_medians(rounds: list[dict[str, Row]]) -> None:
    refs = [reference(rows) for rows in rounds]
    bests = [fastest(rows) for rows in rounds]
    print(f"\nmedians of {len(rounds)} rounds (ratios taken within each round, then the median); the fastest raw "
          f"batch per round: {', '.join(name for name, _ in bests)}")
    print(f"{'phase':<52} {'images/s':>9} {'× raw32':>7} {'× fastest':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'server CPU ms/img':>17} {'raw32 CPU / server CPU':>22}")
    for key, first in rounds[0].items():
        rate = statistics.median(r[key].rate for r in rounds)
        ratio = statistics.median(r[key].rate / ref for r, ref in zip(rounds, refs, strict=True))
        ratio_best = statistics.median(r[key].rate / best for r, (_, best) in zip(rounds, bests, strict=True))
        p = [statistics.median(r[key].percentile(q) for r in rounds) for q in (50, 95, 99)]
        errors = sum(r[key].errors for r in rounds)
        cpu = statistics.median(r[key].server_cpu for r in rounds)
        efficiency = statistics.median(raw_cpu(r) / r[key].server_cpu for r in rounds)
        print(f"{first.phase:<52} {rate:>9.1f} {ratio:>7.2f} {ratio_best:>9.2f} {p[0]:>7.1f} {p[1]:>7.1f} "
              f"{p[2]:>7.1f} {errors:>6} {1000 * cpu:>17.1f} {efficiency:>22.2f}")


def label(served: Served) -> str:
    """How a server is named in what is printed: "under test", "cmp1", ..."""
    return served.name or "under test"


def each_server(servers: list[Served], step: Callable[[Served], None], args: argparse.Namespace) -> None:
    """Run a set-up step on every server: on all of them at once (``--setup-order concurrent``), or one after
    another, the server under test first (``forward``) or last (``backward``)."""
    if args.setup_order == "concurrent":
        run_concurrently(step, servers)
        return
    for served in servers[::-1] if args.setup_order == "backward" else servers:
        step(served)


def set_up(servers: list[Served], bodies: list[tuple[bytes, str]],
           args: argparse.Namespace) -> tuple[Path, dict[str, float]]:
    """Every server's set-up, step by step, each step on every server before the next step: started; v1 trained on
    its bank and deployed; v1 exported (``GET /models/v1/export``); the serving path warmed; its idle CPU measured;
    its peak RSS reset. The raw phases' model file (the first exporter's) and each server's peak RSS so far.

    Fair by construction (README Performance, item 51): every server does the same steps (``--exporters``: only
    those export), and by default each step runs on all servers at once, so that none was started, trained or
    left idle before the others (one after another, the server set up first paid about 0.1-0.3 ms of CPU per
    image more in sync detect than the same code set up second, whichever exported)."""
    def start(served: Served) -> None:
        served.server.start(timeout=300)

    def trained(served: Served) -> None:
        with served.server.client() as api:
            print(f"server {label(served)}: {train(served.server, api, served.bank, args.quantize)}")

    exporters = [servers[i] for i in (range(len(servers)) if args.exporters is None else args.exporters)]
    models = {served.name: OUT / f"detect-model{served.name}.onnx" for served in exporters}

    def exported(served: Served) -> None:
        if served in exporters:
            with served.server.client() as api:
                models[served.name].write_bytes(api.get("/models/v1/export", params={"format": "onnx"}).content)
            print(f"server {label(served)}: v1 exported")

    def warmed(served: Served) -> None:
        served.token = served.server.token()
        drive_sync(served.server, served.token, bodies, 8, 2.0)  # warm the serving path

    def idled(served: Served) -> None:
        served.idle = idle_cpu(served.server.process.pid, 10.0)

    for step in (start, trained, exported, warmed, idled):
        each_server(servers, step, args)
    rss_training = {}
    for served in servers:
        pid = served.server.process.pid
        print(f"idle server {served.name}: {100 * served.idle:.1f} % of one core (queue and schedule polling, "
              "liveness checks)")
        rss_training[served.name] = memory_mib(pid, "VmHWM")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak: from here on it is serving only
    return models[exporters[0].name], rss_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round: 3 s phases, 200 uploads")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float, help="length of each sync-detect phase (8)")
    parser.add_argument("--raw-seconds", type=float, help="length of each raw phase (4)")
    parser.add_argument("--uploads", type=int, help="photos per upload-pipeline phase (1000)")
    parser.add_argument("--single-uploads", type=int, default=20,
                        help="photos uploaded one at a time, each waited for, after the pipeline phase (20)")
    parser.add_argument("--pipeline-timeout", type=float, default=900.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32],
                        help="client counts of the sync-detect phases (1 8 32)")
    parser.add_argument("--no-sync", action="store_true", help="skip the sync-detect phases (pipeline work)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the upload-pipeline phase (sync work)")
    parser.add_argument("--profile", action="store_true", help="record the server with py-spy")
    parser.add_argument("--bank", type=Bank.parse, default=Bank(10, 256),
                        help="what v1 is trained on: LABELSxPER_LABEL crops of that many photographs, one label each "
                             "(10x256, a full familiarity bank: at most 256 rows a label), or two-label: the "
                             "plant / landscape model of sessions 1-14 (about 18 rows a label), for comparisons "
                             "with earlier tables")
    parser.add_argument("--compare-bank", type=Bank.parse, action="append", default=[], metavar="BANK",
                        help="what the --compare-src servers' v1 is trained on (default: --bank): once for all of "
                             "them, or once each, in their order; e.g. the same src with another bank measures what "
                             "the bank costs")
    parser.add_argument("--quantize", action="store_true",
                        help="train v1 with Quantize-Backbone on (raw rows then run its exported int8 graph)")
    parser.add_argument("--server-src", type=Path, help="run the server from another source tree (before/after)")
    parser.add_argument("--compare-src", action="append", default=[], metavar="PYTHONPATH",
                        help="also run a server with this PYTHONPATH (e.g. main's src, or src plus an extra "
                             "package folder) and measure its sync and pipeline phases beside the first one's, "
                             "alternating (repeatable; named cmp1, cmp2, ...)")
    parser.add_argument("--exporters", type=int, nargs="*", metavar="N",
                        help="which servers export v1 in the set-up (0: the server under test, N: cmpN; default: "
                             "every one, so that they all serve after the same steps; the raw phases run the "
                             "first one's file); for tracing the bias of README item 51")
    parser.add_argument("--setup-order", choices=("concurrent", "forward", "backward"), default="concurrent",
                        help="how each set-up step (start, train, export, warm, idle) takes the servers: all at "
                             "once (concurrent), or one after another, the server under test first (forward) or "
                             "last (backward); for tracing the bias of README item 51")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    args = parser.parse_args()
    defaults = {"rounds": 1, "seconds": 3.0, "raw_seconds": 2.0, "uploads": 200} if args.quick else \
        {"rounds": 3, "seconds": 8.0, "raw_seconds": 4.0, "uploads": 1000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs; clients share them with the server")
    photos = uploads((args.uploads + args.single_uploads) * args.rounds)
    bodies = [multipart(data) for _, _, data in photos[:args.uploads]]
    inputs = np.stack([prepare(data) for _, _, data in photos[:32]])
    paths = [str(args.server_src.resolve()) if args.server_src else None, *args.compare_src]
    if len(args.compare_bank) not in (0, 1, len(args.compare_src)):
        parser.error("--compare-bank: once, or once per --compare-src")
    if args.exporters is not None and not (args.exporters and set(args.exporters) <= set(range(len(paths)))):
        parser.error(f"--exporters: at least one of 0 to {len(paths) - 1}")
    banks = [args.bank, *(args.compare_bank * len(args.compare_src) if len(args.compare_bank) == 1
                          else args.compare_bank or [args.bank] * len(args.compare_src))]
    servers: list[Served] = []
    try:
        for i, path in enumerate(paths):
            servers.append(Served(f"cmp{i}" if i else "", new_server(path, OUT / f"detect-home{i or ''}"), banks[i]))
            print(f"server {label(servers[-1])}: PYTHONPATH {path or os.environ.get('PYTHONPATH', '')}, "
                  f"bank {banks[i]}")
        model, rss_training = set_up(servers, bodies, args)
        rounds = []
        for index in range(args.rounds):
            per_round = args.uploads + args.single_uploads
            batch = photos[index * per_round:(index + 1) * per_round]
            rows = run_round(servers, model, inputs, bodies, batch, args, index)
            rounds.append(rows)
            print_round(rows, reference(rows), f"round {index + 1}, load average {os.getloadavg()}")
        if len(rounds) > 1:
            print_medians(rounds)
        if len(servers) > 1:
            print_positions(rounds, servers)
        for served in servers:
            pid = served.server.process.pid
            print(f"\nserving process {served.name} peak RSS while serving: {memory_mib(pid, 'VmHWM'):.0f} MiB "
                  f"(target ≤ 1024); peak including training: {rss_training[served.name]:.0f} MiB; "
                  f"now {memory_mib(pid, 'VmRSS'):.0f} MiB")
        print(f"Rekognition Custom Labels: {REKOGNITION_TPS_PER_UNIT:.0f} transactions/s per inference unit")
        print(f"load average at end: {os.getloadavg()}")
    finally:
        for served in servers:
            served.server.stop()


def start_server(pythonpath: str | None, home: Path, **settings: str) -> Server:
    """A started :func:`new_server`."""
    return new_server(pythonpath, home, **settings).start(timeout=300)


def new_server(pythonpath: str | None, home: Path, **settings: str) -> Server:
    """A ``labelloop serve``, not started yet, with its own code's production polling defaults (the test suite's
    faster polling left out; a `--server-src` or `--compare-src` checkout polls as its code would in production),
    from ``pythonpath`` when given; ``settings``: more environment variables (``LABELLOOP_*``). Its home is emptied."""
    shutil.rmtree(home, ignore_errors=True)
    env = {key: value for key, value in server_env(LABELLOOP_LOG_LEVEL="WARNING", **settings).items()
           if not key.endswith("_POLLING_SECONDS")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(Path(part).resolve()) for part in pythonpath.split(os.pathsep))
    return Server(home=home, env=env)


if __name__ == "__main__":
    try:
        main()
    except (httpx.HTTPError, subprocess.SubprocessError) as exc:
        sys.exit(f"benchmark failed: {exc}")
