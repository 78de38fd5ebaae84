"""A throw-away trace of the inference units in a ``labelloop serve`` process (README Performance, item 55).

Put this folder after ``src`` on a server's PYTHONPATH (``bench_detect.py --compare-src src:bench/unit_trace``, or
``PYTHONPATH=src:bench/unit_trace`` for the server under test); only a process started as ``labelloop serve`` is
traced. Events go to ``$UNITS_TRACE_DIR/trace-<pid>.jsonl`` (default /tmp), a line each, written every second; the first
is ``meta`` with the process's PYTHONPATH; then

- ``q``: a request queued (time, images, queue length after);
- ``e``: a unit's backbone run (thread, start, end, thread CPU seconds, images);
- ``a``: a head call (thread, start, end, images per part, each part's backbone end and unit);
- ``w``: a unit waiting on an empty queue (thread, start, end).

Times are ``time.perf_counter()`` seconds. `bench/unit_trace_summary.py` reads the files.
"""

from __future__ import annotations

import atexit
import importlib.abc
import json
import os
import sys
import threading
import time


def _install() -> None:
    events: list[tuple] = [("meta", os.environ.get("PYTHONPATH", ""))]
    out = os.path.join(os.environ.get("UNITS_TRACE_DIR", "/tmp"), f"trace-{os.getpid()}.jsonl")

    def write() -> None:
        taken = events[:]
        del events[:len(taken)]
        if taken:
            with open(out, "a") as handle:
                handle.writelines(json.dumps(event) + "\n" for event in taken)

    def flush() -> None:
        while True:
            time.sleep(1.0)
            write()

    threading.Thread(target=flush, daemon=True, name="units-trace").start()
    atexit.register(write)

    def patch(serving) -> None:
        from labelloop.modeling import embedding

        cls = serving.Serving
        queue_fn, run_fn, answer_fn, stage_fn = cls._queue, cls._run, cls._answer, cls._head_stage
        embed_fn = embedding.Embedder.embed

        class TracedQueue(serving._RequestQueue):
            def get(self, block=True, timeout=None):
                if not block or self.qsize():
                    return super().get(block, timeout)
                began = time.perf_counter()
                item = super().get(block, timeout)
                events.append(("w", threading.current_thread().name, began, time.perf_counter()))
                return item

        serving._RequestQueue = TracedQueue  # the units' queue (item 63), looked up when a Serving is made

        def queued(self, inputs, **kwargs):
            future = queue_fn(self, inputs, **kwargs)
            events.append(("q", time.perf_counter(), len(inputs), self._requests.qsize()))
            return future

        def embed(self, batch, *args, **kwargs):
            began, cpu = time.perf_counter(), time.thread_time()
            result = embed_fn(self, batch, *args, **kwargs)
            events.append(("e", threading.current_thread().name, began, time.perf_counter(),
                           time.thread_time() - cpu, len(batch)))
            return result

        def stage(self, done):
            done.traced_at, done.traced_by = time.perf_counter(), threading.current_thread().name
            return stage_fn(self, done)

        def answer(self, parts):
            began = time.perf_counter()
            answer_fn(self, parts)
            events.append(("a", threading.current_thread().name, began, time.perf_counter(),
                           [len(part.embeddings) for part in parts],
                           [getattr(part, "traced_at", began) for part in parts],
                           [getattr(part, "traced_by", "") for part in parts]))

        cls._queue, cls._answer, cls._head_stage = queued, answer, stage
        embedding.Embedder.embed = embed
        del run_fn

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "labelloop.modeling.serving":
                return None
            sys.meta_path.remove(self)
            import importlib.util

            spec = importlib.util.find_spec(name)
            loader = spec.loader
            exec_module = loader.exec_module

            def execute(module):
                exec_module(module)
                patch(module)

            loader.exec_module = execute
            return spec

    sys.meta_path.insert(0, Finder())


if "serve" in sys.argv[1:3]:
    _install()
