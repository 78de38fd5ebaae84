"""Model routes: the training check (versions, deploy and detect arrive with the model code)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from labelloop.modeling import flows
from labelloop.workforce.models import Role, User
from labelloop.workforce.views import require

router = APIRouter(prefix="/api/v1", tags=["models"])


@router.post("/training/check", status_code=202)
def check_training(user: User = Depends(require(Role.OPERATOR))) -> dict[str, Any]:
    """Run the training check now; returns the run id."""
    run_id = flows.start_training_check(f"requested by {user.username}")
    return {"run_id": run_id}
