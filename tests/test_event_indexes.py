"""The detection event log's indexes (migration ``pipe_event_indexes``): an upload's event, inserted by its PUT before
it is detected, goes into three indexes only (the unique first arrival, ``created_at``, ``status``; before, ten);
every query that reads the log by a column still has an index it can use (the partial ones included: the query's
WHERE implies the index's); the migration goes down to the ten indexes and up again. Real SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, inspect, select, text

from conftest import Postgres
from labelloop import db
from labelloop.detection import service as detections
from labelloop.detection import silent_errors, warm_start
from labelloop.detection.models import DetectionEvent, DetectionStatus

# The indexes an upload's event is inserted into (besides the table itself).
WRITTEN_BY_A_PUT = {"uq_detection_first_arrival", "ix_detection_events_created_at", "ix_detection_events_status"}
# Before the migration: every index of the log, and whether it is unique.
BEFORE = {"uq_detection_first_arrival": True, "ix_detection_events_request_id": True,
          "ix_detection_events_created_at": False, "ix_detection_events_detected_at": False,
          "ix_detection_events_status": False, "ix_detection_events_model_version": False,
          "ix_detection_events_label": False, "ix_detection_events_sampled": False,
          "ix_detection_events_routing_rule": False, "ix_detection_events_previous_event_id": False}
AFTER = {"uq_detection_first_arrival", "ix_detection_events_created_at", "ix_detection_events_status",
         "ix_detection_events_detected_at", "ix_detection_events_version_rule", "ix_detection_events_label",
         "ix_detection_events_routing_rule", "ix_detection_events_sampled", "ix_detection_events_previous_event_id"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A function giving a fresh, empty application database's URL (each call another one)."""
    if request.param == "sqlite":
        numbers = itertools.count()
        yield lambda: f"sqlite:///{tmp_path / f'app{next(numbers)}.db'}"
    else:
        request.getfixturevalue("postgres_database")  # skips the test when no PostgreSQL server answers
        yield lambda: Postgres.create("test")  # dropped when the run ends
    db.close()


def index_predicates() -> dict[str, str]:
    """Each index of detection_events by name, with its WHERE ("" for a whole-table index)."""
    engine = db.engine()
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
                                           "tbl_name = 'detection_events' AND sql IS NOT NULL")).all()
            return {name: sql.partition(" WHERE ")[2] for name, sql in rows}
        rows = connection.execute(text("SELECT c.relname, coalesce(pg_get_expr(i.indpred, i.indrelid), '') "
                                       "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                       "WHERE i.indrelid = 'detection_events'::regclass AND NOT i.indisprimary")).all()
        return dict(rows)


def entered(change: Callable[[], Any]) -> set[str]:
    """The indexes of detection_events that hold more rows after ``change()`` than before (the rows each one's WHERE
    takes, counted in the database)."""
    predicates = index_predicates()

    def entries() -> dict[str, int]:
        with db.engine().connect() as connection:
            return {name: connection.execute(text("SELECT count(*) FROM detection_events"
                                                  + (f" WHERE {where}" if where else ""))).scalar_one()
                    for name, where in predicates.items()}

    before = entries()
    change()
    after = entries()
    return {name for name in predicates if after[name] > before[name]}


def test_an_uploads_event_goes_into_three_indexes(database_url: Callable[[], str]) -> None:
    """A PUT's event enters the unique first-arrival index, created_at and status alone (on the old schema: all ten,
    those of its NULL and false columns and of the request id too); its answer then enters the partial ones."""
    db.init(database_url())
    assert set(index_predicates()) == AFTER
    made: dict[str, Any] = {}

    def arrive() -> None:
        made.update(detections.record_arrival("images_for_detection/a.jpg", "e" * 32, "run-1"))

    assert entered(arrive) == WRITTEN_BY_A_PUT

    def answer() -> None:
        with db.session() as session:
            session.execute(detections.ANSWER, [{"event_id": made["id"], "status": DetectionStatus.DETECTED,
                                                 "detected_at": datetime.now(UTC), "model_version": "v1",
                                                 "label": "cat", "routing_rule": silent_errors.Rule.AUDIT,
                                                 "sampled": True}])

    assert entered(answer) == {"ix_detection_events_detected_at", "ix_detection_events_version_rule",
                               "ix_detection_events_label", "ix_detection_events_routing_rule",
                               "ix_detection_events_sampled"}


def fill(rows: int = 200) -> None:
    """Detection events of every kind: detected by two versions, audited, sampled, answered, waiting, re-detected."""
    now = datetime.now(UTC)
    values = []
    for number in range(rows):
        detected = number % 10 != 0
        values.append({
            "request_id": f"r{number}", "created_at": now - timedelta(minutes=rows - number),
            "detected_at": now if detected else None, "object_key": f"images_for_detection/{number}.jpg",
            "etag": f"{number:032x}", "source": "api",
            "status": DetectionStatus.DETECTED if detected else DetectionStatus.WAITING_FOR_MODEL,
            "status_message": "", "model_version": ("v1", "v2")[number % 2] if detected else None,
            "label": "cat" if detected else None, "confidence": 90.0 if detected else None, "labels": [],
            "threshold": 50.0, "human_review_enabled": True, "sampled": number % 7 == 0 and detected,
            "human_label": "dog" if number % 14 == 0 and detected else None,
            "run_id": f"run-{number}", "routing_rule": (silent_errors.Rule.AUDIT if number % 7 == 0 else
                                                        silent_errors.Rule.AUTO_ACCEPTED) if detected else None,
            "previous_event_id": number - 1 if number % 50 == 49 else None})
    with db.connection() as connection:
        connection.execute(DetectionEvent.__table__.insert(), values)


# Each query of the code that reads the log by an indexed column, and the index it must be able to use.
QUERIES: dict[str, tuple[Callable[..., Any], str]] = {
    "the log filtered by label": (lambda s: detections.list_events(session=s, label="cat"),
                                  "ix_detection_events_label"),
    "the log filtered by rule": (lambda s: detections.list_events(session=s, routing_rule=silent_errors.Rule.AUDIT),
                                 "ix_detection_events_routing_rule"),
    "the log's sampled": (lambda s: detections.list_events(session=s, sampled=True), "ix_detection_events_sampled"),
    "the log by status": (lambda s: detections.list_events(session=s, status="REJECTED"), "ix_detection_events_status"),
    "the labels seen": (lambda s: detections.labels_seen(session=s), "ix_detection_events_label"),
    "the audits opened": (lambda s: silent_errors.audits_opened("v1", session=s), "ix_detection_events_version_rule"),
    "the answered audits": (lambda s: silent_errors.audits_of("v1", session=s), "ix_detection_events_version_rule"),
    "the answered audits (sampled)": (lambda s: silent_errors.audits_of("v1", session=s),
                                      "ix_detection_events_sampled"),
    "a warm start's window": (lambda s: warm_start._window("v1", session=s), "ix_detection_events_version_rule"),
    "a version has detected": (lambda s: warm_start._has_detected("v1", session=s),
                               "ix_detection_events_version_rule"),
    "the sampling's walk": (lambda s: s.scalars(select(DetectionEvent.id).where(
        DetectionEvent.status == DetectionStatus.DETECTED, DetectionEvent.detected_at >= datetime.now(UTC),
        DetectionEvent.previous_event_id.is_(None)).order_by(DetectionEvent.detected_at, DetectionEvent.id)).all(),
                            "ix_detection_events_detected_at"),
    "a re-detection's event": (lambda s: s.scalar(select(DetectionEvent.id).where(
        DetectionEvent.run_id == "run-49", DetectionEvent.previous_event_id.is_not(None))),
                               "ix_detection_events_previous_event_id"),
}


def plan_with(index: str, statement: str, parameters: Any) -> str:
    """The plan of ``statement`` when it may read ``index`` alone: SQLite's EXPLAIN QUERY PLAN with ``INDEXED BY``
    (an error when the index cannot answer the query); PostgreSQL's EXPLAIN with every other index of the log dropped
    and sequential scans off, in a transaction rolled back (it names the index when the index can answer it)."""
    engine = db.engine()
    with engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()
        if engine.dialect.name == "sqlite":
            forced = statement.replace("FROM detection_events", f"FROM detection_events INDEXED BY {index}", 1)
            cursor.execute("EXPLAIN QUERY PLAN " + forced, parameters)
            return "\n".join(str(row[-1]) for row in cursor.fetchall())
        try:
            for other in set(index_predicates()) - {index}:
                cursor.execute(f"DROP INDEX {other}")
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + statement, parameters)
            return "\n".join(str(row[0]) for row in cursor.fetchall())
        finally:
            connection.connection.dbapi_connection.rollback()


@pytest.mark.parametrize("name", list(QUERIES))
def test_every_query_of_the_log_has_an_index(database_url: Callable[[], str], name: str) -> None:
    """The partial indexes serve the queries that read by their column: the query's WHERE implies the index's (a
    comparison implies IS NOT NULL; ``sampled IS 1`` / ``IS true`` as the ORM writes it)."""
    db.init(database_url())
    fill()
    query, index = QUERIES[name]
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "detection_events" in statement:
            seen.append((statement, parameters))

    event.listen(db.engine(), "before_cursor_execute", capture)
    try:
        with db.session() as session:
            query(session)
    finally:
        event.remove(db.engine(), "before_cursor_execute", capture)
    assert seen
    statement, parameters = seen[0]  # the one reading by the column (the labels seen: then the human answers')
    found = plan_with(index, statement, parameters)
    assert index in found, found


def alembic_config(connection: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def test_the_migration_goes_down_and_up(database_url: Callable[[], str]) -> None:
    """Down: the ten indexes as they were (whole-table; the request id's unique); up again: the new ones, with the
    events kept."""
    engine = db.init(database_url())
    fill(20)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "letterbox_input_view")
    found = {index["name"]: bool(index["unique"]) for index in inspect(engine).get_indexes("detection_events")}
    assert found == BEFORE
    assert not any(index_predicates()[name] for name in BEFORE if name != "uq_detection_first_arrival")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    assert set(index_predicates()) == AFTER
    assert index_predicates()["ix_detection_events_detected_at"]
    with db.session() as session:
        assert detections.count_events(session=session) == 20
