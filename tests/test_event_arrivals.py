"""An upload's detection event (``detections.record_arrival``, the PUT's insert): on SQLite every upload's INSERT goes
through the one connection kept for them (its page cache and prepared statement stay warm between uploads), also
from several threads at once; a failed write or a database opened again gets a new connection; the same upload
again is the same event. In process, on a real application database (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DatabaseError, OperationalError

from labelloop import db
from labelloop.detection import service as detections
from labelloop.detection.models import DetectionEvent

ARRIVAL_SQL = "INSERT INTO detection_events"


@pytest.fixture
def inserts(database_url: Callable[[], str]) -> Iterator[list[Any]]:
    """A fresh application database; the list of the DBAPI connections each event's INSERT ran on, in order."""
    db.init(database_url())
    found: list[Any] = []
    watch(found)
    yield found


def watch(found: list[Any]) -> None:
    """Append to ``found`` the DBAPI connection of every detection event INSERT on the open engine: on SQLite, where
    the inserts run on the driver's connection itself (no SQLAlchemy events), as SQLite's trace callback of each
    connection taken from the pool from now on reports them; elsewhere as SQLAlchemy's events do."""
    engine = db.engine()
    if engine.dialect.name != "sqlite":
        def seen(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.startswith(ARRIVAL_SQL):
                found.append(conn.connection.dbapi_connection)
        event.listen(engine, "before_cursor_execute", seen)
        return

    def traced(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        def statement(sql: str) -> None:
            if sql.startswith(ARRIVAL_SQL):
                found.append(dbapi_connection)
        dbapi_connection.set_trace_callback(statement)
    event.listen(engine, "checkout", traced)


def arrive(name: str) -> dict[str, Any]:
    """Record the arrival of the upload ``images_for_detection/NAME.jpg`` (its ETag: the MD5 of its name)."""
    etag = hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()
    return detections.record_arrival(f"images_for_detection/{name}.jpg", etag, "run-a")


def stored() -> int:
    with db.session() as session:
        return session.scalar(select(func.count(DetectionEvent.id)))


def uploads_from_four_threads() -> None:
    """40 uploads' events recorded from 4 threads at once (a read on a pooled connection after each, as a server
    makes), each its own event."""
    names = [f"t{thread}-{number}" for thread in range(4) for number in range(10)]
    events: dict[str, dict[str, Any]] = {}
    start = threading.Barrier(4)

    def uploads(thread: int) -> None:
        start.wait()
        for name in names[thread * 10:(thread + 1) * 10]:
            events[name] = arrive(name)
            with db.connection() as connection:
                connection.execute(select(1))

    threads = [threading.Thread(target=uploads, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({found["id"] for found in events.values()}) == len(names) == stored()
    assert all(events[name]["object_key"] == f"images_for_detection/{name}.jpg" for name in names)


def test_uploads_from_several_threads_each_get_their_event(inserts: list[Any]) -> None:
    uploads_from_four_threads()


def test_on_sqlite_every_upload_inserts_on_the_one_kept_connection(inserts: list[Any]) -> None:
    if db.engine().dialect.name != "sqlite":
        pytest.skip("PostgreSQL writes in parallel: each insert takes a pooled connection")
    uploads_from_four_threads()
    assert 1 <= len(inserts) <= 40
    assert len({id(connection) for connection in inserts}) == 1, \
        "the uploads' inserts went through several connections, each finding its page cache stale"


def test_the_same_upload_again_is_the_same_event_and_the_next_one_is_recorded(inserts: list[Any]) -> None:
    first = arrive("same")
    assert arrive("same") == first
    assert arrive("next")["id"] != first["id"]
    assert stored() == 2


def test_a_failed_insert_fails_its_upload_and_the_next_one_records(inserts: list[Any]) -> None:
    """The write fails after the SQLite writer's turn was taken (SQLite refuses the INSERT: its authorizer says
    no, once; elsewhere the driver fails before it): the upload gets SQLAlchemy's error for it, the turn is given
    back with the transaction, and the next upload is recorded."""
    arrive("before")
    if db.engine().dialect.name == "sqlite":
        refusals = [sqlite3.SQLITE_DENY]

        def refuse_once(action: int, table: str | None, *_args: Any) -> int:
            if action == sqlite3.SQLITE_INSERT and table == "detection_events" and refusals:
                return refusals.pop()
            return sqlite3.SQLITE_OK
        inserts[-1].set_authorizer(refuse_once)  # the kept connection; its prepared statements are prepared again
    else:
        failures = [OperationalError(ARRIVAL_SQL, {}, Exception("disk I/O error"))]

        def fail_once(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.startswith(ARRIVAL_SQL) and failures:
                raise failures.pop()
        event.listen(db.engine(), "before_cursor_execute", fail_once)
    with pytest.raises(DatabaseError, match=r"not authorized|disk I/O error"):
        arrive("failed")
    after = arrive("after")
    assert after["object_key"] == "images_for_detection/after.jpg"
    assert stored() == 2


def test_a_database_opened_again_gets_its_own_events(database_url: Callable[[], str]) -> None:
    db.init(database_url())
    arrive("first")
    db.close()
    db.init(database_url())
    found: list[Any] = []
    watch(found)
    arrive("second")
    assert stored() == 1 and len(found) == 1


def test_once_the_database_is_closed_its_file_alone_holds_every_event(tmp_path: Path) -> None:
    """Closing the database closes the kept connection too: SQLite, its last connection closed, writes the log into
    the file, so a copy of the file alone (a backup, a test's snapshot) has every event."""
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    for name in ("a", "b", "c"):
        arrive(name)
    db.close()
    shutil.copy(tmp_path / "app.db", tmp_path / "copy.db")
    db.init(f"sqlite:///{tmp_path / 'copy.db'}")
    try:
        assert stored() == 3
    finally:
        db.close()



def test_the_driver_stores_an_event_as_sqlalchemy_would(inserts: list[Any]) -> None:
    """An upload's event inserted through the driver (SQLite) has every column as the same values inserted through
    SQLAlchemy Core have them: the same stored text of times, JSON and flags, and read back the same."""
    recorded = arrive("driver")
    values = {**db.with_defaults(detections.EVENTS, {**recorded, "object_key": "images_for_detection/core.jpg"}),
              "request_id": "core", "created_at": recorded["created_at"]}
    with db.connection() as connection:
        connection.execute(detections.ARRIVAL, values)
    columns = [name for name in detections.SHOWN if name not in ("id", "request_id", "object_key")]
    with db.connection() as connection:
        rows = connection.execute(text(f"SELECT {', '.join(columns)} FROM detection_events ORDER BY id")).all()
    assert len(rows) == 2 and rows[0] == rows[1]
    assert {column: recorded[column] for column in columns} == \
        {column: value for column, value in detections.read_event(recorded["id"]).items() if column in columns}
