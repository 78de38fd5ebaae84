"""Parameter Store routes: read, change (validated, versioned, applied by a run) and history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from labelloop.parameters import flows, service
from labelloop.parameters.models import ParameterChangeRead, ParameterRead, ParameterUpdate
from labelloop.workforce.models import Role, User
from labelloop.web.dependencies import SessionDep, require

router = APIRouter(prefix="/api/v1/parameters", tags=["parameters"])
Operator = Depends(require(Role.OPERATOR))


@router.get("", response_model=list[ParameterRead])
def list_parameters(session: SessionDep, _: User = Operator) -> list[dict[str, Any]]:
    """Every parameter with its value, type, allowed range and description."""
    return [service.describe(row) for row in service.list_all(session)]


@router.get("/{name}", response_model=ParameterRead)
def read_parameter(name: str, session: SessionDep, _: User = Operator) -> dict[str, Any]:
    """One parameter."""
    return service.describe(service.get(session, name))


@router.put("/{name}")
def change_parameter(name: str, body: ParameterUpdate, session: SessionDep,
                     user: User = Operator) -> dict[str, Any]:
    """Change a parameter. A bad value gets 422 with what is allowed; an accepted one starts a run."""
    change = service.change(session, name, body.value, changed_by=user.username)
    row = service.get(session, name)
    if change is None:
        return {"parameter": service.describe(row), "changed": False, "run_id": None}
    session.commit()
    run_id = flows.start_change_run({"name": change.name, "version": change.version,
                                     "old_value": change.old_value, "new_value": change.new_value,
                                     "changed_by": change.changed_by})
    return {"parameter": service.describe(row), "changed": True, "run_id": run_id}


@router.get("/{name}/history", response_model=list[ParameterChangeRead])
def parameter_history(name: str, session: SessionDep, _: User = Operator) -> list[Any]:
    """Every change of one parameter, newest first."""
    if name not in service.DEFINITIONS:
        raise HTTPException(404, f"no parameter named {name!r}")
    return [_history_entry(change) for change in service.history(session, name)]


def _history_entry(change: Any) -> dict[str, Any]:
    entry = {k: getattr(change, k) for k in ("name", "version", "old_value", "new_value", "changed_by",
                                             "changed_at")}
    # Changes made by the system itself (defaults, For-System-Use-Only) start no run.
    entry["run_id"] = None if change.changed_by == "system" else f"parameter-{change.name}-v{change.version}"
    return entry
