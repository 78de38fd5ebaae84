"""Human loop routes: list, answer (first answer wins), stop; the task template."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel

from labelloop.loop import actions
from labelloop.review import service
from labelloop.review.models import HumanLoopStatus
from labelloop.web.dependencies import SessionDep, require
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1", tags=["human loops"])
Reviewer = Depends(require(Role.OPERATOR, Role.WORKER))
Operator = Depends(require(Role.OPERATOR))


class Answer(BaseModel):
    """Body of ``POST /human-loops/{name}/answer``."""

    label: str


class TemplateUpdate(BaseModel):
    """Body of ``PUT /task-template``: only the fields given change."""

    extra_labels: list[str] | None = None
    short_instructions: str | None = None
    full_instructions: str | None = None
    loop_lifetime_hours: int | None = None


@router.get("/human-loops")
def list_loops(session: SessionDep, status_filter: str | None = Query(None, alias="status"),
               source: str | None = None, limit: int = Query(500, ge=1, le=5000),
               offset: int = Query(0, ge=0, le=1_000_000_000),
               _: User = Reviewer) -> list[dict[str, Any]]:
    """Human loops, newest first: name, source ("Detection" or "Human Sampling"), object_key, status."""
    allowed = (HumanLoopStatus.IN_PROGRESS, HumanLoopStatus.COMPLETED, HumanLoopStatus.STOPPED,
               HumanLoopStatus.FAILED)
    if status_filter is not None and status_filter not in allowed:
        raise HTTPException(422, f"status must be one of {', '.join(allowed)}")
    return [service.as_dict(loop) for loop in service.list_loops(status=status_filter, source=source, limit=limit,
            offset=offset, session=session)]


@router.get("/human-loops/{name}")
def read_loop(name: str, session: SessionDep, _: User = Reviewer) -> dict[str, Any]:
    """One human loop."""
    return service.as_dict(service.get_loop(name, session=session))


@router.post("/human-loops/{name}/answer")
def answer_loop(name: str, body: Answer, user: User = Reviewer) -> dict[str, Any]:
    """A reviewer's answer: a label, or "None of the Above". The first answer wins; a second gets 409."""
    try:
        return actions.answer_loop(name, body.label, user.username)
    except service.AlreadyAnswered as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.post("/human-loops/{name}/stop")
def stop_loop(name: str, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Stop an open loop."""
    try:
        return service.as_dict(service.stop_loop(name, user.username, session=session))
    except service.AlreadyAnswered as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.get("/task-template")
def read_template(session: SessionDep, _: User = Reviewer) -> dict[str, Any]:
    """Label choices (training labels + extra labels), None of the Above, and the instructions."""
    return service.describe_template(session=session)


@router.put("/task-template")
def change_template(body: TemplateUpdate, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Change the extra labels, the instructions or how long a loop stays open."""
    service.update_template(user.username, **body.model_dump(exclude_none=True), session=session)
    return service.describe_template(session=session)
