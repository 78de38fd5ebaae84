"""The parts of a sync detect request, one by one: CPU per call, best of ``--repeats``, in this process.

    PYTHONPATH=src .venv/bin/python bench/bench_sync_parts.py [--repeats 5]

1. **bearer-token check** (SQLite, a consumer's token): the database check on a worker thread, as ``POST
   /detect`` does for a token it has not verified in the last 2 s; the same inline; the thread hop alone; a
   remembered token (``workforce.service.recent_tokens``);
2. **decode and preprocess** of 64 real ~320-px JPEG photos (`bench/photos.py`): decode, to array, and per input
   view (crop, letterbox, letterbox-fast) the preprocessing and the whole `prepare`, also on 8 big photos (1536 px
   on the short side); with ``--compare-src SRC`` the same with SRC's `images.py`, alternated (``--only-images``
   runs this part alone);
3. **the backbone** (`bench/out/detect-model.onnx`, written by bench_detect.py; skipped when missing) at the
   serving batches 1 and 8 and at 32, on two intra-op threads and on one;
4. **the micro-batcher** (``--batcher-seconds``, 0 skips it): ``--clients`` threads each decode a photo on a
   pool as wide as the cores and wait for its answer from a ``Serving`` on the real backbone, as ``POST
   /detect`` does, with one inference unit of as many intra-op threads as cores and with one single-thread
   unit per core (``Minimum-Inference-Units``), alternated ``--batcher-rounds`` times: images/s, CPU per image
   and the mean batch (medians of the rounds).

Best of the repeats because the machine is shared: the minimum is the figure least disturbed by other work.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIG_SHORT_SIDE = 1536  # the big photos of the decode part: a phone photo's size
sys.path.insert(0, str(ROOT / "bench"))
from threads import run_concurrently  # noqa: E402


def best_ms(call: Callable[[], Any], n: int, repeats: int) -> float:
    """The lowest CPU milliseconds per call over ``repeats`` runs of ``n`` calls."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(n):
            call()
        best = min(best, (time.process_time() - started) / n)
    return 1000 * best


def token_parts(repeats: int) -> list[tuple[str, float]]:
    from fastapi.security import HTTPAuthorizationCredentials
    from starlette.concurrency import run_in_threadpool

    from labelloop import db
    from labelloop.modeling import views
    from labelloop.web.dependencies import current_user, remembered_caller, require, token_user
    from labelloop.workforce import service
    from labelloop.workforce.models import Role

    allowed = require(*views.DETECTORS)

    def authorize(credentials: HTTPAuthorizationCredentials) -> Any:
        """The route's check of a token it has not verified in the last seconds (``require_recent``'s)."""
        with db.session() as session:
            return allowed(current_user(token_user(session, credentials)))

    db.init(f"sqlite:///{tempfile.mkdtemp()}/app.db")
    with db.session() as session:
        user, _ = service.create_user("consumer", Role.CONSUMER, session=session, password="a-long-password",
                                      temporary=False)
        token, _ = service.issue_token(user, session=session)
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    loop = asyncio.new_event_loop()

    def on_loop(make: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: loop.run_until_complete(make())

    rows = []
    service.recent_tokens.seconds = 0.0  # nothing remembered: every check reads the database
    rows.append(("token: database check on a worker thread",
                 best_ms(on_loop(lambda: run_in_threadpool(authorize, credentials)), 300, repeats)))
    rows.append(("token: database check inline", best_ms(lambda: authorize(credentials), 300,
                                                         repeats)))
    rows.append(("token: the thread hop alone",
                 best_ms(on_loop(lambda: run_in_threadpool(lambda: None)), 300, repeats)))
    service.recent_tokens.seconds = 2.0
    authorize(credentials)
    authorize(credentials)  # remembered from the first check on (its last_used_at is no change)
    assert service.recent_tokens.user(token) is not None
    rows.append(("token: remembered (detector in the event loop)",
                 best_ms(on_loop(lambda: views.detector(credentials)), 3000, repeats)))
    before_routing = remembered_caller(*views.DETECTORS)
    header = f"Bearer {token}".encode()
    rows.append(("token: remembered, before routing (DetectFastPath)",
                 best_ms(lambda: before_routing(header), 3000, repeats)))
    loop.close()
    db.close()
    return rows


def load_images_module(src: Path | None) -> Any:
    """``labelloop.modeling.images`` of this tree, or of another source tree ``src`` (loaded under another name,
    beside this one: a before/after of decode and preprocess in the same run)."""
    if src is None:
        from labelloop.modeling import images

        return images
    spec = importlib.util.spec_from_file_location("compared_images", src / "labelloop" / "modeling" / "images.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no labelloop/modeling/images.py under {src}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_parts(repeats: int, images: Any, tag: str = "") -> list[tuple[str, float]]:
    """Decode and preprocess of 64 real ~320-px photos, per photo: each view's resize and to-array apart; and the
    whole `prepare` of each view on 8 big photos (1536 px on the short side, as a phone takes them)."""
    from photos import uploads

    photos = [data for _, _, data in uploads(64)]
    big = [data for _, _, data in uploads(8, short_side=BIG_SHORT_SIDE)]
    decoded = [images.decode_image(data) for data in photos]
    cropped = [image.resize((224, 224), images.RESAMPLE, box=images._crop_box(image.size, 1.0, 0.5, 0.5))
               for image in decoded]
    boxed = [images.letterbox(image) for image in decoded]

    def per_photo(call: Callable[[int], Any], count: int = len(photos)) -> float:
        return best_ms(lambda: [call(i) for i in range(count)], 1, repeats) / count

    to_array = per_photo(lambda i: images._to_array(cropped[i]))
    rows = [("decode (open, load, EXIF, RGB)", per_photo(lambda i: images.decode_image(photos[i]))),
            ("to array ([-1, 1], CHW float32)", to_array)]
    views = [("orig", "crop"), ("letterbox", "letterbox")]
    if "letterbox_fast" in images.VIEWS:  # a tree from before the letterbox-fast view has none
        views.append(("letterbox_fast", "letterbox-fast"))
        small = [images.decode_small(data) for data in photos]
        rows.append(("letterbox-fast: decode_small (DCT-scaled)", per_photo(lambda i: images.decode_small(photos[i]))))
    for view, name in views:
        images_of_view = small if view == "letterbox_fast" else decoded
        rows.append((f"{name}: to_input (resize, to array)",
                     per_photo(lambda i, v=view, d=images_of_view: images.to_input(d[i], v))))
        rows.append((f"{name}: prepare, all of it", per_photo(lambda i, v=view: images.prepare(photos[i], view=v))))
        rows.append((f"{name}: prepare, big photo", per_photo(lambda i, v=view: images.prepare(big[i], view=v),
                                                               len(big))))
    rows.append(("letterbox: the canvas alone (resize, border fill)",
                 per_photo(lambda i: images.letterbox(decoded[i]))))
    rows.append(("letterbox: the canvas to array", per_photo(lambda i: images._to_array(boxed[i]))))
    return [(f"{name}{tag}", ms) for name, ms in rows]


def compared_image_parts(repeats: int, rounds: int, src: Path) -> list[tuple[str, float]]:
    """`image_parts` of this tree and of ``src`` alternated ``rounds`` times; the best of each row."""
    this, other = load_images_module(None), load_images_module(src)
    best: dict[str, float] = {}
    for index in range(rounds):
        for module, tag in ((this, ""), (other, " [compared]"))[::1 if index % 2 == 0 else -1]:
            for name, ms in image_parts(repeats, module, tag):
                best[name] = min(best.get(name, float("inf")), ms)
    return sorted(best.items(), key=lambda item: item[0].replace(" [compared]", ""))


def model_parts(repeats: int) -> list[tuple[str, float]]:
    import onnxruntime as ort

    from labelloop.modeling.embedding import session_options

    path = ROOT / "bench" / "out" / "detect-model.onnx"
    if not path.is_file():
        return []
    x = np.random.default_rng(0).uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32)
    rows = []
    for threads in (2, 1):
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        for batch in (1, 8, 32):
            inputs = {"input": np.ascontiguousarray(x[:batch])}
            session.run(None, inputs)
            rows.append((f"model, batch {batch}, {threads} intra-op thread{'s' if threads > 1 else ''}, per image",
                         best_ms(lambda s=session, i=inputs: s.run(None, i), max(1, 16 // batch), repeats) / batch))
    return rows


class _OneLabel:
    """A head that answers one label: the batcher's cost is the backbone's and the hand-offs'."""

    labels = ["photo"]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return np.ones((len(embeddings), 1), dtype=np.float32)


def _clients(serving: Any, pool: ThreadPoolExecutor, photos: list[bytes], clients: int,
             seconds: float) -> tuple[float, float, float]:
    """``clients`` threads detecting photos for ``seconds``: (images/s, CPU ms per image, mean batch)."""
    from labelloop.modeling.images import prepare

    def prepare_and_queue(data: bytes) -> Future[Any]:
        return serving.submit(prepare(data)[None, ...])

    batches = serving.batches
    images, wall, cpu = run_clients(
        clients, seconds, photos, lambda data: pool.submit(prepare_and_queue, data).result().result())
    return images / wall, 1000 * cpu / images, images / max(1, serving.batches - batches)


def run_clients(clients: int, seconds: float, photos: list[bytes],
                detect: Callable[[bytes], object]) -> tuple[int, float, float]:
    """``clients`` threads calling ``detect`` on the photos in turn for ``seconds``: (images, wall s, CPU s)."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < stop:
            detect(photos[(index * 7 + done[index]) % len(photos)])
            done[index] += 1

    cpu, started = time.process_time(), time.monotonic()
    run_concurrently(client, range(clients))
    return sum(done), time.monotonic() - started, time.process_time() - cpu


def batcher_parts(clients: int, seconds: float, rounds: int) -> list[tuple[str, float, float, float]]:
    """The micro-batcher with one unit and with one single-thread unit per core: (set-up, images/s, CPU ms/img,
    mean batch)."""
    from photos import uploads

    from labelloop.modeling.embedding import Embedder, default_threads
    from labelloop.modeling.export import ensure_backbone_onnx
    from labelloop.modeling.serving import Serving

    path = ensure_backbone_onnx(Path(tempfile.gettempdir()) / f"labelloop-test-backbone-{os.getuid()}")
    photos = [data for _, _, data in uploads(64)]
    serving = Serving(lambda threads: Embedder(path, threads=threads))
    cores = default_threads()
    measured: dict[int, list[tuple[float, float, float]]] = {1: [], cores: []}
    try:
        serving.switch(serving.warm("bench", _OneLabel()))
        with ThreadPoolExecutor(max_workers=cores) as pool:
            for index in range(rounds):
                for units in (list(measured) if index % 2 == 0 else list(measured)[::-1]):
                    serving.set_units(units)
                    measured[units].append(_clients(serving, pool, photos, clients, seconds))
    finally:
        serving.close()
    return [(f"{clients} clients, {units} unit{'s' if units > 1 else ''} of {max(1, cores // units)} thread(s)",
             *(statistics.median(column) for column in zip(*rows, strict=True)))
            for units, rows in measured.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8, help="client threads of the micro-batcher part (8)")
    parser.add_argument("--batcher-seconds", type=float, default=5.0, help="each micro-batcher phase (5; 0 skips)")
    parser.add_argument("--batcher-rounds", type=int, default=4, help="alternated micro-batcher rounds (4)")
    parser.add_argument("--only-batcher", action="store_true", help="run the micro-batcher part alone")
    parser.add_argument("--only-images", action="store_true", help="run the decode and preprocess part alone")
    parser.add_argument("--compare-src", type=Path, metavar="SRC",
                        help="also time decode and preprocess with SRC/labelloop/modeling/images.py (e.g. a "
                             "copy of main's src), alternated with this tree's, --image-rounds times")
    parser.add_argument("--image-rounds", type=int, default=3, help="alternated rounds with --compare-src (3)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    if args.only_images:
        args.batcher_seconds = 0
    if not args.only_batcher:
        image_rows = (compared_image_parts(args.repeats, args.image_rounds, args.compare_src) if args.compare_src
                      else image_parts(args.repeats, load_images_module(None)))
        rows = image_rows if args.only_images else \
            token_parts(args.repeats) + image_rows + model_parts(args.repeats)
        print(f"{'part of a sync detect request':<58} {'CPU ms':>8}")
        for name, ms in rows:
            print(f"{name:<58} {ms:>8.3f}")
    if args.batcher_seconds > 0:
        print(f"\n{'micro-batcher (medians of ' + str(args.batcher_rounds) + ' alternated rounds)':<58} "
              f"{'images/s':>9} {'CPU ms/img':>11} {'mean batch':>11}")
        for name, rate, cpu, batch in batcher_parts(args.clients, args.batcher_seconds, args.batcher_rounds):
            print(f"{name:<58} {rate:>9.1f} {cpu:>11.2f} {batch:>11.2f}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
