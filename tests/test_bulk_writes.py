"""A batch of detections writes each table's rows in one statement at its end (SQLAlchemy Core executemany), and
what it writes is what the image-by-image path (the ORM's flushes) writes; an arrival is one INSERT … RETURNING.
Real SQLite and PostgreSQL databases; only the inference is given, as the serving model would answer."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, select, update

from labelloop import db
from labelloop.detection import service as detections
from labelloop.detection.models import DetectionEvent
from labelloop.loop import routing
from labelloop.modeling.models import ModelVersion
from labelloop.notifications.models import Notification
from labelloop.parameters import service as parameters
from labelloop.review import service as reviews
from labelloop.review.models import HumanLoop

CONFIDENCES = (99.5, 88.0, 76.0, 40.0)  # audited or auto-accepted, and below the threshold: every route


def answered(confidence: float) -> detections.Outcome:
    return detections.Outcome("detected", version="v1", labels=[
        {"name": "cat", "confidence": confidence}, {"name": "dog", "confidence": 100 - confidence}])


def fresh(url: str, monkeypatch: pytest.MonkeyPatch, images: int = 24) -> list[dict[str, Any]]:
    """A new database with the defaults, a serving version v1 and ``images`` uploads recorded; request ids and loop
    names are drawn from a counter, so two such databases route (audits are drawn from request ids) alike."""
    counter = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(counter)))
    db.init(url)
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={}))
        reviews.template(session=session)  # made on first use: by the first loop ever, not by every batch
    for i in range(40):  # audits opened before: the audit rate is below 1, so some images are audited, some not
        earlier = detections.record_arrival(f"images_for_detection/old/{i}.jpg", f"{i:032x}", "detection-old")
        with db.session() as session:
            session.execute(update(DetectionEvent).where(DetectionEvent.id == earlier["id"]).values(
                status="DETECTED", model_version="v1", label="cat", confidence=95.0, threshold=70.0,
                routing_rule="audit", sampled=True))
    events = [detections.record_arrival(f"images_for_detection/{i}.jpg", f"{i:032x}", "detection-bulk")
              for i in range(images)]
    answers = {event["id"]: answered(CONFIDENCES[i % len(CONFIDENCES)]) for i, event in enumerate(events)}
    monkeypatch.setattr(detections, "infer_all", lambda given: [answers[item["id"]] for item in given])
    return events


def stored() -> dict[str, list[dict[str, Any]]]:
    """Every row of the three tables a batch writes, in id order, without the times each write takes then."""
    tables = {"events": (DetectionEvent, {"created_at", "detected_at"}),
              "loops": (HumanLoop, {"created_at", "expires_at"}), "notifications": (Notification, {"created_at"})}
    with db.session() as session:
        found = {name: [{column.key: value for column, value in zip(model.__table__.columns, row, strict=True)
                         if column.key not in left_out}
                        for row in session.execute(select(model.__table__).order_by(model.__table__.c.id))]
                 for name, (model, left_out) in tables.items()}
    db.close()
    return found


def test_a_batch_writes_the_rows_image_by_image_writing_writes(database_url: Callable[[], str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    events = fresh(database_url(), monkeypatch)
    routing._detect_all(events, "detection-bulk")
    batch = stored()
    events = fresh(database_url(), monkeypatch)
    for item in events:
        outcome = detections.infer_all([item])[0]
        routing._write_detection_alone(item, outcome, "detection-bulk")  # the ORM's own flush for loop and note
    alone = stored()
    assert batch == alone
    rules = {row["routing_rule"] for row in batch["events"]}
    assert {"audit", "auto-accepted", "below-confidence"} <= rules, rules
    assert len(batch["loops"]) >= 6 and len(batch["notifications"]) == len(events)


def test_a_batch_writes_once_every_image_is_routed_one_statement_per_table(
        database_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's write lock (and this process's writer turn) is taken at a batch's first write and held to its
    commit; every read of the batch comes before it, and each table's rows are one statement."""
    events = fresh(database_url(), monkeypatch)
    statements: list[tuple[str, int]] = []

    def seen(conn: Any, statement: Any, rows: list[Any], *args: Any) -> None:
        statements.append((type(statement).__name__.upper(), max(1, len(rows))))

    inserts: list[str] = []  # as the driver is given them: a statement can be run once per row

    def sent(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(statement.split("(")[0])

    event.listen(db.engine(), "before_execute", seen)
    event.listen(db.engine(), "before_cursor_execute", sent)
    done = routing._detect_all(events, "detection-bulk")
    event.remove(db.engine(), "before_execute", seen)
    event.remove(db.engine(), "before_cursor_execute", sent)
    kinds = [kind for kind, _ in statements]
    first_write = next(i for i, kind in enumerate(kinds) if kind in ("INSERT", "UPDATE"))
    assert "SELECT" not in kinds[first_write:], statements
    writes = [(kind, rows) for kind, rows in statements[first_write:] if kind in ("INSERT", "UPDATE")]
    loops = sum(1 for item in done if item["human_loop"])
    assert sum(rows for kind, rows in writes if kind == "UPDATE") == len(events)  # one row per event
    assert sum(rows for kind, rows in writes if kind == "INSERT") == loops + len(events)  # loops, notifications
    assert len(writes) <= 5, writes  # UPDATEs grouped by the columns that changed (three routes), two INSERTs
    # The notifications' ids come back with their dedupe keys: one INSERT for all, where ids returned in the rows'
    # order were one INSERT per row on SQLite (README Performance, item 35).
    assert len(inserts) == 2, inserts
    assert loops >= 6 and all(item["notification"] for item in done)
    with db.session() as session:
        names = {loop.detection_id: loop.name for loop in session.scalars(select(HumanLoop))}
        for item in done:
            row = session.get(DetectionEvent, item["detection"]["id"])
            assert row.human_loop_name == names.get(row.id) == (item["human_loop"] or {}).get("name")
            note = session.get(Notification, item["notification"])
            assert (note.object_key, note.dedupe_key) == (row.object_key, f"detection-{row.id}:{row.status}")
            assert session.get(Notification, item["notification"]).dedupe_key == f"detection-{row.id}:DETECTED"


def test_an_arrival_is_the_row_stored_and_once_per_key_and_etag(database_url: Callable[[], str]) -> None:
    db.init(database_url())
    first = detections.record_arrival("images_for_detection/a.jpg", "a" * 32, "detection-a")
    assert first == detections.read_event(first["id"]), "what the PUT gets is the stored row"
    assert first["status"] == "WAITING_FOR_MODEL" and first["labels"] == [] and first["sampled"] is False
    assert first["created_at"].utcoffset().total_seconds() == 0
    again = detections.record_arrival("images_for_detection/a.jpg", "a" * 32, "detection-other")
    assert again == first, "the same key and ETag: the same event, its run the first one's"
    other = detections.record_arrival("images_for_detection/a.jpg", "b" * 32, "detection-b")
    assert other["id"] > first["id"] and other["request_id"] != first["request_id"]
