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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import IntegrityError

from labelloop import db

log = logging.getLogger(__name__)


class ArrivalConnection:
    """:meth:`begin` gives a connection in a transaction that commits when the block ends without error (else rolls
    back): on SQLite the kept one, one block at a time; on PostgreSQL a pooled one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: tuple[Engine, Connection] | None = None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction for one short write (see the class)."""
        engine = db.engine()
        if engine.dialect.name != "sqlite":
            with db.connection() as connection:
                yield connection
            return
        with self._lock:
            connection = self._connection(engine)
            try:
                with connection.begin():
                    yield connection
            except IntegrityError:  # the row's own fault (recorded before): the connection is as good as it was
                raise
            except BaseException:  # a connection that failed otherwise is not kept (the next write opens another)
                self._drop()
                raise

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


arrivals = ArrivalConnection()
