"""Model versions: status (Rekognition's words), metrics, and the trained head (kept in the database)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Float, Integer, LargeBinary, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, column_property, mapped_column

from labelloop.db import Base, UTCDateTime, utcnow


class ModelStatus(StrEnum):
    """A model version's status, in Rekognition Custom Labels' words."""

    TRAINING_IN_PROGRESS = "TRAINING_IN_PROGRESS"
    TRAINING_COMPLETED = "TRAINING_COMPLETED"
    TRAINING_FAILED = "TRAINING_FAILED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class ModelVersion(Base):
    """One trained (or training) model version.

    The head's weights live here (``head``, an ``.npz`` loaded only when asked for), so every worker process that
    shares the database can serve any version; the backbone is the same ONNX file everywhere, rebuilt from the
    pinned weights package when a process lacks it.
    """

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    status: Mapped[str] = mapped_column(String(32), default=ModelStatus.TRAINING_IN_PROGRESS.value)
    status_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    training_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    f1: Mapped[float | None] = mapped_column(Float, nullable=True)
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    train_images: Mapped[int] = mapped_column(Integer, default=0)
    test_images: Mapped[int] = mapped_column(Integer, default=0)
    training_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    manifest_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    evaluation_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    dataset_digest: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # The trained head (``.npz``; 13 MB with a full familiarity bank of 10 labels × 256 rows): loaded only where it
    # is used (``versions.head_of``: serving's load, the gate, the warm start, the export), so that listing or
    # showing versions does not read megabytes a row. ``has_head`` says whether there is one without reading it,
    # also on a row whose session has closed (a deferred ``head`` raises there): its length, which SQLite reads
    # from the row's header where ``head IS NOT NULL`` reads every page of the value (PostgreSQL: from the TOAST
    # pointer).
    head: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    has_head: Mapped[bool] = column_property(func.length(head).is_not(None))
    # The int8 backbone this version serves with (Quantize-Backbone): its fingerprint, NULL for the shared fp32
    # backbone, and the ONNX file itself (about 9 MB, loaded only when asked for), so every worker can load it.
    backbone_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    backbone_int8: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    # Its warm start, stored when first deployed to replace another version (detection.warm_start): the
    # previous version, the backtest audits and the new stratum's counts; None: a cold start.
    warm_start: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The view its head was trained on and every request is prepared with (images.INPUT_VIEWS): "crop" (centre
    # crop, every version before this column), "letterbox" (whole image, padded) or "letterbox-fast" (the same
    # from a DCT-scaled decode), from Model-Input-View.
    input_view: Mapped[str] = mapped_column(String(16), default="crop", server_default="crop")
    # While it trains: {"phase", "done", "total", "started_at", "updated_at"} (the dashboard's progress bar).
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class UnusableImage(Base):
    """A training image found unusable (not an image, undecodable): not counted as training data while this
    content (ETag) stays at this key. Found at upload through the S3 event route, or by training."""

    __tablename__ = "unusable_images"
    __table_args__ = (UniqueConstraint("object_key", "etag", name="uq_unusable_image"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    object_key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    found_by: Mapped[str] = mapped_column(String(64))
    found_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelVersionRead(BaseModel):
    """A model version as the API shows it."""

    version: str
    status: str
    status_message: str
    created_at: datetime
    training_ended_at: datetime | None
    deployed_at: datetime | None
    stopped_at: datetime | None
    run_id: str | None
    labels: list[str]
    f1: float | None
    image_count: int
    train_images: int
    test_images: int
    training_seconds: float | None
    manifest_key: str | None
    evaluation_key: str | None
    evaluation: dict[str, Any] | None = None
    # Its warm start in brief (versions.warm_start_summary): previous, backtest_audits, new_accepted, accepted
    warm_start: dict[str, Any] | None = None
    # How each image is prepared for this version (images.INPUT_VIEWS): "crop", "letterbox" or "letterbox-fast"
    input_view: str = "crop"


class DetectedLabel(BaseModel):
    """One label with its confidence (0-100)."""

    name: str
    confidence: float


class DetectResponse(BaseModel):
    """The answer of ``POST /detect``."""

    model_version: str
    labels: list[DetectedLabel]
