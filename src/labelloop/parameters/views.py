"""Parameter Store routes: read, change (validated, versioned, applied by a run) and history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from labelloop.loop import actions, routing
from labelloop.parameters import service
from labelloop.parameters.models import ParameterChangeRead, ParameterRead, ParameterUpdate
from labelloop.web.dependencies import SessionDep, require
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1/parameters", tags=["parameters"])
Operator = Depends(require(Role.OPERATOR))


@router.get("", response_model=list[ParameterRead])
def list_parameters(session: SessionDep, _: User = Operator) -> list[dict[str, Any]]:
    """Every parameter with its value, type, allowed range and description."""
    return [service.describe(row) for row in service.list_all(session=session)]


@router.get("/{name}", response_model=ParameterRead)
def read_parameter(name: str, session: SessionDep, _: User = Operator) -> dict[str, Any]:
    """One parameter."""
    return service.describe(service.get(name, session=session))


@router.put("/{name}")
def change_parameter(name: str, body: ParameterUpdate, session: SessionDep,
                     user: User = Operator) -> dict[str, Any]:
    """Change a parameter. A bad value gets 422 with what is allowed; an accepted one starts a run."""
    applied = actions.change_parameter(name, body.value, actor=user.username, session=session)
    return {"parameter": service.describe(service.get(name, session=session)), "changed": applied["changed"],
            "run_id": applied["run_id"]}


@router.get("/{name}/history", response_model=list[ParameterChangeRead])
def parameter_history(name: str, session: SessionDep, _: User = Operator) -> list[Any]:
    """Every change of one parameter, newest first."""
    if name not in service.DEFINITIONS:
        raise HTTPException(404, f"no parameter named {name!r}")
    return [history_entry(change) for change in service.history(name, session=session)]


def history_entry(change: Any) -> dict[str, Any]:
    """One change as the history shows it, with the run that applied it."""
    entry = {k: getattr(change, k) for k in ("name", "version", "old_value", "new_value", "changed_by",
                                             "changed_at")}
    # Changes made by the system itself (defaults, For-System-Use-Only) start no run.
    entry["run_id"] = None if change.changed_by == "system" else routing.parameter_change_run_id(change.name,
                                                                                                 change.version)
    return entry
