"""The operator console's dashboard, and :func:`install`, which adds every console page to the app.

The dashboard: the serving version and its F1, images per label, untrained images against
Minimum-Untrained-Images (the training check's own decision), the next scheduled checks, open human loops, and
the latest runs and notifications. Operators and admins only; workers and consumers get a 403 page.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from labelloop import engine
from labelloop.console import first_hour
from labelloop.detection import service as detection
from labelloop.loop import routing
from labelloop.modeling import dataset, versions
from labelloop.notifications import service as notifications
from labelloop.parameters import service as parameters
from labelloop.review import service as review
from labelloop.review.models import HumanLoopSource, HumanLoopStatus
from labelloop.runs import service as runs
from labelloop.runs.pages import as_listed
from labelloop.sampling import service as sampling
from labelloop.web import plots
from labelloop.web.dependencies import SessionDep
from labelloop.web.pages import Operator, render

router = APIRouter(include_in_schema=False)
SCHEDULE_TITLES = {schedule.name: schedule.title for schedule in routing.SCHEDULES}
RECENT = 8


def schedules() -> list[dict[str, Any]]:
    """The training and sampling schedules, with a title each."""
    found = []
    for schedule in engine.list_schedules():
        if schedule is not None:
            found.append({**schedule, "title": SCHEDULE_TITLES.get(schedule["name"], schedule["name"])})
    return found


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep, _visitor: Operator) -> Response:
    serving = versions.serving_version(session=session)
    listed = versions.list_versions(session=session)
    data = dataset.training_data()
    labels = data.per_label()  # trainable images only: nothing untrainable is counted
    decision = dataset.check_new_training("schedule (as the next scheduled check would see it)", data)
    values = parameters.values(session=session)
    open_loops = review.list_loops(status=HumanLoopStatus.IN_PROGRESS, limit=5000, session=session)
    by_source = Counter(loop.source for loop in open_loops)
    recent_runs = [as_listed(run) for run in runs.list_runs(limit=RECENT)]
    untrained, minimum = decision["untrained_images"], decision["minimum_untrained_images"]
    return render(request, "console/dashboard.html", {
        "serving": serving, "latest": listed[0] if listed else None,
        "labels_plot": plots.bar_chart(labels, label="Training images per label", width=560) if labels else None,
        "labels": labels, "labeled_total": sum(n for _, n in labels), "decision": decision,
        "untrained": untrained, "minimum": minimum,
        "progress": max(0, min(untrained, minimum)), "training_enabled": values[parameters.ENABLE_AUTOMATIC_TRAINING],
        "minimum_f1": values[parameters.MINIMUM_F1_SCORE], "schedules": schedules(),
        "open_loops": len(open_loops), "from_detection": by_source.get(HumanLoopSource.DETECTION, 0),
        "from_sampling": by_source.get(HumanLoopSource.SAMPLING, 0),
        "oldest_loops": sorted(open_loops, key=lambda loop: loop.id)[:5],
        "detections": detection.count_events(session=session), "agreement": sampling.summary(),
        "runs": recent_runs, "notifications": notifications.feed(limit=RECENT, session=session),
        **_first_hour(data, session=session), **_silent_errors(serving), "section": "dashboard"})


def _silent_errors(serving: Any) -> dict[str, Any]:
    """The serving version's silent-error estimate and its plot."""
    if serving is None:
        return {"silent": None, "silent_plot": None}
    report = sampling.silent_error_report(serving.version)
    return {"silent": report, "silent_plot": plots.silent_error_chart(report, width=420)}


def _first_hour(data: dataset.TrainingData, *, session: Session) -> dict[str, Any]:
    """The dashboard's getting-started checklist, training progress and training-data problems."""
    steps = first_hour.checklist(data, session=session)
    return {"checklist": steps, "checklist_done": sum(step.done for step in steps),
            "training_progress": first_hour.training_progress(session=session),
            "newest_version": getattr(first_hour.newest_version(session=session), "version", ""),
            "problems": first_hour.problems(data)}


@router.get("/dashboard/training-progress")
def training_progress(session: SessionDep, _visitor: Operator) -> JSONResponse:
    """The training in progress, for the dashboard's live indicator; else a training that ended a moment ago
    (``finished``); else ``{"training": false}``."""
    found = first_hour.training_progress(session=session) or first_hour.recently_trained(session=session)
    return JSONResponse(found or {"training": False}, headers={"Cache-Control": "no-store"})
