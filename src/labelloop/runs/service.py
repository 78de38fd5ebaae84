"""Run history read from the workflow engine's own records (DBOS), shaped for the API and pages."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dbos import DBOS

from labelloop.config import get_settings
from labelloop.engine import jsonable

log = logging.getLogger(__name__)

class RunNotFound(KeyError):
    """No run has this id."""


def missing_run_reason(run_id: str) -> str:
    """Why a run is not in the records, as a page or an API answer says it: a wrong link, or pruned by run
    retention (which one cannot be told: a pruned run leaves nothing behind)."""
    days = get_settings().run_retention_days
    if days == 0:
        return f"There is no run {run_id!r}."
    return (f"There is no run {run_id!r} in the run records. Finished runs are pruned {days} days after they "
            f"started (LABELLOOP_RUN_RETENTION_DAYS={days}), so a link to an older run leads here; the runs "
            "that trained a model version are kept as long as the version.")


def _time(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()


def _summary(status: Any) -> dict[str, Any]:
    return {
        "id": status.workflow_id,
        "name": status.name,
        "status": status.status,
        "created_at": _time(status.created_at),
        "updated_at": _time(status.updated_at),
        "completed_at": _time(status.completed_at),
        "queue": status.queue_name,
        "schedule": status.schedule_name,
        "executor": status.executor_id,
        "parent_run_id": status.parent_workflow_id,
        "input": jsonable(status.input) if status.input is not None else None,
        "output": jsonable(status.output) if status.output is not None else None,
        "error": jsonable(status.error) if status.error is not None else None,
    }


def list_runs(*, limit: int = 50, offset: int = 0, workflows: list[str] | None = None,
              id_prefixes: list[str] | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, optionally only those of some workflows, run id prefixes or one status."""
    found = DBOS.list_workflows(sort_desc=True, limit=limit, offset=offset, name=workflows,
                                workflow_id_prefix=id_prefixes, status=status.upper() if status else None)
    return [_summary(run) for run in found]


def _step(step: dict[str, Any]) -> dict[str, Any]:
    output = step["output"]
    recorded_input = None
    # labelloop's own steps record {"input", "output"}; DBOS's built-in steps record the output only.
    if isinstance(output, dict) and set(output) == {"input", "output"}:
        recorded_input, output = output["input"], output["output"]
    started, completed = step["started_at_epoch_ms"], step["completed_at_epoch_ms"]
    return {
        "step_id": step["function_id"],
        "name": step["function_name"],
        "input": jsonable(recorded_input),
        "output": jsonable(output),
        "error": jsonable(step["error"]) if step["error"] is not None else None,
        "started_at": _time(started),
        "completed_at": _time(completed),
        "duration_ms": completed - started if started is not None and completed is not None else None,
        "child_run_id": step["child_workflow_id"],
    }


def get_run(run_id: str) -> dict[str, Any]:
    """One run with each of its steps."""
    found = DBOS.list_workflows(workflow_ids=[run_id])
    if not found:
        raise RunNotFound(run_id)
    run = _summary(found[0])
    run["steps"] = [_step(step) for step in DBOS.list_workflow_steps(run_id)]
    return run


def existing_runs(run_ids: list[str | None]) -> set[str]:
    """Which of ``run_ids`` are recorded runs (e.g. to link only to runs that exist)."""
    wanted = sorted({run_id for run_id in run_ids if run_id})
    if not wanted:
        return set()
    found = DBOS.list_workflows(workflow_ids=wanted, load_input=False, load_output=False)
    return {status.workflow_id for status in found}


def forget_idle_runs(workflow: str, keep: str, idle: Callable[[dict[str, Any]], bool], scan: int = 100) -> int:
    """Delete the finished runs of ``workflow`` (among its newest ``scan``) whose output ``idle`` says did
    nothing, except run ``keep``: a periodic sweep that found nothing leaves no trail in the run list."""
    found = DBOS.list_workflows(name=[workflow], status="SUCCESS", sort_desc=True, limit=scan, load_input=False)
    forgotten = [run.workflow_id for run in found
                 if run.workflow_id != keep and isinstance(run.output, dict) and idle(run.output)]
    if forgotten:
        DBOS.delete_workflows(forgotten)
        log.debug("runs that did nothing deleted", extra={"workflow": workflow, "runs": len(forgotten)})
    return len(forgotten)
