"""Human sampling routes: run now, and the agreement summary."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from labelloop.loop import actions
from labelloop.modeling.versions import VersionNotFound
from labelloop.sampling import service
from labelloop.web.dependencies import require
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1/sampling", tags=["sampling"])
Operator = Depends(require(Role.OPERATOR))


@router.post("/run", status_code=202)
def run_sampling(user: User = Operator) -> dict[str, Any]:
    """Run human sampling now; returns the run id."""
    return {"run_id": actions.run_sampling(user.username)}


@router.get("/summary")
def sampling_summary(_: User = Operator) -> dict[str, Any]:
    """Agreement of sampled human answers with the model: overall, per label and per day."""
    return service.summary()


@router.get("/silent-errors")
def silent_errors(version: str | None = None, _: User = Operator) -> dict[str, Any]:
    """How often auto-accepted detections of a version (default: the serving one) are wrong: the exact 95 %
    upper bound from audits, overall and per label, its history, the target, the audit rate and each label's
    thresholds now."""
    try:
        return service.silent_error_report(version)
    except VersionNotFound as exc:
        raise HTTPException(404, str(exc).strip('"')) from None
