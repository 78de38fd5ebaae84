"""The durable workflow engine (DBOS Transact): start-up, queues, recorded steps and schedules."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from dbos import DBOS, DBOSConfig, Queue, SetWorkflowID

from labelloop.config import Settings

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

OBJECT_EVENTS_QUEUE = "object-events"
TRAINING_QUEUE = "training"
PARAMETERS_QUEUE = "parameters"
SAMPLING_QUEUE = "sampling"
APP_NAME = "labelloop"

_launched = False
_queues: dict[str, Queue] = {}


def start(settings: Settings) -> None:
    """Launch DBOS on the configured system database and declare labelloop's queues.

    Every module that defines workflows must be imported first, so a restarted process can recover
    the runs that were in flight when the last one stopped.
    """
    global _launched
    import labelloop.flows  # noqa: F401  (registers every workflow)

    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": settings.engine_database_url,
        "scheduler_polling_interval_sec": settings.scheduler_polling_seconds,
        "log_level": settings.log_level,
    }
    DBOS(config=config)
    DBOS.launch()
    poll = settings.queue_polling_seconds
    _queues[OBJECT_EVENTS_QUEUE] = DBOS.register_queue(OBJECT_EVENTS_QUEUE, worker_concurrency=4,
                                                       polling_interval_sec=poll)
    # One training at a time across every worker process.
    _queues[TRAINING_QUEUE] = DBOS.register_queue(TRAINING_QUEUE, global_concurrency=1, polling_interval_sec=poll)
    # Parameter changes are applied one at a time, in the order they were made.
    _queues[PARAMETERS_QUEUE] = DBOS.register_queue(PARAMETERS_QUEUE, global_concurrency=1,
                                                    polling_interval_sec=poll)
    _queues[SAMPLING_QUEUE] = DBOS.register_queue(SAMPLING_QUEUE, global_concurrency=1, polling_interval_sec=poll)
    _launched = True
    log.info("workflow engine started", extra={"system_database": _safe_url(settings.engine_database_url)})


def stop() -> None:
    """Shut DBOS down (keeps the workflow registry, so it can be started again in the same process)."""
    global _launched
    if _launched:
        DBOS.destroy(destroy_registry=False)
    _launched = False
    _queues.clear()


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def queue(name: str) -> Queue:
    """A declared queue."""
    return _queues[name]


def enqueue(queue_name: str, workflow: Callable[..., Any], *args: Any, workflow_id: str | None = None,
            **kwargs: Any) -> str:
    """Put a workflow run on a queue (once per ``workflow_id``) and return its run id."""
    if workflow_id is None:
        handle = queue(queue_name).enqueue(workflow, *args, **kwargs)
    else:
        with SetWorkflowID(workflow_id):
            handle = queue(queue_name).enqueue(workflow, *args, **kwargs)
    return handle.get_workflow_id()


def jsonable(value: Any) -> Any:
    """``value`` reduced to JSON types (datetimes and other objects become strings)."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return json.loads(json.dumps(value, default=str))


def step(name: str | None = None, **options: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A DBOS step that also records its input, so the run history shows input, output, error and timing."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @DBOS.step(name=name or fn.__name__, **options)
        def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {"input": _bound(signature, args, kwargs), "output": fn(*args, **kwargs)}

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return recorded(*args, **kwargs)["output"]

        return call

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
    from datetime import UTC, datetime

    from croniter import croniter

    return croniter(cron, datetime.now(UTC), second_at_beginning=True).get_next(datetime).isoformat()


def list_schedules() -> list[dict[str, Any]]:
    """Every labelloop schedule with its cron, status and next firing."""
    return [schedule_status(found["schedule_name"]) for found in DBOS.list_schedules()]
