"""The runs pages: every workflow run by branch and status, and the graph inspector of one run (its branch's
state machine as SVG with the path it took; each state shows its step's input, output, error and timing)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from labelloop.loop import machines
from labelloop.runs import drawing, graph, service
from labelloop.web.format import as_datetime, query
from labelloop.web.pages import Operator, PageDenied, render

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
STATUSES = ("SUCCESS", "ERROR", "PENDING", "ENQUEUED", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")
STATUS_TAGS = {"SUCCESS": "on", "ERROR": "off", "PENDING": "wait", "ENQUEUED": "wait", "CANCELLED": "neutral",
               "MAX_RECOVERY_ATTEMPTS_EXCEEDED": "off", "DELAYED": "wait"}


def _first_arg(run: dict[str, Any]) -> Any:
    given = run.get("input")
    if isinstance(given, dict) and given.get("args"):
        return given["args"][0]
    return None


def describe(run: dict[str, Any]) -> str:
    """What a run was about, in a few words (the object, the parameter, the version, the loop, the trigger)."""
    first, output = _first_arg(run), run.get("output") if isinstance(run.get("output"), dict) else {}
    name = run["name"]
    if name == "parameter_change" and isinstance(first, dict):
        return f"{first.get('name')}: {first.get('old_value')} → {first.get('new_value')} by {first.get('changed_by')}"
    if name == "object_created" and isinstance(first, dict):
        if "uploads" in first:
            keys = [upload.get("key") for upload in first["uploads"]]
            return ", ".join(map(str, keys)) if len(keys) <= 3 else f"{len(keys)} uploads: {keys[0]}, {keys[1]} …"
        return str(first.get("key"))
    if name in ("training_check", "human_sampling") and first is not None:
        verdict = output.get("version") or output.get("reason") or ""
        return f"{first}" + (f" — {verdict}" if verdict else "")
    if name.startswith("scheduled_"):
        return "on schedule" + (f" — {output.get('version') or output.get('reason')}"
                                if output.get("version") or output.get("reason") else "")
    if name in ("deploy_model_version", "stop_model_version") and first is not None:
        return f"version {first}"
    if name == "detect_waiting_image" and first is not None:
        return f"detection event {first}"
    if name == "redetect_images" and isinstance(first, dict):
        keys = first.get("keys") or []
        return f"{len(keys)} image(s) by {first.get('actor')}" + (f" — with {output['model_version']}"
                                                                   if output.get("model_version") else "")
    if name == "detect_image_again" and first is not None:
        return f"repeats detection event {first}" + (f" — {output['label']} ({output['confidence']:.1f})"
                                                     if output.get("label") else "")
    if name == "apply_human_answer" and first is not None:
        return f"loop {first}"
    return ""


def took(run: dict[str, Any]) -> float | None:
    """Seconds from creation to completion (or the last update of a run still going)."""
    start = as_datetime(run.get("created_at"))
    end = as_datetime(run.get("completed_at")) or as_datetime(run.get("updated_at"))
    return (end - start).total_seconds() if start and end else None


def as_listed(run: dict[str, Any]) -> dict[str, Any]:
    """A run as the run lists show it: its branch, what it was about, how long it took, its status tag."""
    return {**machines.with_branch(run), "what": describe(run), "took": took(run),
            "tag": STATUS_TAGS.get(run["status"], "neutral")}


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, _visitor: Operator, branch: str = "", status: str = "", page: int = 1) -> Response:
    try:
        chosen = machines.branch_filter(branch) if branch else None
    except ValueError:
        raise PageDenied(422, f"There is no branch {branch!r}; the branches are "
                              f"{', '.join(machines.branch_names())}.") from None
    if status and status not in STATUSES:
        raise PageDenied(422, f"There is no run status {status!r}.")
    page = max(page, 1)
    found = service.list_runs(limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE,
                              workflows=list(chosen.workflows) if chosen else None,
                              id_prefixes=list(chosen.id_prefixes) if chosen and chosen.id_prefixes else None,
                              status=status or None)
    runs = [as_listed(run) for run in found[:PAGE_SIZE]]
    params = {"branch": branch, "status": status}
    return render(request, "console/runs.html", {
        "runs": runs, "branches": machines.branch_names(), "statuses": STATUSES, "branch": branch, "status": status,
        "page": page, "newer": query(params, page=page - 1) if page > 1 else None,
        "older": query(params, page=page + 1) if len(found) > PAGE_SIZE else None, "section": "runs"})


@router.get("/runs/{run_id:path}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, _visitor: Operator) -> Response:
    try:
        run = machines.with_branch(service.get_run(run_id))
    except service.RunNotFound:
        raise PageDenied(404, service.missing_run_reason(run_id)) from None
    machine = machines.machine_for(run["name"])
    trace = graph.trace(machine, run) if machine else None
    states = []
    if trace is not None:
        states = sorted(trace.states.values(), key=lambda p: (p.state.row, p.state.col))
    failed = next((s for s in run["steps"] if s["error"] is not None), None)
    starts = [as_datetime(s["started_at"]) for s in run["steps"] if s["started_at"]]
    ends = [as_datetime(s["completed_at"]) for s in run["steps"] if s["completed_at"]]
    steps_took = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return render(request, "console/run.html", {
        "run": run, "tag": STATUS_TAGS.get(run["status"], "neutral"), "what": describe(run), "took": took(run),
        "steps_took": steps_took,
        "machine": machine, "trace": trace, "svg": drawing.render_svg(trace) if trace else None, "states": states,
        "outcome_words": drawing.OUTCOME_WORDS, "failed_step": failed,
        "children": [s for s in run["steps"] if s["child_run_id"]], "section": "runs"})
