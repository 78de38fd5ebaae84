"""The in-app notification feed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from labelloop.db import MAX_ROW_ID
from labelloop.notifications import service
from labelloop.web.dependencies import SessionDep, require
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1/notifications", tags=["notifications"])


@router.get("")
def list_notifications(session: SessionDep, limit: int = Query(100, ge=1, le=1000),
                       event_type: str | None = None,
                       after_id: int | None = Query(None, ge=0, le=MAX_ROW_ID),
                       _: User = Depends(require(Role.OPERATOR))) -> list[dict[str, Any]]:
    """Notifications, newest first."""
    return [service.as_dict(n) for n in service.feed(limit=limit, event_type=event_type, after_id=after_id,
            session=session)]
