"""The in-app notification feed: one row per notification, with how each channel delivered it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from labelloop.db import Base, UTCDateTime, utcnow


class Notification(Base):
    """One notification, the same shape for every branch of the loop."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(300))
    message: Mapped[str] = mapped_column(Text)
    object_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(300), nullable=True, unique=True)
    deliveries: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class NotificationRead(BaseModel):
    """A notification as the API shows it."""

    id: int
    created_at: datetime
    event_type: str
    subject: str
    message: str
    object_key: str | None
    model_version: str | None
    label: str | None
    confidence: float | None
    status: str | None
    run_id: str | None
    link: str | None
    deliveries: dict[str, Any]
