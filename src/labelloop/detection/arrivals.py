"""The connection an upload's detection event is inserted on: on SQLite one connection kept for these inserts, used
by one upload at a time; on PostgreSQL a pooled one each time.

SQLite lets one transaction write at a time (this process's writers take turns: ``db.WriterTurns``), and a
connection drops its whole page cache when another connection has committed since its last transaction. The pool
hands its connections out first in, first out, so an upload's INSERT nearly always came on a connection whose cache
another upload's commit had made stale, and read again every page of the table and its indexes that it touched
(4 threads recording 400 uploads: 14.8 ``pread64`` calls per upload, 0.4 on the kept connection; README Performance,
item 49). Kept for these inserts alone, the connection finds its pages cached unless another writer (a batch's
run) committed in between, and its prepared statement with them. PostgreSQL writes in parallel and caches on the
server: there each insert takes a pooled connection, as before.

On SQLite the INSERT runs on the kept connection's DBAPI cursor, its SQL compiled once and its values put through
the same type processors SQLAlchemy applies: SQLAlchemy's execution of it (its execution context, events, result
object and transaction) cost more CPU than SQLite's own insert and commit (0.22 against 0.14 ms a PUT in process;
README Performance, item 53). The process's SQLite writers still take turns (``db.WriterTurns``), and a failure
raises SQLAlchemy's exception for it (``IntegrityError``, ``OperationalError`` …), as a Core execution would.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Insert, event
from sqlalchemy.exc import DBAPIError, IntegrityError

from labelloop import db

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """An INSERT compiled for one engine's dialect and one set of value keys: its SQL, the order its values take, and
    each value's bind processor (None: passed as it is)."""

    sql: str
    keys: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    @staticmethod
    def of(statement: Insert, keys: tuple[str, ...], engine: Engine) -> Prepared:
        """``statement`` with the values ``keys``, compiled for ``engine``'s dialect."""
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        order = tuple(compiled.positiontup or ())
        return Prepared(str(compiled), order, tuple(
            compiled.binds[key].type.dialect_impl(dialect).bind_processor(dialect) for key in order))

    def arguments(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """``values`` in the statement's order, each as the driver takes it."""
        return tuple(values[key] if process is None else process(values[key])
                     for key, process in zip(self.keys, self.processors, strict=True))


class ArrivalConnection:
    """:meth:`insert` runs one INSERT … RETURNING in a transaction of its own and commits it: on SQLite on the kept
    connection, one insert at a time; on PostgreSQL on a pooled one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: tuple[Engine, Connection] | None = None
        self._prepared: weakref.WeakKeyDictionary[Engine, dict[tuple[Insert, tuple[str, ...]], Prepared]] = \
            weakref.WeakKeyDictionary()

    def insert(self, statement: Insert, values: dict[str, Any]) -> Any:
        """Run ``statement`` (an INSERT … RETURNING of one column) with ``values`` in a transaction of its own,
        committed; the returned value. On SQLite on the kept connection's DBAPI cursor (see the module), else on a
        pooled connection."""
        engine = db.engine()
        if engine.dialect.name != "sqlite":
            with db.connection() as connection:
                return connection.execute(statement, values).scalar_one()
        prepared = self._prepare(engine, statement, tuple(values))
        arguments = prepared.arguments(values)
        with self._lock:
            connection = self._connection(engine)
            try:
                return _insert_committed(connection, db.writer_turns(engine), prepared, arguments)
            except IntegrityError:  # the row's own fault: the connection is as good as it was
                raise
            except BaseException:  # a connection that failed otherwise is not kept (the next write opens another)
                self._drop()
                raise

    def _prepare(self, engine: Engine, statement: Insert, keys: tuple[str, ...]) -> Prepared:
        """``statement`` compiled for ``engine`` with the values ``keys`` (once per engine, statement and keys)."""
        known = self._prepared.setdefault(engine, {})
        found = known.get((statement, keys))
        if found is None:
            found = known[(statement, keys)] = Prepared.of(statement, keys, engine)
        return found

    def _connection(self, engine: Engine) -> Connection:
        """The kept connection of ``engine`` (the database opened again, or the last one failed: a new one)."""
        kept = self._kept
        if kept is not None and kept[0] is engine and not kept[1].closed and not kept[1].invalidated:
            return kept[1]
        self._drop()
        if not event.contains(engine, "engine_disposed", self._disposed):
            event.listen(engine, "engine_disposed", self._disposed)
        connection = engine.connect()
        self._kept = (engine, connection)
        return connection

    def _disposed(self, engine: Engine) -> None:
        """``engine`` was disposed of (``db.close``, ``db.init`` again): its kept connection is closed now, as the
        pool's others are, so that SQLite, its last connection closed, checkpoints the log into the database file
        (a copy of the file, or another process, then finds every event in it)."""
        with self._lock:
            if self._kept is not None and self._kept[0] is engine:
                self._drop(invalidate=True)

    def _drop(self, *, invalidate: bool = False) -> None:
        """Give the kept connection back to its pool (``invalidate``: close it, not back to a disposed pool)."""
        kept, self._kept = self._kept, None
        if kept is None:
            return
        try:
            if invalidate:
                kept[1].invalidate()
            kept[1].close()
        except Exception:  # its database may be gone (its file deleted): nothing to give back then
            log.debug("the detection events' kept connection did not close cleanly", exc_info=True)


def _insert_committed(connection: Connection, turns: db.WriterTurns | None, prepared: Prepared,
                      arguments: tuple[Any, ...]) -> Any:
    """Run ``prepared`` with ``arguments`` on ``connection``'s DBAPI connection and commit, in this process's writer
    turn (``turns``) from the statement to the commit or rollback; the one value it returns. A driver error is raised
    as SQLAlchemy's exception for it, the transaction rolled back."""
    dbapi_connection = connection.connection.dbapi_connection
    error = connection.dialect.loaded_dbapi.Error
    if turns is not None:
        turns.take(dbapi_connection)
    try:
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(prepared.sql, arguments)
                (found,) = cursor.fetchone()
            finally:
                cursor.close()
            dbapi_connection.commit()
        except error as exc:
            dbapi_connection.rollback()
            raise DBAPIError.instance(prepared.sql, arguments, exc, error) from exc
    finally:
        if turns is not None:
            turns.give_back(dbapi_connection)
    return found


arrivals = ArrivalConnection()
