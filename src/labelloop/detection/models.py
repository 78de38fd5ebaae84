"""The detection event log: one row per detected image (the seed's DynamoDB table)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from labelloop.db import Base, UTCDateTime, utcnow


class DetectionStatus:
    """Where a detection stands."""

    DETECTED = "DETECTED"
    WAITING_FOR_MODEL = "WAITING_FOR_MODEL"
    REJECTED = "REJECTED"
    FAILED = "FAILED"  # its runs failed while a version served; the next version tries it again


class DetectionEvent(Base):
    """One detection: the image, the model's answer, and (later) a human's answer."""

    __tablename__ = "detection_events"
    # One event per uploaded content at a key (its first arrival); re-detections add events pointing back.
    # A version's events by routing rule, without the events no version detected yet: the audits a version opened
    # (read once per batch of detections) are counted in the index alone. The re-detections alone by the event they
    # repeat: the waiting uploads' sweep (previous_event_id IS NULL) reads the status index, not this one whole. The
    # answered sampled events by version, in the order they were answered: a version's answered audits (read once per
    # batch of detections) without reading every sampled event of every version (migration
    # event_log_big_table_indexes; README Performance, items 37 and 42). An upload's event enters none of the three.
    __table_args__ = (Index("uq_detection_first_arrival", "object_key", "etag", unique=True,
                            sqlite_where=text("previous_event_id IS NULL"),
                            postgresql_where=text("previous_event_id IS NULL")),
                      Index("ix_detection_events_version_rule", "model_version", "routing_rule",
                            sqlite_where=text("model_version IS NOT NULL"),
                            postgresql_where=text("model_version IS NOT NULL")),
                      Index("ix_detection_events_previous_event_id", "previous_event_id",
                            sqlite_where=text("previous_event_id IS NOT NULL"),
                            postgresql_where=text("previous_event_id IS NOT NULL")),
                      Index("ix_detection_events_answered_audits", "model_version", "human_answered_at",
                            sqlite_where=text("sampled IS 1 AND human_label IS NOT NULL"),
                            postgresql_where=text("sampled IS true AND human_label IS NOT NULL")))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    detected_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    object_key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), default="upload")
    status: Mapped[str] = mapped_column(String(32), default=DetectionStatus.DETECTED, index=True)
    status_message: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    label: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    labels: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    human_review_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    sampled: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    human_loop_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    human_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    human_worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    human_answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Which rule sent the detection to a human, or let it through (silent_errors.Rule), and why, in words.
    routing_rule: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Warm start: whether the previous version would not have auto-accepted the image (the "new" stratum);
    # None when the version detecting it has no warm start.
    new_stratum: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # A re-detection (the same stored image detected again, e.g. by a newer version) points to the event it
    # repeats; None for the event of the upload itself.
    previous_event_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
