"""The durable workflow engine (DBOS Transact): start-up, queues, recorded steps and schedules."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import dbos._queue as dbos_queue
from croniter import croniter
from dbos import DBOS, DBOSConfig, Queue, SetWorkflowID
from dbos._core import _serialize_exception_for_persistence
from dbos._dbos import _get_dbos_instance
from dbos._error import DBOSMaxStepRetriesExceeded
from dbos._utils import INTERNAL_QUEUE_NAME, GlobalParams
from sqlalchemy import Engine, NullPool, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from labelloop.config import Settings, with_driver
from labelloop.db import PG_KEEPALIVES, PG_SERVER_KEEPALIVES, set_sqlite_pragmas, take_turns

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

OBJECT_EVENTS_QUEUE = "object-events"
TRAINING_QUEUE = "training"
PARAMETERS_QUEUE = "parameters"
SAMPLING_QUEUE = "sampling"
QUEUES = (OBJECT_EVENTS_QUEUE, TRAINING_QUEUE, PARAMETERS_QUEUE, SAMPLING_QUEUE)
# Queues whose worker every run queued by this process wakes at once (`Wakeup`). Not object-events: woken at
# every run, the upload pipeline cost more CPU per image (README Performance, items 12 and 32); a batch of uploads
# starts in the process that takes object-events runs without the queue (`start_run`, item 34); every other run this
# process queues there is queued with ``wake`` (routing.py), all but a batch over start_run's cap.
WOKEN_QUEUES = (TRAINING_QUEUE, PARAMETERS_QUEUE, SAMPLING_QUEUE)
# Object-event runs one process runs at once. A queue takes new runs only when it polls, so each poll must be
# able to take enough of them to keep inference busy; the runs' detections share micro-batches (serving.py).
OBJECT_EVENTS_CONCURRENCY = 16
APP_NAME = "labelloop"
# Run ids of this process's runs started at once (start_run) that are remembered for the stalled-run check.
_KEPT_STARTED = 10_000

_launched = False
_listened: list[str] | None = None  # the queues this process takes runs from (None: all of them)
_queues: dict[str, Queue] = {}
# Every queue by name: set when this process queues a run there that should start at once (every run of
# WOKEN_QUEUES), cleared when the queue's worker polls. Made before the workers start, so that a run queued before
# DBOS starts a worker (up to a second after launch) is taken at its first poll, not a whole period later.
_woken: dict[str, threading.Event] = {}
_liveness: Liveness | None = None
# Every recorded step and workflow by name (the run graph checks its states against these).
STEPS: dict[str, Callable[..., Any]] = {}
WORKFLOWS: dict[str, Callable[..., Any]] = {}


def new_executor_id(role: str) -> str:
    """A name for this process that no other process has had: host, role, process id and a random part."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{role}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# How often a worker process (`labelloop worker`) polls the object-events queue unless configured.
WORKER_QUEUE_POLLING_SECONDS = 0.2


def object_events_polling(settings: Settings, role: str) -> float:
    """How often this process polls the object-events queue: ``LABELLOOP_QUEUE_POLLING_SECONDS`` when set; else
    ``WORKER_QUEUE_POLLING_SECONDS`` in a worker, which finds every run by polling, and the idle period
    (``LABELLOOP_IDLE_QUEUE_POLLING_SECONDS``, at least the worker's) in a serving process, which starts its
    uploads' batches itself (:func:`start_run`) and wakes its worker for every other run it queues there."""
    if settings.queue_polling_seconds is not None:
        return settings.queue_polling_seconds
    if role == "worker":
        return WORKER_QUEUE_POLLING_SECONDS
    return max(WORKER_QUEUE_POLLING_SECONDS, settings.idle_queue_polling_seconds)


def start(settings: Settings, role: str = "serve") -> None:
    """Launch DBOS on the configured system database and declare labelloop's queues.

    Every module that defines workflows (``labelloop.loop.routing``) must be imported first, so a restarted
    process can recover the runs that were in flight when the last one stopped.

    Each process has its own executor id (``LABELLOOP_EXECUTOR_ID``, or a new one at every start) and
    holds a lock named after it while it runs: a PostgreSQL advisory lock, or a file lock beside a SQLite
    system database. Without DBOS Conductor nothing else recovers the runs of a process that died, so
    every process checks every ``recovery_check_seconds`` for runs left PENDING by an executor whose lock
    is free (its process is gone) and hands them back to their queues, where any process takes them up.
    """
    global _launched, _liveness, _listened
    if not WORKFLOWS:
        raise RuntimeError("no workflow is registered: import labelloop.loop.routing before starting the engine")
    listen = _listened_queues(settings.queues)
    executor_id = settings.executor_id or new_executor_id(role)
    liveness = Liveness.for_url(settings.engine_database_url, executor_id)
    liveness.hold_own()  # before launch: no run can carry this executor id while its lock is free
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": settings.engine_database_url,
        "scheduler_polling_interval_sec": settings.scheduler_polling_seconds,
        "log_level": settings.log_level,
        "executor_id": executor_id,
        "sys_db_pool_size": 2 * settings.database_pool_size,
    }
    if settings.engine_database_url.startswith("sqlite"):
        config["system_database_engine"] = sqlite_system_engine(settings.engine_database_url,
                                                                2 * settings.database_pool_size)
    try:
        # DBOS's start-up lines (some 80 schema migrations, queue registrations) at debug level, so a start ends
        # with labelloop's own banner instead of them.
        with dbos_info_at_debug():
            _launch(config, listen, object_events_polling(settings, role), settings.idle_queue_polling_seconds)
    except BaseException:
        liveness.close()
        raise
    _launched = True
    _liveness = liveness
    _listened = listen
    liveness.start_watching(settings.recovery_check_seconds)
    log.info("workflow engine started", extra={"system_database": _safe_url(settings.engine_database_url),
                                               "executor_id": executor_id,
                                               "queues": "all" if listen is None else (listen or "none")})


def sqlite_system_engine(url: str, pool_size: int) -> Engine:
    """The engine of a SQLite system database: DBOS's own connection settings (IMMEDIATE transactions, a long
    busy timeout, foreign keys) plus write-ahead logging with ``synchronous=NORMAL``, as the application
    database has. DBOS leaves SQLite in rollback-journal mode, where every recorded step is several fsyncs
    and readers block writers; in WAL a commit survives a killed process (not a power cut before the next
    checkpoint), which is what recovery needs, at a fraction of the cost. This process's writers take turns
    (``db.WriterTurns``)."""
    engine = create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=30)

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        connection.isolation_level = "IMMEDIATE"
        set_sqlite_pragmas(connection)

    take_turns(engine)  # the queue pollers, the runs' step records and enqueues: in turn, not by polling
    return engine


class _DebugLevel(logging.Filter):
    """Turns a logger's INFO records (those whose message starts with ``prefix``) into DEBUG ones, dropped
    unless the root logger shows DEBUG."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self._prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith(self._prefix):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


@contextlib.contextmanager
def dbos_info_at_debug(prefix: str = "") -> Iterator[None]:
    """While inside, DBOS's INFO lines (those starting with ``prefix``; every one by default) at debug level;
    warnings and errors still show."""
    chatter = logging.getLogger("dbos")
    quiet = _DebugLevel(prefix)
    chatter.addFilter(quiet)
    try:
        yield
    finally:
        chatter.removeFilter(quiet)


class Wakeup:
    """Stands in for DBOS's stop event in a queue's worker thread, so that a run this process queues (a training
    check, a parameter change, a sampling: every run of ``WOKEN_QUEUES``; a lone upload's batch) is taken at once
    instead of at the worker's next poll (:func:`enqueue` sets the queue's ``woken`` event).

    A DBOS queue worker sleeps between polls in ``stop_event.wait(period)`` and ends when that returns True;
    here the sleep also ends when ``woken`` is set (returning False: poll now). Each poll costs some 3–4 ms of CPU
    (the queue's row reloaded, its scopes listed, a dequeue transaction), so these queues can be polled
    rarely; runs queued by another process, or waiting for a free place under the queue's concurrency, are
    still found by the periodic poll.
    """

    STOP_CHECK_SECONDS = 0.5

    def __init__(self, stop: threading.Event, woken: threading.Event) -> None:
        self._stop = stop
        self._woken = woken

    def is_set(self) -> bool:
        """Whether DBOS is stopping (the worker then ends)."""
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until the period ends or a run is queued here; True when DBOS is stopping (noticed within
        ``STOP_CHECK_SECONDS``: DBOS's queue manager waits for its workers when it stops)."""
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._woken.wait(min(left, self.STOP_CHECK_SECONDS)):
                break
        self._woken.clear()  # a wake that comes after this still finds the run: it was queued before the poll
        return self._stop.is_set()


_dbos_queue_worker = dbos_queue.queue_worker_thread


def _queue_worker(stop_event: threading.Event, dbos: Any, queue: Queue) -> None:
    """DBOS's queue worker, woken by :class:`Wakeup` when this process queues a run to start at once."""
    woken = _woken.get(queue.name)
    if woken is not None:
        _dbos_queue_worker(Wakeup(stop_event, woken), dbos, queue)  # type: ignore[arg-type]  # it calls only wait() and is_set()
    else:  # a queue declared after launch
        _dbos_queue_worker(stop_event, dbos, queue)


def _wake(queue_name: str) -> None:
    woken = _woken.get(queue_name)
    if woken is not None:
        woken.set()


def _launch(config: DBOSConfig, listen: list[str] | None, poll: float, idle_poll: float) -> None:
    """Create and launch DBOS, then declare labelloop's queues: object-events polled every ``poll`` seconds,
    the three that take a run now and then (training, parameters, sampling) every ``idle_poll`` (at least
    ``poll``); a run queued by this process on one of those three wakes its worker at once (:class:`Wakeup`), as
    does a run queued on object-events with ``wake``."""
    idle_poll = max(poll, idle_poll)
    dbos_queue.queue_worker_thread = _queue_worker  # DBOS's queue manager starts each worker by this name
    _woken.update({name: threading.Event() for name in QUEUES})
    DBOS(config=config)
    if listen is not None:
        DBOS.listen_queues(listen)
    DBOS.launch()
    _queues[OBJECT_EVENTS_QUEUE] = DBOS.register_queue(OBJECT_EVENTS_QUEUE,
                                                       worker_concurrency=OBJECT_EVENTS_CONCURRENCY,
                                                       polling_interval_sec=poll)
    # One training at a time across every worker process.
    _queues[TRAINING_QUEUE] = DBOS.register_queue(TRAINING_QUEUE, global_concurrency=1,
                                                  polling_interval_sec=idle_poll)
    # Parameter changes are applied one at a time, in the order they were made.
    _queues[PARAMETERS_QUEUE] = DBOS.register_queue(PARAMETERS_QUEUE, global_concurrency=1,
                                                    polling_interval_sec=idle_poll)
    _queues[SAMPLING_QUEUE] = DBOS.register_queue(SAMPLING_QUEUE, global_concurrency=1,
                                                  polling_interval_sec=idle_poll)


def _listened_queues(names: list[str] | None) -> list[str] | None:
    if names is None:
        return None
    wanted = [name for name in names if name.lower() != "none"]
    unknown = sorted(set(wanted) - set(QUEUES))
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(unknown)} in LABELLOOP_QUEUES; the queues are "
                         f"{', '.join(QUEUES)} (empty or 'none': take no runs)")
    return wanted


def executor_id() -> str:
    """This process's executor id in the workflow engine's records."""
    return DBOS.executor_id


def stop() -> None:
    """Shut DBOS down (keeps the workflow registry, so it can be started again in the same process).

    The executor lock is released last: runs still in flight stay PENDING under this executor id, and
    the next process that checks takes them over.
    """
    global _launched, _liveness
    if _liveness is not None:
        _liveness.stop_watching()
    if _launched:
        DBOS.destroy(destroy_registry=False)
    _launched = False
    _queues.clear()
    _woken.clear()
    _started_here.forget_all()
    if _liveness is not None:
        _liveness.close()
    _liveness = None


def recover_stopped_executors() -> dict[str, int]:
    """Hand the runs of every stopped process back to their queues now; returns how many per executor."""
    if _liveness is None:
        return {}
    return _liveness.check()


# ── executors: which processes are alive, and recovery of the runs of those that are not ─────────────


class Liveness:
    """This process's executor lock, and the check that recovers the runs of executors whose lock is free."""

    def __init__(self, executor_id: str) -> None:
        self.executor_id = executor_id
        self.stalled = StalledRuns(executor_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[tuple[str, str]] = set()

    @staticmethod
    def for_url(url: str, executor_id: str) -> Liveness:
        """The lock kind that fits the system database at ``url``."""
        if url.startswith("sqlite"):
            database = make_url(url).database or "workflows.db"
            return FileLiveness(executor_id, Path(database + ".executors"))
        return PostgresLiveness(executor_id, url)

    # Subclasses: hold_own(), try_lock(other) -> bool, unlock(other), close().
    def hold_own(self) -> None:
        raise NotImplementedError

    def try_lock(self, other: str) -> bool:
        raise NotImplementedError

    def unlock(self, other: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def start_watching(self, every_seconds: float) -> None:
        """Check at once (a restarted process takes over what its predecessor left), then periodically."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(every_seconds,), name="executor-recovery",
                                        daemon=True)
        self._thread.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    def _watch(self, every_seconds: float) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as exc:  # the database may be restarting or its disk full: try again next time
                log.warning("checking for runs of stopped processes and stalled runs failed; trying again",
                            extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
            self._stop.wait(every_seconds)

    def keep_alive(self) -> None:
        """Make sure this process still holds its own lock (subclasses reconnect if they must)."""

    def check(self) -> dict[str, int]:
        """Recover the PENDING runs of each executor whose lock this process can take, and this process's own
        stalled runs (see :class:`StalledRuns`)."""
        self.keep_alive()
        pending = DBOS.list_workflows(status="PENDING", load_input=False, load_output=False)
        self.stalled.check(pending)
        owners: dict[str, set[str]] = {}
        for run in pending:
            if run.executor_id and run.executor_id != self.executor_id:
                owners.setdefault(run.executor_id, set()).add(run.app_version or "")
        recovered: dict[str, int] = {}
        for other, versions in sorted(owners.items()):
            if self._stop.is_set() or not self.try_lock(other):
                continue  # alive (or another process is recovering it right now)
            try:
                handles = DBOS._recover_pending_workflows([other])
                recovered[other] = len(handles)
                log.warning("recovered the runs of a stopped process",
                            extra={"executor_id": other, "runs": len(handles), "by": self.executor_id})
                for version in versions - {GlobalParams.app_version}:
                    if (other, version) not in self._warned:
                        self._warned.add((other, version))
                        log.warning("runs of a stopped process belong to another version of labelloop; start "
                                    "a process of that version to finish them",
                                    extra={"executor_id": other, "app_version": version})
            finally:
                self.unlock(other)
        return recovered


# A stalled run is handed back to its queue this many times; the next time it stalls it ends ERROR with the reason.
STALLED_RUN_RETRIES = 5
_KEPT_ERRORS = 1000


class RunOutcomeNotRecorded(Exception):
    """A run whose execution ended, several times, without recording its outcome in the engine's database."""


class StalledRuns:
    """Runs of this process that no execution carries any more but that still read PENDING.

    When the engine's database cannot be written as a run records a step or its outcome (a full disk, a
    connection lost at that moment), DBOS ends the run's thread and leaves the run PENDING under this
    executor, which is alive, so no recovery takes it up: it holds its queue until a restart (the training
    queue runs one at a time, so every later training check waits behind it). A run seen PENDING under this
    executor yet running nowhere in this process at two checks in a row is handed back to its queue, where
    it resumes from its last recorded step (as after a restart) and succeeds once the database can be
    written again; after ``STALLED_RUN_RETRIES`` hand-backs it ends ERROR with the last error it met, which
    frees its queue. Only queued runs and runs this process started itself (:func:`start_run`) are judged: DBOS
    counts their executions among its active ones, not a workflow function called inline.
    """

    def __init__(self, executor_id: str) -> None:
        self.executor_id = executor_id
        self._idle: set[str] = set()
        self._handed_back: dict[str, int] = {}

    def check(self, pending: list[Any]) -> dict[str, list[str]]:
        """Hand back or fail the runs idle at this check and the last one; returns their ids by outcome."""
        own = {run.workflow_id for run in pending
               if run.executor_id == self.executor_id and (run.queue_name or _started_here.knows(run.workflow_id))}
        idle = own - set(_get_dbos_instance()._active_workflows_set.activeList())  # after the listing
        stalled, self._idle = sorted(idle & self._idle), idle
        done: dict[str, list[str]] = {"handed_back": [], "failed": []}
        for run_id in stalled:
            tries = self._handed_back.get(run_id, 0)
            if tries < STALLED_RUN_RETRIES:
                self._hand_back(run_id, tries + 1)
                done["handed_back"].append(run_id)
            else:
                self._fail(run_id, tries)
                done["failed"].append(run_id)
        return done

    def _hand_back(self, run_id: str, attempt: int) -> None:
        dbos = _get_dbos_instance()
        if dbos._sys_db.reenqueue_for_recovery(run_id, [self.executor_id], INTERNAL_QUEUE_NAME):
            self._handed_back[run_id] = attempt
            while len(self._handed_back) > _KEPT_ERRORS:
                self._handed_back.pop(next(iter(self._handed_back)))
            log.warning("a run stopped without recording its outcome; handed back to its queue", extra={
                "run_id": run_id, "attempt": attempt, "of": STALLED_RUN_RETRIES,
                "last_error": last_step_error(run_id)})

    def _fail(self, run_id: str, tries: int) -> None:
        reason = RunOutcomeNotRecorded(
            f"the run stopped {tries + 1} times without recording its outcome in the workflow engine's "
            f"database (full disk, or connection lost); last error: {last_step_error(run_id) or 'see the log'}")
        dbos = _get_dbos_instance()
        error = _serialize_exception_for_persistence(reason, None, dbos._serializer)
        if dbos._sys_db.update_workflow_outcome(run_id, "ERROR", error=error):
            self._handed_back.pop(run_id, None)
            log.error("a run ended ERROR: it kept stopping without recording its outcome",
                      extra={"run_id": run_id, "error": str(reason)[:500]})


_step_errors: dict[str, str] = {}  # run id → the last error a step of it raised (the newest runs only)
_step_errors_lock = threading.Lock()


def _remember_step_error(error: BaseException) -> None:
    run_id = DBOS.workflow_id
    if run_id is None:
        return
    with _step_errors_lock:
        _step_errors.pop(run_id, None)
        _step_errors[run_id] = f"{type(error).__name__}: {error}"[:500]
        while len(_step_errors) > _KEPT_ERRORS:
            _step_errors.pop(next(iter(_step_errors)))


def last_step_error(run_id: str) -> str | None:
    """The last error a step of run ``run_id`` raised in this process (recording it included), if any."""
    return _step_errors.get(run_id)


class PostgresLiveness(Liveness):
    """Session advisory locks on one dedicated connection: PostgreSQL releases them when the process dies.

    If the connection breaks (the database restarted), the next use opens a new one and takes this
    executor's own lock again before it judges any other executor.
    """

    def __init__(self, executor_id: str, url: str) -> None:
        super().__init__(executor_id)
        self.url = url
        self._engine: Any = None
        self._connection: Any = None
        self._held = False
        self._lock = threading.Lock()

    @staticmethod
    def key(executor: str) -> int:
        digest = hashlib.sha256(f"labelloop-executor:{executor}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _run(self, sql: str, executor: str) -> Any:
        with self._lock:
            for attempt in range(2):
                try:
                    if self._connection is None:
                        self._connect()
                    return self._connection.execute(text(sql), {"key": self.key(executor)}).scalar()
                except DBAPIError:
                    self._drop_connection()
                    if attempt:
                        raise
            return None

    def _connect(self) -> None:
        if self._engine is None:
            self._engine = create_engine(with_driver(self.url), poolclass=NullPool, connect_args={
                "application_name": f"labelloop executor {self.executor_id}"[:63], "connect_timeout": 10,
                **PG_KEEPALIVES})
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        for statement in PG_SERVER_KEEPALIVES.split(";"):
            connection.execute(text(statement))
        if self._held:  # a new session after a broken one: take our own lock back first
            own = {"key": self.key(self.executor_id)}
            for _ in range(20):
                if connection.execute(text("SELECT pg_try_advisory_lock(:key)"), own).scalar():
                    break
                time.sleep(0.5)  # another process is looking at us right now
            else:
                log.error("could not take this executor's lock back after the database connection broke",
                          extra={"executor_id": self.executor_id})
        self._connection = connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.invalidate()
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = None

    def hold_own(self) -> None:
        if not self._run("SELECT pg_try_advisory_lock(:key)", self.executor_id):
            raise RuntimeError(f"executor id {self.executor_id!r} is in use by a running labelloop process; "
                               "give each process its own LABELLOOP_EXECUTOR_ID")
        self._held = True

    def keep_alive(self) -> None:
        self._run("SELECT CAST(:key AS bigint)", self.executor_id)  # a broken connection is replaced here

    def try_lock(self, other: str) -> bool:
        return bool(self._run("SELECT pg_try_advisory_lock(:key)", other))

    def unlock(self, other: str) -> None:
        self._run("SELECT pg_advisory_unlock(:key)", other)

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
            if self._engine is not None:
                self._engine.dispose()
            self._engine = None
            self._held = False


class FileLiveness(Liveness):
    """``flock`` on one file per executor beside the SQLite system database: one machine, many processes."""

    def __init__(self, executor_id: str, folder: Path) -> None:
        super().__init__(executor_id)
        self.folder = folder
        self._own: Any = None
        self._others: dict[str, Any] = {}

    def _path(self, executor: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._@-]", "_", executor)
        return self.folder / f"{safe}-{hashlib.sha256(executor.encode()).hexdigest()[:8]}.lock"

    def _try(self, executor: str) -> Any:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = self._path(executor).open("a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def hold_own(self) -> None:
        self._own = self._try(self.executor_id)
        if self._own is None:
            raise RuntimeError(f"executor id {self.executor_id!r} is in use by a running labelloop process; "
                               "give each process its own LABELLOOP_EXECUTOR_ID")

    def try_lock(self, other: str) -> bool:
        handle = self._try(other)
        if handle is None:
            return False
        self._others[other] = handle
        return True

    def unlock(self, other: str) -> None:
        handle = self._others.pop(other, None)
        if handle is not None:
            self._path(other).unlink(missing_ok=True)  # its runs are handed over: the file is done with
            handle.close()

    def close(self) -> None:
        if self._own is not None:
            self._path(self.executor_id).unlink(missing_ok=True)
            self._own.close()
        self._own = None


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def queue(name: str) -> Queue:
    """A declared queue."""
    return _queues[name]


def enqueue(queue_name: str, workflow: Callable[..., Any], *args: Any, workflow_id: str | None = None,
            wake: bool = False, **kwargs: Any) -> str:
    """Put a workflow run on a queue (once per ``workflow_id``) and return its run id. This process's worker takes
    it at once when the queue is one of ``WOKEN_QUEUES`` or ``wake`` is true, else at the queue's next poll."""
    if workflow_id is None:
        handle = queue(queue_name).enqueue(workflow, *args, **kwargs)
    else:
        with SetWorkflowID(workflow_id):
            handle = queue(queue_name).enqueue(workflow, *args, **kwargs)
    if wake or queue_name in WOKEN_QUEUES:  # the run is committed: this process's worker takes it now
        _wake(queue_name)
    return handle.get_workflow_id()


class StartedHere:
    """The runs this process started itself, without a queue (:func:`start_run`): how many are in flight, under a
    cap, and the ids of the latest ``kept`` (the stalled-run check judges them as it judges queued runs)."""

    def __init__(self, cap: int, kept: int = _KEPT_STARTED) -> None:
        self.cap = cap
        self._kept = kept
        self._lock = threading.Lock()
        self._in_flight = 0
        self._ids: dict[str, None] = {}

    def take(self, queued: int) -> bool:
        """Take a place for a run if fewer than ``cap`` runs are in flight here, ``queued`` (this process's runs
        dequeued from the same queue) counted with those started here."""
        with self._lock:
            if self._in_flight + queued >= self.cap:
                return False
            self._in_flight += 1
            return True

    def started(self, run_id: str) -> None:
        """Remember a run that took a place and started here."""
        with self._lock:
            self._ids.pop(run_id, None)
            self._ids[run_id] = None
            while len(self._ids) > self._kept:
                self._ids.pop(next(iter(self._ids)))

    def release(self, _done: object = None) -> None:
        """Give a run's place back (its execution ended, or it did not start here)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def in_flight(self) -> int:
        """Runs started here whose execution has not ended."""
        with self._lock:
            return self._in_flight

    def knows(self, run_id: str) -> bool:
        """Whether ``run_id`` is one of the latest runs started here."""
        with self._lock:
            return run_id in self._ids

    def forget_all(self) -> None:
        """Forget every run (the engine stopped: its runs are recovered by the next process, not judged here)."""
        with self._lock:
            self._in_flight = 0
            self._ids.clear()


# Object-event runs this process starts at once (uploads' batches) share the queue's concurrency: at most
# OBJECT_EVENTS_CONCURRENCY in flight here, counting the queue's runs this process took by polling.
_started_here = StartedHere(OBJECT_EVENTS_CONCURRENCY)


def takes_runs_of(queue_name: str) -> bool:
    """Whether this process takes runs from ``queue_name`` (``LABELLOOP_QUEUES``; a web-only process takes none)."""
    return _launched and (_listened is None or queue_name in _listened)


def start_run(queue_name: str, workflow: Callable[..., Any], *args: Any, workflow_id: str, wake: bool = False,
              **kwargs: Any) -> str:
    """Start a run of ``queue_name``'s kind here, now, without waiting for the queue's poll, when this process takes
    that queue's runs and fewer than its cap are in flight here; else queue it (:func:`enqueue`, ``wake`` passed on)
    for whichever process polls the queue. Returns the run id.

    The run's status is written (PENDING, this executor) before it runs, as a dequeued run's is: if the process
    stops, the run is recovered like any other (:class:`Liveness`), and its uploads' events name a run that exists.
    A poll costs several ms of CPU and a dequeued run some more (README Performance, item 34); a run started here
    has no queue in its record."""
    if not takes_runs_of(queue_name) or not _started_here.take(_queued_here(queue_name)):
        return enqueue(queue_name, workflow, *args, workflow_id=workflow_id, wake=wake, **kwargs)
    try:
        with SetWorkflowID(workflow_id):
            handle = DBOS.start_workflow(workflow, *args, **kwargs)
    except BaseException:
        _started_here.release()
        raise
    future = getattr(handle, "future", None)
    if future is None:  # the run existed already (its id was used): nothing started here
        _started_here.release()
    else:
        _started_here.started(workflow_id)
        future.add_done_callback(_started_here.release)
    return handle.get_workflow_id()


def _queued_here(queue_name: str) -> int:
    """This process's runs in flight that it took from ``queue_name`` by polling."""
    return _get_dbos_instance()._active_workflows_set.count_for_queue(queue_name)


def run_status(run_id: str) -> str | None:
    """A run's status (PENDING, ENQUEUED, SUCCESS, ERROR …), or None when there is no such run."""
    found = DBOS.get_workflow_status(run_id)
    return found.status if found is not None else None


STATUS_READ_CHUNK = 500  # run ids per query of run_statuses (SQLite's bound parameters are limited)


def run_statuses(run_ids: list[str]) -> dict[str, str]:
    """The status of each of ``run_ids`` that exists, by run id (one query per ``STATUS_READ_CHUNK`` ids)."""
    unique = list(dict.fromkeys(run_ids))
    found: dict[str, str] = {}
    for start in range(0, len(unique), STATUS_READ_CHUNK):
        runs = DBOS.list_workflows(workflow_ids=unique[start:start + STATUS_READ_CHUNK], load_input=False,
                                   load_output=False)
        found.update({run.workflow_id: run.status for run in runs})
    return found


def run_exists(run_id: str) -> bool:
    """Whether a run with this id was ever started."""
    return DBOS.get_workflow_status(run_id) is not None


def jsonable(value: Any) -> Any:
    """``value`` reduced to JSON types (datetimes and other objects become strings)."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return json.loads(json.dumps(value, default=str))


# A step that meets a transient error (see `transient`) is tried again after 0.5, 1, 2 and 4 s; one that
# still fails, or fails for another reason, fails its run with the reason (ERROR), which frees its queue.
STEP_RETRIES = {"retries_allowed": True, "max_attempts": 5, "interval_seconds": 0.5, "backoff_rate": 2.0}
# Storage client errors worth another try (botocore's names, matched by name: the engine imports no storage).
TRANSIENT_ERROR_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}
TRANSIENT_S3_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}
TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET,
                    errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE}


class StepFailed(Exception):
    """A step that met transient errors on every try; the message names the step and its last error."""


def transient(error: BaseException) -> bool:
    """Whether ``error`` may pass if the step is tried again shortly: a database that is locked, busy, out
    of pooled connections or whose connection dropped, or storage that timed out or asked to slow down.
    A full disk, a bad input or a bug is not (its run ends ERROR at once, with the reason)."""
    if isinstance(error, (OperationalError, InterfaceError, SQLAlchemyTimeoutError)):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if any(kind.__name__ in TRANSIENT_ERROR_NAMES for kind in type(error).__mro__):
        return True
    response = getattr(error, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code") in TRANSIENT_S3_CODES:
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def _log_retry(error: BaseException) -> bool:
    retry = transient(error)
    log.warning("step failed" + (", trying again" if retry else " for good"),
                extra={"error": repr(error)[:500], "retry": retry})
    return retry


def step(name: str | None = None, **options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A DBOS step that also records its input, so the run history shows input, output, error and timing.

    Transient errors are retried with backoff (``STEP_RETRIES``, ``transient``); ``options`` override."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)
        step_name = name or fn.__name__

        @DBOS.step(name=step_name, **{**STEP_RETRIES, "should_retry": _log_retry, **options})
        def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {"input": _bound(signature, args, kwargs), "output": fn(*args, **kwargs)}

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return recorded(*args, **kwargs)["output"]
            except DBOSMaxStepRetriesExceeded as exc:  # the run's error says what went wrong, not just "retries"
                last = exc.errors[-1] if exc.errors else None
                _remember_step_error(last or exc)
                raise StepFailed(f"step {step_name} failed {exc.max_retries} times, the last time with: "
                                 f"{str(last)[:500] or type(last).__name__}") from last
            except Exception as exc:  # e.g. recording the step's outcome failed: the stalled-run check reports it
                _remember_step_error(exc)
                raise

        STEPS[step_name] = call
        return call

    return wrap


def workflow(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A DBOS workflow named ``name`` (its runs are recorded under that name)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        registered = DBOS.workflow(name=name)(fn)
        WORKFLOWS[name] = registered
        return registered

    return wrap


def _bound(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = signature.bind(*args, **kwargs)
    return jsonable(dict(bound.arguments))


# ── schedules ────────────────────────────────────────────────────────────────


def cron_for_minutes(minutes: int) -> tuple[str, int]:
    """A six-field cron (seconds first) that fires every ``minutes``, and the period it really has.

    Cron counts from midnight UTC, so only periods that divide an hour or a day are exact; any other
    period is rounded to the nearest one that is, and the caller reports the period really used.
    """
    if minutes < 1:
        raise ValueError("a schedule needs at least one minute between runs")
    if minutes < 60:
        period = max(d for d in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30) if d <= minutes)
        return (f"0 */{period} * * * *" if period > 1 else "0 * * * * *"), period
    if minutes < 24 * 60:
        hours = min((1, 2, 3, 4, 6, 8, 12), key=lambda h: (abs(h * 60 - minutes), h))
        return (f"0 0 */{hours} * * *" if hours > 1 else "0 0 * * * *"), hours * 60
    days = max(1, min(28, round(minutes / 1440)))
    return (f"0 0 0 */{days} * *" if days > 1 else "0 0 0 * * *"), days * 1440


def apply_schedule(name: str, workflow: Callable[..., Any], minutes: int, enabled: bool,
                   queue_name: str) -> dict[str, Any]:
    """Create, re-time, pause or resume schedule ``name`` so that it matches the parameters.

    Called inside a workflow, each DBOS schedule operation is recorded as a step of that run.
    """
    cron, period = cron_for_minutes(minutes)
    current = DBOS.get_schedule(name)
    actions: list[str] = []
    if current is not None and current["schedule"] != cron:
        DBOS.delete_schedule(name)
        actions.append(f"re-timed from {current['schedule']!r}")
        current = None
    if current is None:
        DBOS.create_schedule(schedule_name=name, workflow_fn=workflow, schedule=cron, queue_name=queue_name)
        actions.append(f"created with cron {cron!r}")
        status = "ACTIVE"
    else:
        status = current["status"]
    if enabled and status != "ACTIVE":
        DBOS.resume_schedule(name)
        actions.append("resumed")
    elif not enabled and status == "ACTIVE":
        DBOS.pause_schedule(name)
        actions.append("paused")
    return {"schedule": name, "cron": cron, "every_minutes": period, "requested_minutes": minutes,
            "enabled": enabled, "actions": actions or ["unchanged"]}


def schedule_status(name: str) -> dict[str, Any] | None:
    """A schedule's cron, status and last firing, or ``None``."""
    found = DBOS.get_schedule(name)
    if found is None:
        return None
    return {"name": name, "cron": found["schedule"], "status": found["status"],
            "last_fired_at": found["last_fired_at"], "workflow": found["workflow_name"],
            "next_run_at": next_fire_time(found["schedule"]) if found["status"] == "ACTIVE" else None}


def next_fire_time(cron: str) -> str:
    """When a six-field cron fires next (UTC, ISO 8601)."""
    return croniter(cron, datetime.now(UTC), second_at_beginning=True).get_next(datetime).isoformat()


def list_schedules() -> list[dict[str, Any]]:
    """Every labelloop schedule with its cron, status and next firing."""
    return [schedule_status(found["schedule_name"]) for found in DBOS.list_schedules()]
