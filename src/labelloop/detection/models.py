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


def _not_null(column: str) -> tuple[str, str]:
    return f"{column} IS NOT NULL", f"{column} IS NOT NULL"


# (name, columns, (SQLite's WHERE, PostgreSQL's WHERE)) of each partial index of the event log.
PARTIAL_INDEXES: tuple[tuple[str, tuple[str, ...], tuple[str, str]], ...] = (
    ("uq_detection_first_arrival", ("object_key", "etag"), ("previous_event_id IS NULL", "previous_event_id IS NULL")),
    # The sampling's walk (detected_at >= since), the estimate's reads (model_version = ?, with routing_rule = 'audit'
    # the audits opened, counted in the index alone), the log's filters (label, routing rule, sampled).
    ("ix_detection_events_detected_at", ("detected_at",), _not_null("detected_at")),
    ("ix_detection_events_version_rule", ("model_version", "routing_rule"), _not_null("model_version")),
    ("ix_detection_events_label", ("label",), _not_null("label")),
    ("ix_detection_events_routing_rule", ("routing_rule",), _not_null("routing_rule")),
    ("ix_detection_events_sampled", ("sampled",), ("sampled IS 1", "sampled IS true")),
    # A re-detection's own event (run_id = ? AND previous_event_id IS NOT NULL).
    ("ix_detection_events_previous_event_id", ("previous_event_id",), _not_null("previous_event_id")),
)


class DetectionEvent(Base):
    """One detection: the image, the model's answer, and (later) a human's answer."""

    __tablename__ = "detection_events"
    # One event per uploaded content at a key (its first arrival); re-detections add events pointing back.
    # The other indexes are the ones a query reads by (tests/test_event_indexes.py), and all but status and
    # created_at are partial: they leave out the rows whose column is NULL or false, so an upload's event (inserted by
    # its PUT, before it is detected) is written to 4 b-trees instead of 11 (README Performance, item 37).
    __table_args__ = tuple(Index(name, *columns, unique=name.startswith("uq_"),
                                 sqlite_where=text(where[0]), postgresql_where=text(where[1]))
                           for name, columns, where in PARTIAL_INDEXES)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # A new uuid4 per event; no query reads by it, so no index keeps it unique (README Performance, item 37).
    request_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    detected_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    object_key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), default="upload")
    status: Mapped[str] = mapped_column(String(32), default=DetectionStatus.DETECTED, index=True)
    status_message: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    labels: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    human_review_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    sampled: Mapped[bool] = mapped_column(Boolean, default=False)
    human_loop_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    human_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    human_worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    human_answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Which rule sent the detection to a human, or let it through (silent_errors.Rule), and why, in words.
    routing_rule: Mapped[str | None] = mapped_column(String(32), nullable=True)
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Warm start: whether the previous version would not have auto-accepted the image (the "new" stratum);
    # None when the version detecting it has no warm start.
    new_stratum: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # A re-detection (the same stored image detected again, e.g. by a newer version) points to the event it
    # repeats; None for the event of the upload itself.
    previous_event_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
