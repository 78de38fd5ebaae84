"""The detection event log."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from labelloop.detection import service
from labelloop.detection.silent_errors import RoutingRule
from labelloop.loop import actions
from labelloop.review import service as reviews
from labelloop.web.dependencies import SessionDep, require
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1/detections", tags=["detections"])
Operator = Depends(require(Role.OPERATOR))
COLUMNS = ["id", "request_id", "created_at", "detected_at", "object_key", "etag", "status", "model_version",
           "label", "confidence", "threshold", "human_review_enabled", "sampled", "human_loop_name", "human_label",
           "human_worker", "human_answered_at", "routing_rule", "review_reason", "new_stratum"]
# The seed's DynamoDB column names, as aliases of the columns above, so the seed's analytics keep working.
SEED_ALIASES = {"DetectLabelRequestId": "request_id", "DetectionTimestamp": "detected_at",
                "S3ObjectKey": "object_key", "S3ObjectETag": "etag", "ModelVersion": "model_version",
                "DetectedLabel": "label", "DetectedConfidenceLevel": "confidence",
                "ConfidenceThreshold": "threshold", "HumanReviewEnabled": "human_review_enabled",
                "Sampled": "sampled", "HumanLoopName": "human_loop_name", "HumanLabel": "human_label",
                "CopiedS3ObjectKey": "copied_key"}


class RedetectRequest(BaseModel):
    """What to detect again: stored images or folders (ending in ``/``) under images_for_detection/."""

    keys: list[str] = Field(min_length=1, max_length=10000)


def _filters(label: str | None = None, min_confidence: float | None = Query(None, ge=0, le=100),
             max_confidence: float | None = Query(None, ge=0, le=100), sampled: bool | None = None,
             human_label: str | None = None, answered: bool | None = None, since: datetime | None = None,
             until: datetime | None = None, status: str | None = None,
             routing_rule: RoutingRule | None = Query(None, description="the rule that routed it"),
             limit: int = Query(500, ge=1, le=100000), offset: int = Query(0, ge=0, le=1_000_000_000)
             ) -> dict[str, Any]:
    return {"label": label, "min_confidence": min_confidence, "max_confidence": max_confidence,
            "sampled": sampled, "human_label": human_label, "answered": answered, "since": since,
            "until": until, "status": status, "routing_rule": routing_rule, "limit": limit, "offset": offset}


@router.get("")
def list_detections(session: SessionDep, filters: dict[str, Any] = Depends(_filters),
                    _: User = Operator) -> list[dict[str, Any]]:
    """Detection events, newest first, filtered by label, confidence range, sampled, human answer, date, status
    and the rule that routed them."""
    return [service.as_dict(event) for event in service.list_events(**filters, session=session)]


# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): such text is prefixed with "'".
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` for a CSV cell: text a spreadsheet would take for a formula (``=1+1``, ``@SUM(…)``) gets a
    leading ``'`` so it shows as text; numbers and other values are unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


@router.get("/export.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def export_detections(session: SessionDep, filters: dict[str, Any] = Depends(_filters),
                      _: User = Operator) -> Response:
    """The same filtered log as CSV."""
    out = io.StringIO()
    writer = csv.DictWriter(out, [*COLUMNS, *SEED_ALIASES], extrasaction="ignore")
    writer.writeheader()
    events = [service.as_dict(event) for event in service.list_events(**filters, session=session)]
    copied = reviews.copied_keys([e["human_loop_name"] for e in events if e["human_loop_name"]], session=session)
    for event in events:
        event["copied_key"] = copied.get(event["human_loop_name"])
        row = event | {alias: event[column] for alias, column in SEED_ALIASES.items()}
        writer.writerow({column: spreadsheet_safe(value) for column, value in row.items()})
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="detections.csv"'})


@router.post("/redetect", status_code=202)
async def redetect(request: RedetectRequest, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Detect stored images again with the serving version; each gets a new detection event that points to its
    previous one (``previous_event_id``). Returns the run id and how many images it detects."""
    return await run_in_threadpool(actions.redetect_images, request.keys, user.username, session=session)
