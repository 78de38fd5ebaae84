"""The application database: engine, sessions and Alembic migrations (SQLite in WAL mode or PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger(__name__)

__all__ = ["Base", "close", "engine", "init", "session", "text", "upgrade", "utcnow"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Base(DeclarativeBase):
    """Declarative base of every labelloop table."""


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


_engine: Engine | None = None
_sessions: sessionmaker[Session] | None = None


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get WAL, foreign keys and a generous busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def init(url: str) -> Engine:
    """Open the application database at ``url`` and bring its schema to the newest migration."""
    global _engine, _sessions
    if _engine is not None:
        _engine.dispose()
    _engine = make_engine(url)
    upgrade(_engine)
    _sessions = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def upgrade(engine: Engine) -> None:
    """Run Alembic migrations up to head on ``engine``."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    log.info("database migrated", extra={"url": engine.url.render_as_string(hide_password=True)})


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
