"""SQLite writers of one process take turns on a Python lock (``db.WriterTurns``) instead of polling SQLite's busy
handler: a turn is taken at a transaction's first write and given back however the transaction ends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select, text

from labelloop import db
from labelloop.detection import service as detections
from labelloop.detection.models import DetectionEvent

pytestmark = pytest.mark.same_on_every_database  # in-process, on its own SQLite file


class Connection:
    """A stand-in DBAPI connection (and the pool's proxy of it, which the dialect's commit is given)."""

    def __init__(self, raw: object | None = None) -> None:
        self.dbapi_connection = raw if raw is not None else self


def test_a_connection_keeps_its_turn_until_it_gives_it_back_and_others_wait() -> None:
    turns = db.WriterTurns(timeout=0.05)
    first, second = Connection(), Connection()
    turns.take(first)
    turns.take(Connection(first))  # its next write (through the pool's proxy): no second wait
    with pytest.raises(TimeoutError, match="no turn to write"):
        turns.take(second)
    turns.give_back(second)  # not the holder: nothing happens
    with pytest.raises(TimeoutError):
        turns.take(second)
    turns.give_back(Connection(first))
    turns.take(second)
    turns.give_back(second)


def test_every_way_a_transaction_ends_gives_the_turn_back(tmp_path: Path) -> None:
    """A turn kept after its transaction ended would stop every other connection's writes for 30 s."""
    engine = db.init(f"sqlite:///{tmp_path / 'app.db'}")
    turns = db.writer_turns(engine)
    try:
        assert turns is not None and not turns.held()
        first = detections.record_arrival("images_for_detection/a.jpg", "a" * 32, "run-a")  # committed
        assert not turns.held()
        again = detections.record_arrival("images_for_detection/a.jpg", "a" * 32, "run-b")  # clash, rolled back
        assert again["id"] == first["id"] and not turns.held()
        with pytest.raises(RuntimeError), db.session() as session:  # an error after a write: rolled back
            session.execute(text("UPDATE detection_events SET status_message = 'x'"))
            assert turns.held()
            raise RuntimeError("the step failed")
        assert not turns.held()
        session = db._sessions()  # written and left without a commit: the pool rolls it back on return
        session.execute(text("UPDATE detection_events SET status_message = 'y'"))
        session.close()
        assert not turns.held()
        done = threading.Event()

        def other_thread() -> None:
            detections.record_arrival("images_for_detection/b.jpg", "b" * 32, "run-c")
            done.set()

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join(20)
        assert done.is_set() and not turns.held(), "the other thread never got its turn to write"
        with db.session() as session:
            messages = set(session.scalars(select(DetectionEvent.status_message)))
        assert "x" not in messages and "y" not in messages
    finally:
        db.close()
