"""The detection event log's indexes that grew with the table (migration ``event_log_big_table_indexes``):
``(model_version, routing_rule)`` without the events no version detected yet, so the audits a version opened are
counted in the index alone; ``previous_event_id`` with the re-detections alone, so the waiting uploads' sweep
(``previous_event_id IS NULL``) cannot read it whole; ``(model_version, human_answered_at)`` of the answered sampled
events, so a version's answered audits are read without every sampled event. Every query that reads the log by these
columns has its index; the migration goes down to the whole-table indexes and up again, rows kept. Real SQLite and
PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, inspect, select, text

from labelloop import db
from labelloop.detection import service as detections
from labelloop.detection import silent_errors, warm_start
from labelloop.detection.models import DetectionEvent, DetectionStatus

VERSION_RULE = "ix_detection_events_version_rule"
PREVIOUS = "ix_detection_events_previous_event_id"
ANSWERED = "ix_detection_events_answered_audits"
# The two indexes as the migration's previous revision made them: name → columns (whole-table, not unique).
BEFORE = {"ix_detection_events_model_version": ["model_version"], PREVIOUS: ["previous_event_id"]}


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


def test_an_upload_enters_the_partial_indexes_as_it_is_detected(database_url: Callable[[], str]) -> None:
    """A PUT's event (no version yet, a first arrival, no answer) enters none of the partial indexes; its detection
    enters the version's, a human's answer to its audit the answered audits', a re-detection of it the
    re-detections' one."""
    db.init(database_url())
    made: dict[str, Any] = {}

    def arrive() -> None:
        made.update(detections.record_arrival("images_for_detection/a.jpg", "e" * 32, "run-1"))

    assert not entered(arrive) & {VERSION_RULE, PREVIOUS, ANSWERED}

    def detect() -> None:
        with db.session() as session:
            session.execute(detections.ANSWER, [{"event_id": made["id"], "status": DetectionStatus.DETECTED,
                                                 "detected_at": datetime.now(UTC), "model_version": "v1",
                                                 "label": "cat", "routing_rule": silent_errors.Rule.AUDIT,
                                                 "sampled": True}])

    assert entered(detect) & {VERSION_RULE, PREVIOUS, ANSWERED} == {VERSION_RULE}

    def answer() -> None:
        with db.session() as session:
            row = session.get(DetectionEvent, made["id"])
            row.human_label, row.human_answered_at = "dog", datetime.now(UTC)

    assert entered(answer) & {VERSION_RULE, PREVIOUS, ANSWERED} == {ANSWERED}
    assert PREVIOUS in entered(lambda: detections.record_redetection(made["id"], "run-2"))


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


def statements_of(query: Callable[[Any], Any]) -> list[tuple[str, Any]]:
    """The statements on detection_events that ``query(session)`` executes, with their parameters."""
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
    return seen


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


def plan(statement: str, parameters: Any) -> str:
    """The plan the database chooses for ``statement`` itself."""
    with db.engine().connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()
        cursor.execute(("EXPLAIN QUERY PLAN " if db.engine().dialect.name == "sqlite" else "EXPLAIN ") + statement,
                       parameters)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


# Each query of the code that reads the log by a version or by the event a re-detection repeats, and its index.
QUERIES: dict[str, tuple[Callable[..., Any], str]] = {
    "the audits opened": (lambda s: silent_errors.audits_opened("v1", session=s), VERSION_RULE),
    "the new stratum's audits opened": (lambda s: silent_errors.new_audits_opened("v1", session=s), VERSION_RULE),
    "the answered audits": (lambda s: silent_errors.audits_of("v1", session=s), ANSWERED),
    "the other versions' answered audits": (lambda s: warm_start._answered_audits("v1", session=s), ANSWERED),
    "a version has detected": (lambda s: warm_start._has_detected("v1", session=s), VERSION_RULE),
    "a re-detection's event": (lambda s: s.scalar(select(DetectionEvent.id).where(
        DetectionEvent.run_id == "run-49", DetectionEvent.previous_event_id.is_not(None))), PREVIOUS),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_every_query_by_version_or_previous_event_has_its_index(database_url: Callable[[], str], name: str) -> None:
    """The partial indexes serve the queries that read by their column: the query's WHERE implies the index's (a
    comparison implies IS NOT NULL)."""
    db.init(database_url())
    fill()
    query, index = QUERIES[name]
    statement, parameters = statements_of(query)[0]
    found = plan_with(index, statement, parameters)
    assert index in found, found


def test_the_audits_opened_are_found_in_the_index(database_url: Callable[[], str]) -> None:
    """The estimate's count of a version's audits finds them by ``(model_version, routing_rule)``: SQLite counts them
    in the index alone (a covering index: it holds the rowid); PostgreSQL's index condition has both columns, so no
    other event of the version is read from the table."""
    db.init(database_url())
    fill()
    statement, parameters = statements_of(lambda s: silent_errors.audits_opened("v1", session=s))[0]
    found = plan_with(VERSION_RULE, statement, parameters)
    if db.engine().dialect.name == "sqlite":
        assert f"COVERING INDEX {VERSION_RULE} (model_version=? AND routing_rule=?)" in found, found
    else:
        condition = next(line for line in found.splitlines() if "Index Cond" in line)
        assert "model_version" in condition and "routing_rule" in condition and "Filter" not in found, found


def test_a_versions_answered_audits_are_read_in_order_by_their_index(database_url: Callable[[], str]) -> None:
    """The estimate's read of a version's answered audits takes that version's answered sampled events alone, already
    in the order it wants (on the old schema SQLite read every sampled event by the ``sampled`` index, then sorted);
    the audits are the same ones."""
    db.init(database_url())
    fill()
    statement, parameters = statements_of(lambda s: silent_errors.audits_of("v1", session=s))[0]
    if db.engine().dialect.name == "sqlite":
        found = plan(statement, parameters)
        assert f"USING INDEX {ANSWERED} (model_version=?)" in found and "TEMP B-TREE" not in found, found
    else:  # the version's answered audits sorted by (answer time, id): the id is not in the index
        found = plan_with(ANSWERED, statement, parameters)
        assert f"Index Scan using {ANSWERED}" in found, found
    with db.session() as session:
        audits = silent_errors.audits_of("v1", session=session)
    # The fill's answered events (every 14th) are sampled audits of v1 (even numbers), detected unless a 10th.
    assert len(audits) == len([n for n in range(200) if n % 14 == 0 and n % 10 != 0]) == 12
    assert all(audit.wrong for audit in audits)


def test_the_waiting_sweep_reads_the_status_index(database_url: Callable[[], str]) -> None:
    """The waiting uploads' sweep (``previous_event_id IS NULL``) cannot read the re-detections' index (on the old
    schema SQLite planned it as a scan of that whole index) and reads the status index."""
    db.init(database_url())
    fill()
    statement, parameters = statements_of(lambda _s: detections.waiting_uploads())[0]
    if db.engine().dialect.name == "sqlite":
        with pytest.raises(sqlite3.OperationalError, match="no query solution"):
            plan_with(PREVIOUS, statement, parameters)
        assert "ix_detection_events_status" in plan(statement, parameters)
    else:
        assert PREVIOUS not in plan_with(PREVIOUS, statement, parameters)
    assert "ix_detection_events_status" in plan_with("ix_detection_events_status", statement, parameters)


def alembic_config(connection: Any) -> Config:
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def test_the_migration_goes_down_and_up(database_url: Callable[[], str]) -> None:
    """Down: the whole-table ``model_version`` and ``previous_event_id`` indexes as they were; up again: the partial
    ones, with the events kept."""
    engine = db.init(database_url())
    fill(20)
    assert all(index_predicates()[name] for name in (VERSION_RULE, PREVIOUS, ANSWERED))
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "letterbox_input_view")
    found = {index["name"]: index for index in inspect(engine).get_indexes("detection_events")}
    assert VERSION_RULE not in found and ANSWERED not in found
    for name, columns in BEFORE.items():
        assert found[name]["column_names"] == columns and not found[name]["unique"]
        assert not index_predicates()[name]
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    found = {index["name"]: index for index in inspect(engine).get_indexes("detection_events")}
    assert "ix_detection_events_model_version" not in found
    assert found[VERSION_RULE]["column_names"] == ["model_version", "routing_rule"]
    assert "model_version IS NOT NULL" in index_predicates()[VERSION_RULE]
    assert "previous_event_id IS NOT NULL" in index_predicates()[PREVIOUS]
    assert found[ANSWERED]["column_names"] == ["model_version", "human_answered_at"]
    assert "human_label IS NOT NULL" in index_predicates()[ANSWERED]
    with db.session() as session:
        assert detections.count_events(session=session) == 20
