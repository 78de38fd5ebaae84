"""Human loop routes: list, answer (first answer wins), undo, correct, stop, Label Audit; the task template."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import Response
from pydantic import BaseModel

from labelloop import db
from labelloop.loop import actions
from labelloop.review import gold, service
from labelloop.review.models import HumanLoopStatus
from labelloop.web.dependencies import SessionDep, require
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1", tags=["human loops"])
Reviewer = Depends(require(Role.OPERATOR, Role.WORKER))
Operator = Depends(require(Role.OPERATOR))
Admin = Depends(require(Role.ADMIN))
METRIC_COLUMNS = ["reviewer", "day", "answered", "median_seconds", "decided", "agreement", "audits",
                  "audit_agreement", "gold_answers", "gold_accuracy", "paused"]


class Answer(BaseModel):
    """Body of ``POST /human-loops/{name}/answer``."""

    label: str


class TemplateUpdate(BaseModel):
    """Body of ``PUT /task-template``: only the fields given change."""

    extra_labels: list[str] | None = None
    short_instructions: str | None = None
    full_instructions: str | None = None
    loop_lifetime_hours: int | None = None
    task_time_limit_seconds: int | None = None
    reviewers_per_task: dict[str, int] | None = None
    min_agreement: float | None = None


class GoldTaskIn(BaseModel):
    """Body of ``POST /gold-tasks``: a stored image and its known label (default: its label folder's)."""

    object_key: str
    label: str | None = None


class PauseBelow(BaseModel):
    """Body of ``POST /reviewers/pause-below``: pause every reviewer under ``accuracy`` (0-1) on gold tasks with
    at least ``min_gold_answers`` gold answers."""

    accuracy: float
    min_gold_answers: int = 20


class LabelAudit(BaseModel):
    """Body of ``POST /human-loops/label-audit``: training image keys to send back to review."""

    keys: list[str]


def _reviewer_view(user: User) -> bool:
    """Workers see what the portal shows: no model guess on audit loops."""
    return user.role == Role.WORKER


@router.get("/human-loops")
def list_loops(session: SessionDep, status_filter: str | None = Query(None, alias="status"),
               source: str | None = None, limit: int = Query(500, ge=1, le=5000),
               offset: int = Query(0, ge=0, le=1_000_000_000),
               user: User = Reviewer) -> list[dict[str, Any]]:
    """Human loops, newest first: name, source ("Detection", "Human Sampling" or "Label Audit"), object_key,
    status; for workers without the model's guess on audit loops."""
    allowed = (HumanLoopStatus.IN_PROGRESS, HumanLoopStatus.COMPLETED, HumanLoopStatus.STOPPED,
               HumanLoopStatus.FAILED)
    if status_filter is not None and status_filter not in allowed:
        raise HTTPException(422, f"status must be one of {', '.join(allowed)}")
    reviewer = _reviewer_view(user)
    loops = service.list_loops(status=status_filter, source=source, limit=limit, offset=offset, session=session,
                               gold_as_audits=reviewer)
    return [service.as_dict(loop, reviewer_view=reviewer) for loop in loops]


@router.get("/human-loops/{name}")
def read_loop(name: str, session: SessionDep, user: User = Reviewer) -> dict[str, Any]:
    """One human loop."""
    return service.as_dict(service.get_loop(name, session=session), reviewer_view=_reviewer_view(user))


@router.post("/human-loops/{name}/answer")
def answer_loop(name: str, body: Answer, user: User = Reviewer) -> dict[str, Any]:
    """A reviewer's answer: a label, or "None of the Above". The first answer wins; a second gets 409, as does
    an answer to a task another reviewer holds. The same answer sent again (a retry) is the same answer."""
    try:
        loop = actions.answer_loop(name, body.label, user.username)
    except (service.AlreadyAnswered, service.LeaseNotHeld) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except service.ReviewerPaused as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    return service.for_reviewer(loop) if _reviewer_view(user) else loop


@router.post("/human-loops/undo")
def undo_answer(session: SessionDep, user: User = Reviewer) -> dict[str, Any]:
    """Take back your last answer while it waits out its undo window (422 once it is being applied)."""
    return actions.undo_answer(user.username, session=session)


@router.post("/human-loops/label-audit", status_code=status.HTTP_201_CREATED)
def open_label_audits(body: LabelAudit, session: SessionDep, user: User = Operator) -> list[dict[str, Any]]:
    """Send training images back to review as "Label Audit" loops; the answer moves the image."""
    return actions.open_label_audits(body.keys, user.username, session=session)


@router.post("/human-loops/{name}/correct")
def correct_answer(name: str, body: Answer, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Correct an applied answer: the training copy moves (or goes, for None of the Above); never a second."""
    return actions.correct_answer(name, body.label, user.username, session=session)


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


@router.get("/reviewers/metrics")
def reviewer_metrics(session: SessionDep, days: int = Query(30, ge=1, le=3660),
                     _: User = Operator) -> list[dict[str, Any]]:
    """Per reviewer, overall and per day, over the last ``days``: tasks answered, median seconds per task,
    agreement with the final label and on Human Sampling audits, paused or not."""
    return service.reviewer_metrics(since=db.utcnow() - timedelta(days=days), session=session)


@router.get("/reviewers/metrics.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def reviewer_metrics_csv(session: SessionDep, days: int = Query(30, ge=1, le=3660),
                         _: User = Operator) -> Response:
    """The same metrics as CSV, one row per reviewer and day."""
    out = io.StringIO()
    writer = csv.DictWriter(out, METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for reviewer in service.reviewer_metrics(since=db.utcnow() - timedelta(days=days), session=session):
        for day in reviewer["days"]:
            writer.writerow({**day, "reviewer": reviewer["reviewer"], "paused": reviewer["paused"]})
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="reviewer-metrics.csv"'})


@router.post("/reviewers/{username}/pause")
def pause_reviewer(username: str, session: SessionDep, user: User = Admin) -> dict[str, Any]:
    """Pause a reviewer from review: no tasks, answers refused, the held task goes back to the queue."""
    return {"paused": service.set_paused(username, True, user.username, session=session)}


@router.post("/reviewers/{username}/resume")
def resume_reviewer(username: str, session: SessionDep, user: User = Admin) -> dict[str, Any]:
    """Let a paused reviewer review again."""
    return {"paused": service.set_paused(username, False, user.username, session=session)}


@router.get("/gold-tasks")
def list_gold_tasks(session: SessionDep, _: User = Operator) -> list[dict[str, Any]]:
    """The gold tasks: object key, known label, how often answered and answered right."""
    return gold.list_gold(session=session)


@router.post("/gold-tasks", status_code=status.HTTP_201_CREATED)
def add_gold_task(body: GoldTaskIn, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Mark a stored image as a gold task with its known label (422 says why it cannot be)."""
    row = gold.add_gold(body.object_key, body.label, user.username, session=session)
    return {"object_key": row.object_key, "label": row.label}


@router.delete("/gold-tasks/{key:path}", status_code=status.HTTP_204_NO_CONTENT)
def remove_gold_task(key: str, session: SessionDep, user: User = Operator) -> Response:
    """Stop serving a gold task (its answers keep their score)."""
    gold.remove_gold(key, user.username, session=session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/reviewers/pause-below")
def pause_below(body: PauseBelow, session: SessionDep, user: User = Admin) -> dict[str, Any]:
    """Pause every reviewer whose gold accuracy is below ``accuracy`` with at least ``min_gold_answers``."""
    return {"paused": gold.pause_below(body.accuracy, body.min_gold_answers, user.username, session=session),
            "paused_reviewers": service.template(session=session).paused_reviewers}
