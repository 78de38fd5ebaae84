"""Model versions: find them, describe them, record and announce their status changes."""

from __future__ import annotations

import io
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.modeling.training import Head
from labelloop.notifications.service import notify

log = logging.getLogger(__name__)

SERVABLE = {ModelStatus.TRAINING_COMPLETED.value, ModelStatus.STOPPED.value, ModelStatus.RUNNING.value,
            ModelStatus.STARTING.value, ModelStatus.STOPPING.value}


class ModelError(ValueError):
    """A model operation that is not possible now; the message says why."""


class VersionNotFound(KeyError):
    """No model version has this name."""


def get_version(version: str, *, session: Session) -> ModelVersion:
    """The model version named ``version``."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise VersionNotFound(f"no model version {version!r}")
    return row


def list_versions(*, session: Session) -> list[ModelVersion]:
    """Every model version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def latest_version(*, session: Session) -> ModelVersion | None:
    """The newest model version, if any."""
    return session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()))


def version_for_run(run_id: str, *, session: Session) -> ModelVersion | None:
    """The version a training run created, if it created one."""
    return session.scalar(select(ModelVersion).where(ModelVersion.run_id == run_id))


def training_run_ids(*, session: Session) -> set[str]:
    """The run ids that trained the recorded versions (their pages link to them)."""
    return {run_id for run_id in session.scalars(select(ModelVersion.run_id)) if run_id}


def serving_version(*, session: Session) -> ModelVersion | None:
    """The version whose status is RUNNING, if any (without its head: :func:`head_of` reads it)."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.RUNNING.value))


# Built once: every serving process asks it once a second while it serves.
SERVING_NAME = select(ModelVersion.version).where(ModelVersion.status == ModelStatus.RUNNING.value)


def serving_version_name(*, session: Session) -> str | None:
    """The name of the version whose status is RUNNING, if any: that one column, not the row, whose JSON columns
    would be parsed again at each look (and, before ``head`` was deferred, its 13 MB familiarity bank read: README
    Performance, item 46)."""
    return session.scalar(SERVING_NAME)


def head_of(row: ModelVersion) -> Head:
    """The trained head of a version (stored in its row by training); :class:`ModelError` when it has none. Reads
    the deferred ``head`` column, so call it inside the row's session."""
    if row.head is None:
        raise ModelError(f"model version {row.version} has no trained head ({row.status})")
    return Head.load(io.BytesIO(row.head))


def describe(row: ModelVersion, *, with_evaluation: bool = True) -> dict[str, Any]:
    """A model version as the API shows it."""
    data = {column: getattr(row, column) for column in (
        "version", "status", "status_message", "created_at", "training_ended_at", "deployed_at", "stopped_at",
        "run_id", "labels", "f1", "image_count", "train_images", "test_images", "training_seconds",
        "manifest_key", "evaluation_key", "input_view")}
    data["evaluation"] = row.evaluation if with_evaluation else None
    data["warm_start"] = warm_start_summary(row.warm_start)
    return data


def warm_start_summary(warm: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored warm start in brief (the version it replaced, how many audits its backtest holds and the new
    stratum's counts); None for a cold start."""
    if not warm:
        return None
    return {"previous": warm.get("previous"), "backtest_audits": len(warm.get("backtest") or []),
            "new_accepted": warm.get("new_accepted"), "accepted": warm.get("accepted")}


def set_status(version: str, status: ModelStatus, message: str = "", **fields: Any) -> dict[str, Any]:
    """Record a status change of ``version`` (and any other fields) and return the version (opens its own
    session)."""
    with db.session() as session:
        row = get_version(version, session=session)
        row.status = status.value
        row.status_message = message
        for name, value in fields.items():
            setattr(row, name, value)
        log.info("model version status", extra={"version": version, "status": status.value, "detail": message})
        return describe(row, with_evaluation=False)


def notify_status(version: str, status: ModelStatus, message: str, run_id: str | None) -> None:
    """Announce a status of ``version`` (once per run, version and status)."""
    notify("model.status", f"labelloop: model {version} — Status: {status.value}",
           f"Model version {version}: Status: {status.value}. {message}".strip(), model_version=version,
           status=status.value, run_id=run_id, dedupe_key=f"{run_id}:{version}:{status.value}" if run_id else None)


def change_status(version: str, status: ModelStatus, message: str = "", run_id: str | None = None,
                  **fields: Any) -> dict[str, Any]:
    """Record and announce a status change of ``version``."""
    described = set_status(version, status, message, **fields)
    notify_status(version, status, message, run_id)
    return described
