"""Human loops (review tasks) and the task template."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

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
    LABEL_AUDIT = "Label Audit"
    # A gold task (honeypot) served to one reviewer: its label is known; the answer only scores the reviewer.
    GOLD = "Gold"


NONE_OF_THE_ABOVE = "None of the Above"
MAX_REVIEWERS = 9  # Ground Truth's limit of workers per task


class AnswerKind:
    """Who gave an answer: a reviewer in the portal or API, or an operator correcting the loop's label."""

    REVIEW = "review"
    CORRECTION = "correction"


class HumanAnswer(Base):
    """One person's answer to a human loop; every answer is kept (the loop's label is their consolidation)."""

    __tablename__ = "human_answers"
    __table_args__ = (UniqueConstraint("loop_id", "worker", name="uq_human_answers_loop_worker"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    loop_id: Mapped[int] = mapped_column(ForeignKey("human_loops.id"), index=True)
    worker: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16), default=AnswerKind.REVIEW)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class HumanLoop(Base):
    """One review task: an image a person is asked to label."""

    __tablename__ = "human_loops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    source: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=HumanLoopStatus.IN_PROGRESS, index=True)
    # None for a Label Audit loop: it reviews a training image, not a detection.
    detection_id: Mapped[int | None] = mapped_column(ForeignKey("detection_events.id"), unique=True, index=True,
                                                     nullable=True)
    object_key: Mapped[str] = mapped_column(String(1024))
    # The content the loop is about (pinned when it opens): the reviewer sees it and only it is copied.
    object_etag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    leased_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    answer_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    answered_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    output_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    copied_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # Each undo starts a new round, so the answer of the next round gets a run of its own.
    answer_round: Mapped[int] = mapped_column(Integer, default=0)
    apply_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    task: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_message: Mapped[str] = mapped_column(Text, default="")
    # How many distinct reviewers must answer (the template's number for the source; escalation adds one).
    required_answers: Mapped[int] = mapped_column(Integer, default=1)
    # The gold task this loop serves (source Gold only): its known label scores the answer.
    gold_task_id: Mapped[int | None] = mapped_column(ForeignKey("gold_tasks.id"), nullable=True, index=True)
    answers: Mapped[list[HumanAnswer]] = relationship(order_by=HumanAnswer.id, lazy="selectin",
                                                      cascade="all, delete-orphan")


class GoldTask(Base):
    """A labeled image an operator marked as gold: its label is known, so answers to it score the reviewer.

    Removing one keeps the row (``active`` false) so the answers already given keep their score."""

    __tablename__ = "gold_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    object_key: Mapped[str] = mapped_column(String(1024), unique=True)
    object_etag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    label: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    added_by: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TaskTemplate(Base):
    """The review task's label choices and instructions (one row)."""

    __tablename__ = "task_template"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    extra_labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    short_instructions: Mapped[str] = mapped_column(Text, default="Choose the label that fits the image best.")
    full_instructions: Mapped[str] = mapped_column(Text, default="")
    loop_lifetime_hours: Mapped[int] = mapped_column(Integer, default=24 * 7)
    # A2I's TaskTimeLimitInSeconds: how long a reviewer holds a task before it returns to the queue.
    task_time_limit_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    # Distinct reviewers per task, by loop source (1-9; a source not named gets 1).
    reviewers_per_task: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # The share of answers the majority label needs; below it the loop asks one more reviewer (up to 9).
    min_agreement: Mapped[float] = mapped_column(Float, default=0.6)
    # Reviewers an admin paused from review (they get no task and their answers are refused).
    paused_reviewers: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="system")
