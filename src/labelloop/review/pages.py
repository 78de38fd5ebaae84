"""The review portal: *Start working*, one leased task at a time, answer, next task."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from labelloop.loop import actions
from labelloop.review import service
from labelloop.review.models import NONE_OF_THE_ABOVE
from labelloop.web.dependencies import SessionDep
from labelloop.web.pages import Form, PageDenied, Visitor, page_role, render
from labelloop.workforce.models import Role

router = APIRouter(include_in_schema=False)
Reviewer = Annotated[Visitor, Depends(page_role(Role.WORKER, Role.OPERATOR))]
MESSAGES = {
    "taken": "That task went to another reviewer after your lease ran out, so your answer was not used.",
    "closed": "That task was closed (answered, stopped or expired) before your answer arrived.",
}


@router.get("/review", response_class=HTMLResponse)
def portal(request: Request, session: SessionDep, visitor: Reviewer) -> Response:
    return render(request, "review/portal.html", {"left": service.open_task_count(session=session)})


@router.get("/review/work", response_class=HTMLResponse)
def work(request: Request, session: SessionDep, visitor: Reviewer, saved: str | None = None,
         problem: str | None = None) -> Response:
    """Lease the next task (or the one already held) and show it; after an answer the browser comes back here."""
    loop = service.lease_next(visitor.user.username, session=session)
    context = {"saved": saved, "problem": MESSAGES.get(problem or ""), "left": service.open_task_count(session=session)}
    if loop is None:
        return render(request, "review/empty.html", context)
    task = service.task_view(loop, session=session)
    return render(request, "review/task.html", {**context, "task": task,
                                               "image_url": f"/review/tasks/{quote(loop.name)}/image"})


@router.post("/review/tasks/{name}")
def answer(name: str, visitor: Reviewer, form: Form) -> Response:
    label = form.get("label")
    if not isinstance(label, str) or not label:
        raise PageDenied(422, "Choose a label or None of the Above.")
    try:
        loop = actions.answer_loop(name, label, visitor.user.username, held_lease=True)
    except service.LeaseNotHeld:
        return RedirectResponse("/review/work?problem=taken", status_code=303)
    except service.AlreadyAnswered:
        return RedirectResponse("/review/work?problem=closed", status_code=303)
    except service.LoopNotFound:
        raise PageDenied(404, "There is no such task.") from None
    except service.ReviewError as exc:
        raise PageDenied(422, str(exc)) from None
    shown = label if label == NONE_OF_THE_ABOVE else loop["answer_label"]
    return RedirectResponse(f"/review/work?saved={quote(shown)}", status_code=303)


@router.get("/review/tasks/{name}/image")
def image(name: str, visitor: Reviewer) -> Response:
    """The task's image, only for the worker who holds its lease."""
    try:
        data, media_type = service.task_image(name, visitor.user.username)
    except (service.LeaseNotHeld, service.LoopNotFound):
        raise PageDenied(403, "You do not hold this task.") from None
    return Response(data, media_type=media_type, headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store",
        "Content-Security-Policy": "default-src 'none'; sandbox", "Content-Disposition": "inline"})


@router.post("/review/stop")
def stop_working(session: SessionDep, visitor: Reviewer, _form: Form) -> Response:
    """Give the held task back so another reviewer can take it."""
    service.release_lease(visitor.user.username, session=session)
    return RedirectResponse("/review", status_code=303)
