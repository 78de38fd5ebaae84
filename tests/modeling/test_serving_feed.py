"""The units' feed: an inference unit that finds no request waiting does the endpoint's idle work (prepares one
pending upload); answers and errors are unchanged, no upload is lost or run twice, and the units stop cleanly."""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from images import smile_logo
from labelloop.modeling import endpoint
from labelloop.modeling.embedding import Embedder
from labelloop.modeling.images import ImageRejected
from labelloop.modeling.serving import NoModelServing, Serving

from .test_serving import GatedHead, RecordingHead


def units_of(serving: Serving) -> list[threading.Thread]:
    return list(serving._units)


def test_a_waiting_unit_nudged_does_its_idle_work_and_keeps_serving(backbone_onnx: Path) -> None:
    ran: list[str] = []
    done = threading.Event()

    def work(server: Serving) -> bool:
        if ran:
            return False
        ran.append(threading.current_thread().name)
        done.set()
        raise RuntimeError("a failing piece of idle work")  # logged; the unit keeps serving

    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=1, idle_work=work)
    try:
        serving.switch(serving.warm("v1", RecordingHead()))
        serving.nudge()
        assert done.wait(timeout=60)
        answer = serving.submit(np.zeros((1, 3, 224, 224), dtype=np.float32)).result(timeout=120)
    finally:
        serving.close()
    assert ran == ["inference-unit-0"]
    assert answer[0].version == "v1"


def test_a_request_queued_behind_a_wake_up_runs_before_the_idle_work(backbone_onnx: Path) -> None:
    events: list[str] = []
    head = GatedHead()

    def work(server: Serving) -> bool:
        events.append("idle work")
        return False

    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=1, idle_work=work)
    try:
        head.gate.set()
        serving.switch(serving.warm("v1", head))
        head.gate.clear()
        head.entered.clear()
        x = np.zeros((1, 3, 224, 224), dtype=np.float32)
        first = serving.submit(x)
        assert head.entered.wait(timeout=120)  # the unit is busy with the first batch
        events.clear()
        serving.nudge()
        second = serving.submit(x)
        second.add_done_callback(lambda _: events.append("second answered"))
        head.gate.set()
        assert first.result(timeout=120)[0].version == second.result(timeout=120)[0].version == "v1"
    finally:
        serving.close()
    assert events[0] == "second answered", events


def test_units_stop_cleanly_with_wake_ups_queued(backbone_onnx: Path) -> None:
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=2,
                      idle_work=lambda server: False)
    units = units_of(serving)
    for _ in range(5):
        serving.nudge()
    serving.close()
    assert units and not any(unit.is_alive() for unit in units)


@pytest.fixture
def served(backbone_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The endpoint's feed on a server of its own (no database: the serving check says 'orig')."""
    head = RecordingHead()
    serving = Serving(lambda threads: Embedder(backbone_onnx, threads=threads), units=2,
                      idle_work=endpoint._prepare_pending)
    serving.switch(serving.warm("v1", head))
    head.sizes.clear()
    monkeypatch.setattr(endpoint, "_serving", serving)
    monkeypatch.setattr(endpoint, "serving_view", lambda: "orig")
    yield serving, head
    serving.close()


def test_every_upload_is_answered_once_as_it_would_be_alone(served: Any) -> None:
    serving, head = served
    images = [smile_logo(seed) for seed in range(6)]
    alone = [serving.submit(endpoint.prepare_image(data)).result(timeout=120)[1][0] for data in images]
    head.sizes.clear()

    async def many() -> list[tuple[str, list[dict[str, Any]]]]:
        return await asyncio.gather(*(endpoint.detect_upload(images[i % 6]) for i in range(48)))

    answers = asyncio.run(many())
    assert sum(head.sizes) == 48  # every upload ran once
    for i, (version, labels) in enumerate(answers):
        expected = endpoint.labels_of(head.labels, alone[i % 6])
        assert version == "v1"
        assert [label["name"] for label in labels] == [label["name"] for label in expected]
        np.testing.assert_allclose([label["confidence"] for label in labels],
                                   [label["confidence"] for label in expected], atol=1e-3)


def test_a_unit_that_prepares_an_upload_gives_the_same_errors(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    serving, _ = served
    monkeypatch.setattr(endpoint, "_PENDING", queue.SimpleQueue())  # out of reach of a decode thread already waiting
    rejected: Future[Any] = Future()
    endpoint._PENDING.put((b"not an image", rejected))
    assert endpoint._prepare_pending(serving)
    with pytest.raises(ImageRejected):
        rejected.result(timeout=10)
    serving.stop()
    nothing: Future[Any] = Future()
    endpoint._PENDING.put((smile_logo(1), nothing))
    assert endpoint._prepare_pending(serving)
    with pytest.raises(NoModelServing):
        nothing.result(timeout=10)
    assert not endpoint._prepare_pending(serving)  # nothing pending
