"""Human sampling routes: run now, and the agreement summary."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from labelloop.loop import actions
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
