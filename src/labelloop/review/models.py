"""Human loops (review tasks) and the task template."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from labelloop.db import Base, UTCDateTime, utcnow


class HumanLoopStatus:
    """A human loop's status, in A2I's words."""

    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    STOPPED = "Stopped"
    FAILED = "Failed"


class HumanLoopSource:
    """Why a human loop was opened."""

    DETECTION = "Detection"
    SAMPLING = "Human Sampling"
    LABEL_AUDIT = "Label Audit"  # a training image whose folder label the model doubts (no detection)


NONE_OF_THE_ABOVE = "None of the Above"


class HumanLoop(Base):
    """One review task: an image a person is asked to label."""

    __tablename__ = "human_loops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    source: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=HumanLoopStatus.IN_PROGRESS, index=True)
    detection_id: Mapped[int | None] = mapped_column(ForeignKey("detection_events.id"), unique=True, index=True,
                                                     nullable=True)
    object_key: Mapped[str] = mapped_column(String(1024))
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    answer_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    answered_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    output_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    copied_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    task: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_message: Mapped[str] = mapped_column(Text, default="")


class TaskTemplate(Base):
    """The review task's label choices and instructions (one row)."""

    __tablename__ = "task_template"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    extra_labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    short_instructions: Mapped[str] = mapped_column(Text, default="Choose the label that fits the image best.")
    full_instructions: Mapped[str] = mapped_column(Text, default="")
    loop_lifetime_hours: Mapped[int] = mapped_column(Integer, default=24 * 7)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="system")
