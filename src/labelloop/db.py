"""The application database: engine, sessions and Alembic migrations (SQLite in WAL mode or PostgreSQL)."""

from __future__ import annotations

import functools
import logging
import select
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    NullPool,
    TypeDecorator,
    create_engine,
    event,
    insert,
    make_url,
    text,
)
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from labelloop.config import get_settings, with_driver

log = logging.getLogger(__name__)

__all__ = ["MAX_ROW_ID", "Base", "close", "connection", "engine", "init", "insert_all", "session", "startup_lock",
           "text", "upgrade", "utcnow", "with_defaults"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The largest id a table holds (ids are INTEGER columns, 32-bit in PostgreSQL): bounds every id a request names.
MAX_ROW_ID = 2**31 - 1


class Base(DeclarativeBase):
    """Declarative base of every labelloop table."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def insert_all(session: Session, rows: list[Base], *, ids: bool = False, key: str | None = None) -> None:
    """INSERT ``rows`` (new ORM objects of one table, never added to a session) with one executemany statement, in
    their order: SQLAlchemy Core, without the unit of work a flush runs per object. As a flush would, a column left
    None gets its Python-side default, set on the object too; ``ids``: each object's id is set from RETURNING
    (SQLite ≥ 3.35 and PostgreSQL). The objects stay transient: read them, do not add them afterwards.

    ``key``: a unique column by which the ids are matched to the rows when every row has a value there: then the
    rows go in one multi-row INSERT … RETURNING, where ids returned in the rows' order cost one statement per row
    on SQLite (SQLAlchemy cannot rely on the order of a multi-row RETURNING there)."""
    if not rows:
        return
    table = type(rows[0]).__table__
    values = [_with_defaults_set(table, row) for row in rows]
    if not ids:
        session.execute(_insert(table, None), values)
        return
    keyed = key is not None and None not in (keys := [value[key] for value in values]) and len(set(keys)) == len(keys)
    if keyed:
        found = {found_key: new_id for found_key, new_id in session.execute(_insert(table, key), values).all()}
        new_ids = [found[value[key]] for value in values]
    else:
        new_ids = list(session.execute(_insert(table, ""), values).scalars())
    for row, new_id in zip(rows, new_ids, strict=True):
        row.id = new_id  # type: ignore[attr-defined]


@functools.cache
def _insert(table: Any, returning: str | None) -> Any:
    """:func:`insert_all`'s statement for ``table``, built once (a batch of detections writes two tables, and building
    the statement cost about what running it does): ``returning`` None, nothing returned; a column's name, each
    row's value there and its id; "", the ids in the rows' order."""
    statement = insert(table)
    if returning is None:
        return statement
    if returning:
        return statement.returning(table.c[returning], table.c.id)
    return statement.returning(table.c.id, sort_by_parameter_order=True)


def with_defaults(table: Any, given: dict[str, Any]) -> dict[str, Any]:
    """A new row of ``table``: every column but the primary key, the value ``given`` or else (missing or None) its
    Python-side default, as a flush fills them in."""
    return {column.key: _or_default(given.get(column.key), column) for column in table.columns
            if not column.primary_key}


def _with_defaults_set(table: Any, row: Base) -> dict[str, Any]:
    """:func:`with_defaults` of an ORM object (read from the instance's own dictionary, where the ORM keeps a set
    attribute: its descriptor would cost more than the rest), the defaults set on the object too."""
    given = vars(row)
    values = with_defaults(table, given)
    for key, value in values.items():
        if value is not None and given.get(key) is None:
            setattr(row, key, value)
    return values


def _or_default(value: Any, column: Any) -> Any:
    if value is not None or column.default is None:
        return value
    return column.default.arg(None) if column.default.is_callable else column.default.arg


@contextmanager
def connection() -> Iterator[Connection]:
    """A Core connection in a transaction that commits when the block ends without error and rolls back
    otherwise: for a short write that needs no ORM session (a session's own cost is most of a one-row INSERT's)."""
    with engine().begin() as connected:
        yield connected


_engine: Engine | None = None
_sessions: sessionmaker[Session] | None = None


# Every SQLite connection's settings, the application database's and a SQLite system database's alike: the busy
# timeout first (switching to write-ahead logging takes a lock), then WAL with synchronous=NORMAL (a commit
# survives a killed process), foreign keys.
SQLITE_PRAGMAS = ("busy_timeout=30000", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON")


def set_sqlite_pragmas(dbapi_connection: Any, _record: Any = None) -> None:
    """Apply :data:`SQLITE_PRAGMAS` to a new sqlite3 connection (a "connect" event listener)."""
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


# TCP keepalives on PostgreSQL connections, both ways: a peer that vanished (a machine that crashed, a cable
# pulled) is noticed within about 25 s, and the server then releases what the dead session held.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
PG_SERVER_KEEPALIVES = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
# Advisory lock keys (PostgreSQL) of labelloop's cluster-wide sections.
MIGRATION_LOCK = 0x4C4C_0001
STARTUP_LOCK = 0x4C4C_0002


SQLITE_BUSY_SECONDS = 30.0  # how long a writer waits for SQLite's write lock (busy_timeout, and the turn below)
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")


def _writes(statement: str) -> bool:
    """Whether ``statement`` takes SQLite's write lock (a write, or a transaction begun for writing)."""
    return statement.lstrip()[:15].upper().startswith(WRITES)


class WriterTurns:
    """This process's writers to one SQLite file take its write lock in turn, waiting on a Python lock.

    SQLite lets one connection write at a time and makes the others poll (its busy handler sleeps 1, 2, 5, 10 …
    up to 100 ms between tries), so under load a waiting writer kept missing the short gaps between other
    writers: upload PUTs' event inserts of 0.2 ms waited up to 0.9 s. Here a connection takes the turn at its
    first write statement and gives it back once its transaction has committed or rolled back; reads never wait
    (write-ahead logging). Other processes on the same file still meet SQLite's own busy handling."""

    def __init__(self, timeout: float = SQLITE_BUSY_SECONDS) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._holder: Any = None  # the DBAPI connection whose transaction has written

    def take(self, dbapi_connection: Any) -> None:
        """Wait for the turn before ``dbapi_connection``'s first write of its transaction (then no more)."""
        dbapi_connection = _unwrapped(dbapi_connection)
        if self._holder is dbapi_connection:
            return
        if not self._lock.acquire(timeout=self.timeout):
            raise TimeoutError(f"no turn to write to the SQLite database within {self.timeout:.0f} s: another "
                               "transaction of this process held it all that time")
        self._holder = dbapi_connection

    def held(self) -> bool:
        """Whether a transaction of this process has written and not ended yet."""
        return self._holder is not None

    def give_back(self, dbapi_connection: Any) -> None:
        """``dbapi_connection``'s transaction has ended (or the connection is gone): the next writer's turn."""
        if self._holder is _unwrapped(dbapi_connection):
            self._holder = None
            self._lock.release()

    def watch(self, engine: Engine) -> None:
        """Take turns on ``engine``: at each write statement, and back after the DBAPI commit or rollback."""
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            try:
                commit(dbapi_connection)
            finally:
                self.give_back(dbapi_connection)

        def do_rollback(dbapi_connection: Any) -> None:
            try:
                rollback(dbapi_connection)
            finally:
                self.give_back(dbapi_connection)

        def before_write(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if _writes(statement):
                self.take(conn.connection.dbapi_connection)

        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback  # type: ignore[method-assign]
        event.listen(engine, "before_cursor_execute", before_write)
        event.listen(engine.pool, "close", lambda dbapi_connection, _record: self.give_back(dbapi_connection))
        event.listen(engine.pool, "invalidate",
                     lambda dbapi_connection, _record, _error: self.give_back(dbapi_connection))


_turns: weakref.WeakKeyDictionary[Engine, WriterTurns] = weakref.WeakKeyDictionary()


def take_turns(engine: Engine) -> WriterTurns:
    """Make this process's writers to ``engine``'s SQLite file take turns (:class:`WriterTurns`)."""
    turns = _turns[engine] = WriterTurns()
    turns.watch(engine)
    return turns


def writer_turns(engine: Engine) -> WriterTurns | None:
    """The turns of ``engine``'s writers (a SQLite engine of :func:`make_engine`), else None."""
    return _turns.get(engine)


def _unwrapped(connection: Any) -> Any:
    """The DBAPI connection itself, also when the pool's proxy of it is given (as the dialect's commit gets)."""
    return getattr(connection, "dbapi_connection", connection)


def _readable(socket: int) -> bool:
    """Whether the socket ``socket`` has something to read (or an error, or the end of its stream) now."""
    poller = select.poll()
    poller.register(socket, select.POLLIN)
    return bool(poller.poll(0))


def closed_by_server(dbapi_connection: Any) -> bool:
    """Whether the PostgreSQL server has closed this idle pooled psycopg connection, or is closing it — ended its
    session (``pg_terminate_backend``, an idle timeout), restarted or stopped — or the kernel has found the peer gone
    (the TCP keepalives): seen without a round trip. An idle connection of the pool is sent nothing (it does not
    LISTEN), so anything to read on its socket says so: the server's last message (which comes before the end of the
    stream, and before its session leaves ``pg_stat_activity``), the end of the stream, an error. A rare message that
    is not a farewell (a notice, a parameter's new value after a reload) costs a new connection, never a request."""
    if dbapi_connection.closed:
        return True
    try:
        return _readable(dbapi_connection.pgconn.socket)
    except psycopg.Error:  # libpq has already found it broken
        return True


def drop_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pool "checkout" listener: a connection the server has closed (:func:`closed_by_server`) is replaced by a new
    one before the request uses it (SQLAlchemy reconnects on :class:`DisconnectionError`)."""
    if closed_by_server(dbapi_connection):
        raise DisconnectionError("the PostgreSQL server closed this pooled connection; opening a new one")


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """Create an engine for ``url``; SQLite files get WAL, foreign keys and a generous busy timeout.

    PostgreSQL (psycopg 3): a pool of ``pool_size`` that may grow to twice that under load. A pooled connection the
    server has closed (a restart, a terminated session) is replaced at checkout, so it costs no failed request; that
    look reads the connection's socket and sends nothing (``pool_pre_ping`` sent a ``SELECT 1`` and waited for its
    answer at every checkout: a round trip per request).
    """
    url = with_driver(url)
    if url.startswith("sqlite"):
        # A SQLite connection is a file handle: the pool may be wide (SQLAlchemy's 5 + 10 ran out under 14
        # clients, and requests waited 30 s for a connection); writers still take turns on the file's lock.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=2 * pool_size, max_overflow=2 * pool_size)
        event.listen(engine, "connect", set_sqlite_pragmas)
        take_turns(engine)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                           connect_args={"application_name": "labelloop", "connect_timeout": 10, **PG_KEEPALIVES})
    event.listen(engine, "checkout", drop_closed_connection)
    return engine


def init(url: str, pool_size: int | None = None) -> Engine:
    """Open the application database at ``url`` and bring its schema to the newest migration."""
    global _engine, _sessions
    if _engine is not None:
        _engine.dispose()
    if pool_size is None:
        pool_size = get_settings().database_pool_size
    _engine = make_engine(url, pool_size)
    upgrade(_engine)
    _sessions = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def is_postgresql(engine: Engine) -> bool:
    """Whether ``engine`` talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def upgrade(engine: Engine) -> None:
    """Run Alembic migrations up to head on ``engine``.

    On PostgreSQL the migration holds a transaction-level advisory lock, so processes starting together
    migrate one after the other: the first one migrates, the others find the schema at head.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        if is_postgresql(engine):
            _wait_for_lock(connection, "pg_try_advisory_xact_lock", MIGRATION_LOCK)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    log.debug("database migrated", extra={"url": engine.url.render_as_string(hide_password=True)})


def _wait_for_lock(connection: Any, function: str, key: int, poll_seconds: float = 0.2) -> None:
    """Take an advisory lock by polling its ``try`` form.

    Waiting inside ``pg_advisory_lock`` would keep a statement (and its snapshot) open the whole time, and
    ``CREATE INDEX CONCURRENTLY`` in the lock holder's migrations waits for every such snapshot: a deadlock
    PostgreSQL does not detect. Between two tries this connection holds no snapshot.
    """
    while not connection.execute(text(f"SELECT {function}(:key)"), {"key": key}).scalar():
        time.sleep(poll_seconds)


@contextmanager
def startup_lock(url: str, lock_file: Path) -> Iterator[None]:
    """Hold a lock that every labelloop process sharing this database takes while it starts.

    First-start work (migrations, default parameters, the admin user, queues and schedules) then runs in
    one process at a time. PostgreSQL: a session advisory lock on its own connection; SQLite (one machine):
    an exclusive ``flock`` on ``lock_file``. Either is released if the process dies.
    """
    url = with_driver(url)
    if not url.startswith("sqlite"):
        engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10, **PG_KEEPALIVES})
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                _wait_for_lock(connection, "pg_try_advisory_lock", STARTUP_LOCK)
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STARTUP_LOCK})
        finally:
            engine.dispose()
        return
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# What one process may open to a PostgreSQL server, per LABELLOOP_DATABASE_POOL_SIZE (P): the application pool
# (P, growing to 2P under load: make_engine), and the workflow engine's: DBOS's pool (sys_db_pool_size 2P, no
# overflow; engine.start) plus the LISTEN connection it takes out of that pool, plus the executor lock's own.
def app_connections(pool_size: int) -> int:
    """The most connections the application database pool of one process opens."""
    return 2 * pool_size


def engine_connections(pool_size: int) -> int:
    """The most connections the workflow engine of one process opens to its system database."""
    return 2 * pool_size + 2


_BUDGET_SQL = text(
    "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
    "COALESCE(current_setting('reserved_connections', true), '0')::int, "
    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user), "
    "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())")


def check_connection_budget(url: str, needed: int, pool_size: int) -> dict[str, Any] | None:
    """On PostgreSQL, whether ``needed`` more connections (this process's most) fit under ``max_connections``
    beside those other clients hold now; when they do not, log a warning that names the settings to change.

    Returns the figures (``fits`` among them), or None for SQLite. A look at start-up, not a guarantee: other
    processes may start later, and each counts only the connections in use when it starts."""
    url = with_driver(url)
    if url.startswith("sqlite"):
        return None
    probe = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10, **PG_KEEPALIVES})
    try:
        with probe.connect() as connection:
            most, superuser_reserved, reserved, superuser, in_use = connection.execute(_BUDGET_SQL).one()
    except SQLAlchemyError as exc:  # the check is advice: the start goes on and fails, if it must, on its own
        log.warning("could not compare this process's database connections with max_connections",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:500], "needed": needed})
        return None
    finally:
        probe.dispose()
    # Ordinary roles cannot use the slots reserved for superusers (nor, from PostgreSQL 16, reserved_connections).
    usable = most - (0 if superuser else superuser_reserved + reserved)
    figures = {"max_connections": most, "usable": usable, "in_use": in_use, "free": usable - in_use,
               "needed": needed, "pool_size": pool_size, "fits": needed <= usable - in_use,
               "server": probe.url.render_as_string(hide_password=True)}
    if figures["fits"]:
        log.debug("database connections fit", extra=figures)
    else:
        log.warning(f"PostgreSQL may run out of connections under load: this process may open {needed} "
                    f"(LABELLOOP_DATABASE_POOL_SIZE={pool_size}; each process opens up to 4 × it + 2 when the "
                    f"workflow records share the database), but only {usable - in_use} of max_connections {most} "
                    f"are free ({in_use} in use). Lower LABELLOOP_DATABASE_POOL_SIZE, run fewer "
                    "processes, or raise max_connections in postgresql.conf (or put PgBouncer in front)",
                    extra=figures)
    return figures


def check_connection_budgets(app_url: str, engine_url: str, pool_size: int) -> list[dict[str, Any]]:
    """:func:`check_connection_budget` for each PostgreSQL server this process uses (the application database,
    and the system database when it is on another server); at start-up."""
    app_server = make_url(with_driver(app_url)).set(database=None)
    engine_server = make_url(with_driver(engine_url)).set(database=None)
    if app_server == engine_server:
        needs = {app_url: app_connections(pool_size) + engine_connections(pool_size)}
    else:
        needs = {app_url: app_connections(pool_size), engine_url: engine_connections(pool_size)}
    return [found for url, needed in needs.items()
            if (found := check_connection_budget(url, needed, pool_size)) is not None]


def engine() -> Engine:
    """The open engine; :func:`init` must have run."""
    if _engine is None:
        raise RuntimeError("the database is not open: call labelloop.db.init() first")
    return _engine


@contextmanager
def session() -> Iterator[Session]:
    """A session that commits when the block ends without error and rolls back otherwise."""
    if _sessions is None:
        raise RuntimeError("the database is not open: call labelloop.db.init() first")
    with _sessions() as db_session:
        try:
            yield db_session
            db_session.commit()
        except BaseException:
            db_session.rollback()
            raise


def close() -> None:
    """Dispose of the engine (tests and shutdown)."""
    global _engine, _sessions
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _sessions = None
