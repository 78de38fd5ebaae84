"""Run history routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from labelloop import engine
from labelloop.loop import machines
from labelloop.runs import service
from labelloop.web.dependencies import require
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])
Operator = Depends(require(Role.OPERATOR))


@router.get("")
def list_runs(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000_000),
              branch: str | None = None, status: str | None = None, _: User = Operator) -> list[dict[str, Any]]:
    """Workflow runs, newest first, with status, times, input and output."""
    try:
        found = machines.branch_filter(branch) if branch else None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return [machines.with_branch(run) for run in service.list_runs(
        limit=limit, offset=offset, workflows=list(found.workflows) if found else None,
        id_prefixes=list(found.id_prefixes) if found and found.id_prefixes else None, status=status)]


@router.get("/{run_id}")
def get_run(run_id: str, _: User = Operator) -> dict[str, Any]:
    """One run with each step's name, input, output, error and timing; 404 saying whether runs are pruned."""
    try:
        return machines.with_branch(service.get_run(run_id))
    except service.RunNotFound:
        raise HTTPException(404, service.missing_run_reason(run_id)) from None


schedules_router = APIRouter(prefix="/api/v1/schedules", tags=["runs"])


@schedules_router.get("")
def list_schedules(_: User = Operator) -> list[dict[str, Any]]:
    """The training and sampling schedules: cron, ACTIVE or PAUSED, last and next firing."""
    return engine.list_schedules()
