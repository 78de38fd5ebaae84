"""The detection log page: filter by label, confidence range, sampled, human answer and date; page through
the events; export the filtered log as CSV (the same export as ``GET /api/v1/detections/export.csv``); plots of
the confidence histogram, detections per label per day, and reviewer agreement over time for sampled loops."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from labelloop.detection import service, silent_errors
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.detection.views import export_detections
from labelloop.loop import actions
from labelloop.parameters import service as parameters
from labelloop.review import service as reviews
from labelloop.review.models import NONE_OF_THE_ABOVE
from labelloop.sampling import service as sampling
from labelloop.web import plots
from labelloop.web.dependencies import SessionDep
from labelloop.web.format import as_datetime, query
from labelloop.web.pages import Form, Operator, PageDenied, form_text, render, sentence

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 100
PLOT_LIMIT = 20000
EXPORT_LIMIT = 100000
DAYS_SHOWN = 60
PLOT_WIDTH = 400
LABELS_SHOWN = 7
STATUSES = (DetectionStatus.DETECTED, DetectionStatus.WAITING_FOR_MODEL, DetectionStatus.REJECTED,
            DetectionStatus.FAILED)
FIELDS = ("label", "min_confidence", "max_confidence", "sampled", "answer", "since", "until", "status", "rule")


def parse_filters(params: dict[str, str]) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The service's filters from the form's fields; also the fields as given and a message per bad field."""
    given = {name: (params.get(name) or "").strip() for name in FIELDS}
    filters: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if given["label"]:
        filters["label"] = given["label"]
    for name in ("min_confidence", "max_confidence"):
        if given[name]:
            try:
                value = float(given[name])
                if not 0 <= value <= 100:
                    raise ValueError
                filters[name] = value
            except ValueError:
                errors[name] = "A confidence is a number from 0 to 100."
    if "min_confidence" in filters and "max_confidence" in filters and (
            filters["min_confidence"] > filters["max_confidence"]):
        errors["max_confidence"] = "The highest confidence is below the lowest."
        del filters["max_confidence"]
    if given["sampled"] in ("yes", "no"):
        filters["sampled"] = given["sampled"] == "yes"
    if given["answer"] == "answered":
        filters["answered"] = True
    elif given["answer"] == "unanswered":
        filters["answered"] = False
    elif given["answer"]:
        filters["human_label"] = given["answer"]
    for name, at in (("since", time.min), ("until", time.max)):
        if given[name]:
            try:
                filters[name] = datetime.combine(date.fromisoformat(given[name]), at, tzinfo=UTC)
            except ValueError:
                errors[name] = "A date looks like 2026-01-31."
    if given["status"] in STATUSES:
        filters["status"] = given["status"]
    if given["rule"] in silent_errors.RULE_MEANINGS:
        filters["routing_rule"] = given["rule"]
    elif given["rule"]:
        errors["rule"] = "Pick a routing rule from the list."
    return filters, given, errors


def _day(event: DetectionEvent) -> str | None:
    moment = as_datetime(event.created_at)
    return moment.date().isoformat() if moment else None


def per_label_per_day(events: list[DetectionEvent]) -> Any:
    """Stacked bars: detections per day (the last ``DAYS_SHOWN`` days with any), stacked by label."""
    detected = [e for e in events if e.label and _day(e)]
    if not detected:
        return plots.empty("Detections per label per day", width=PLOT_WIDTH)
    last = max(date.fromisoformat(_day(e)) for e in detected)
    first = max(min(date.fromisoformat(_day(e)) for e in detected), last - timedelta(days=DAYS_SHOWN - 1))
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    top = [label for label, _ in Counter(e.label for e in detected).most_common(LABELS_SHOWN)]
    counts: dict[str, Counter[str]] = {label: Counter() for label in [*top, "other labels"]}
    for event in detected:
        counts[event.label if event.label in top else "other labels"][_day(event)] += 1
    series = [(label, [counts[label][day] for day in days]) for label in counts if sum(counts[label].values())]
    return plots.stacked_bars([day[5:] for day in days], series, label="Detections per label per day",
                              y_title="detections", width=PLOT_WIDTH)


def agreement_plot(summary: dict[str, Any]) -> Any:
    """The share of sampled answers that agree with the model, per day."""
    per_day = summary.get("per_day") or {}
    days = sorted(per_day)
    return plots.line_chart([day[5:] for day in days],
                            [("agreement", [per_day[d]["agreement_rate"] * 100 for d in days])],
                            label="Reviewer agreement with the model on sampled detections, per day",
                            y_min=0, y_max=100, y_format="{:.0f}%", y_title="agreement", value_format="{:.0f}%",
                            width=PLOT_WIDTH)


@router.get("/detections", response_class=HTMLResponse)
def detections_page(request: Request, session: SessionDep, _visitor: Operator, page: int = 1) -> Response:
    filters, given, errors = parse_filters(dict(request.query_params))
    page = max(page, 1)
    events = service.list_events(**filters, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE, session=session)
    everything = service.list_events(**filters, limit=PLOT_LIMIT, session=session)
    threshold = parameters.value(parameters.MINIMUM_LABEL_DETECTION_CONFIDENCE, session=session)
    confidences = [e.confidence for e in everything if e.confidence is not None]
    summary = sampling.summary()
    labels = service.labels_seen(session=session)
    return render(request, "console/detections.html", {
        "events": events[:PAGE_SIZE], "given": given, "errors": errors, "labels": labels,
        "answers": [*labels, NONE_OF_THE_ABOVE] if NONE_OF_THE_ABOVE not in labels else labels,
        "statuses": STATUSES, "page": page, "matched": len(everything), "capped": len(everything) >= PLOT_LIMIT,
        "newer": query(given, page=page - 1) if page > 1 else None,
        "older": query(given, page=page + 1) if len(events) > PAGE_SIZE else None,
        "export": "/detections/export.csv" + query(given), "filtered": bool(filters),
        "histogram": plots.histogram(confidences, label="Confidence of the top label", x_title="confidence (0–100)",
                                     y_title="detections", reference=(threshold, f"minimum {threshold:g}"),
                                     width=PLOT_WIDTH),
        "per_day": per_label_per_day(everything), "agreement": agreement_plot(summary), "summary": summary,
        "threshold": threshold, "section": "detections", "label_choices": reviews.label_choices(session=session),
        "none_of_the_above": NONE_OF_THE_ABOVE, "corrected": _corrected_notice(request),
        "rules": silent_errors.RULE_MEANINGS})


def _corrected_notice(request: Request) -> dict[str, str] | None:
    loop, label, run = (request.query_params.get(name) for name in ("corrected", "corrected_to", "run"))
    return {"loop": loop, "label": label or "", "run": run} if loop and run else None


@router.post("/detections/correct")
def correct(session: SessionDep, visitor: Operator, form: Form) -> Response:
    """Correct a reviewer's applied answer, as ``POST /api/v1/human-loops/{name}/correct``: the one training
    copy moves to the new label's folder (or goes, for None of the Above)."""
    name, label = form_text(form, "loop"), form_text(form, "label")
    try:
        corrected = actions.correct_answer(name, label, visitor.user.username, session=session)
    except reviews.LoopNotFound:
        raise PageDenied(404, f"There is no human loop named {name!r}.") from None
    except reviews.ReviewError as exc:
        raise PageDenied(409, sentence(str(exc))) from None
    return RedirectResponse(f"/detections?corrected={quote(name)}&corrected_to={quote(label)}"
                            f"&run={quote(corrected['run_id'])}#log-title", status_code=303)


@router.get("/detections/export.csv")
def export_page(request: Request, session: SessionDep, _visitor: Operator) -> Response:
    """The filtered log as CSV, through the API's own export."""
    filters, _, _ = parse_filters(dict(request.query_params))
    keys = ("label", "min_confidence", "max_confidence", "sampled", "human_label", "answered", "since", "until",
            "status", "routing_rule")
    return export_detections(session, {**dict.fromkeys(keys), **filters, "limit": EXPORT_LIMIT, "offset": 0}, None)
