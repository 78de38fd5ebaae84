"""The review portal: *Start working*, one leased task at a time, answer, next task."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from labelloop import db
from labelloop.config import get_settings
from labelloop.loop import actions
from labelloop.review import gold, service
from labelloop.web import plots
from labelloop.web.dependencies import SessionDep
from labelloop.web.pages import Form, PageDenied, Visitor, page_role, render
from labelloop.workforce.models import Role

router = APIRouter(include_in_schema=False)
Reviewer = Annotated[Visitor, Depends(page_role(Role.WORKER, Role.OPERATOR))]
MESSAGES = {
    "taken": "That task went to another reviewer after your lease ran out, so your answer was not used.",
    "closed": "That task was closed (answered, stopped or expired) before your answer arrived.",
    "too-late": "That answer can no longer be undone: it is being applied (or you have none to undo). "
                "An operator can still correct it.",
}


@router.get("/review", response_class=HTMLResponse)
def portal(request: Request, session: SessionDep, visitor: Reviewer) -> Response:
    return render(request, "review/portal.html", {
        "left": service.open_task_count(session=session, worker=visitor.user.username)})


@router.get("/review/work", response_class=HTMLResponse)
def work(request: Request, session: SessionDep, visitor: Reviewer, saved: str | None = None,
         problem: str | None = None, undone: str | None = None) -> Response:
    """Show the task the reviewer holds (a GET never leases: *Start working* and answers POST for that)."""
    loop = service.held_by(visitor.user.username, session=session)
    context = {"saved": saved, "undone": undone, "problem": MESSAGES.get(problem or ""),
               "left": service.open_task_count(session=session, worker=visitor.user.username),
               "undo_seconds": get_settings().undo_seconds}
    if loop is None:
        paused = visitor.user.username in service.template(session=session).paused_reviewers
        return render(request, "review/empty.html", {**context, "paused": paused})
    task = service.task_view(loop, session=session)
    return render(request, "review/task.html", {**context, "task": task,
                                               "image_url": f"/review/tasks/{quote(loop.name)}/image"})


@router.post("/review/work")
def take_task(session: SessionDep, visitor: Reviewer, _form: Form) -> Response:
    """Lease the next task (or keep the one held) and show it."""
    gold.lease_next(visitor.user.username, session=session)
    session.commit()
    return RedirectResponse("/review/work", status_code=303)


@router.post("/review/tasks/{name}")
def answer(name: str, session: SessionDep, visitor: Reviewer, form: Form) -> Response:
    """Answer the held task, then lease the next one."""
    label = form.get("label")
    if not isinstance(label, str) or not label:
        raise PageDenied(422, "Choose a label or None of the Above.")
    try:
        loop = actions.answer_loop(name, label, visitor.user.username)
    except service.LeaseNotHeld:
        return RedirectResponse("/review/work?problem=taken", status_code=303)
    except service.AlreadyAnswered:
        return RedirectResponse("/review/work?problem=closed", status_code=303)
    except service.LoopNotFound:
        raise PageDenied(404, "There is no such task.") from None
    except service.ReviewError as exc:
        raise PageDenied(422, str(exc)) from None
    gold.lease_next(visitor.user.username, session=session)
    session.commit()
    shown = next(a["label"] for a in loop["answers"] if a["worker"] == visitor.user.username)  # as recorded
    return RedirectResponse(f"/review/work?saved={quote(shown)}", status_code=303)


@router.post("/review/undo")
def undo(session: SessionDep, visitor: Reviewer, _form: Form) -> Response:
    """Take back the last answer (key ``u``): its task comes back to this reviewer."""
    try:
        loop = actions.undo_answer(visitor.user.username, session=session)
    except service.ReviewError:
        return RedirectResponse("/review/work?problem=too-late", status_code=303)
    return RedirectResponse(f"/review/work?undone={quote(loop['name'])}", status_code=303)


Watcher = Annotated[Visitor, Depends(page_role(Role.OPERATOR))]
Admin = Annotated[Visitor, Depends(page_role(Role.ADMIN))]
LOW_AGREEMENT = 0.8  # rows below it are marked, so an admin sees whom to pause


@router.get("/reviewers", response_class=HTMLResponse)
def reviewers(request: Request, session: SessionDep, visitor: Watcher) -> Response:
    """Reviewer metrics: a chart of agreement, a table per reviewer (and per day), pause or resume."""
    metrics = service.reviewer_metrics(since=db.utcnow() - timedelta(days=30), session=session)
    chart = plots.bar_chart([(m["reviewer"], 100 * m["agreement"]) for m in metrics if m["agreement"] is not None],
                            label="Agreement with the final label, last 30 days", unit=" %",
                            value_format="{:.0f}")
    gold_chart = plots.bar_chart([(m["reviewer"], 100 * m["gold_accuracy"]) for m in metrics
                                  if m["gold_accuracy"] is not None],
                                 label="Accuracy on gold tasks, last 30 days", unit=" %", value_format="{:.0f}")
    return render(request, "review/reviewers.html", {
        "metrics": metrics, "chart": chart, "gold_chart": gold_chart, "low": LOW_AGREEMENT,
        "gold_tasks": gold.list_gold(session=session), "label_choices": service.label_choices(session=session),
        "can_pause": visitor.user.role == Role.ADMIN})


@router.post("/reviewers/gold")
def add_gold(session: SessionDep, visitor: Watcher, form: Form) -> Response:
    """Mark a stored image as a gold task with its known label."""
    key, label = form.get("object_key"), form.get("label")
    try:
        gold.add_gold(str(key or "").strip(), str(label or "") or None, visitor.user.username, session=session)
    except service.ReviewError as exc:
        raise PageDenied(422, str(exc)) from None
    return RedirectResponse("/reviewers#gold-tasks", status_code=303)


@router.post("/reviewers/gold/remove")
def remove_gold(session: SessionDep, visitor: Watcher, form: Form) -> Response:
    """Stop serving a gold task."""
    try:
        gold.remove_gold(str(form.get("object_key") or ""), visitor.user.username, session=session)
    except service.ReviewError as exc:
        raise PageDenied(422, str(exc)) from None
    return RedirectResponse("/reviewers#gold-tasks", status_code=303)


@router.post("/reviewers/pause-below")
def pause_below(session: SessionDep, visitor: Admin, form: Form) -> Response:
    """Pause every reviewer under the given gold accuracy (percent) with enough gold answers, in one click."""
    try:
        accuracy, answers = float(str(form.get("accuracy"))), int(str(form.get("min_gold_answers")))
        gold.pause_below(accuracy / 100, answers, visitor.user.username, session=session)
    except ValueError as exc:  # ReviewError too
        raise PageDenied(422, f"give a gold accuracy in percent and a number of gold answers: {exc}") from None
    return RedirectResponse("/reviewers", status_code=303)


@router.post("/reviewers/{username}/pause")
def pause(username: str, session: SessionDep, visitor: Admin, form: Form) -> Response:
    """Pause (or, with ``resume``, resume) a reviewer in one click."""
    service.set_paused(username, form.get("resume") is None, visitor.user.username, session=session)
    return RedirectResponse("/reviewers", status_code=303)


@router.get("/review/tasks/{name}/image")
def image(name: str, visitor: Reviewer) -> Response:
    """The task's image, only for the worker who holds its lease."""
    try:
        data, media_type = service.task_image(name, visitor.user.username)
    except (service.LeaseNotHeld, service.LoopNotFound):
        raise PageDenied(403, "You do not hold this task.") from None
    except service.ImageChanged as exc:
        raise PageDenied(409, f"{exc}. Skip this task: stop working and start again.") from None
    return Response(data, media_type=media_type, headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store",
        "Content-Security-Policy": "default-src 'none'; sandbox", "Content-Disposition": "inline"})


@router.post("/review/stop")
def stop_working(session: SessionDep, visitor: Reviewer, _form: Form) -> Response:
    """Give the held task back so another reviewer can take it."""
    service.release_lease(visitor.user.username, session=session)
    return RedirectResponse("/review", status_code=303)
