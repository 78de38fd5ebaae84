"""What the dashboard tells a new user: the getting-started checklist (it ticks itself from what exists), the
live progress of a training in progress, and the training data that cannot train (left-out labels, unusable
images) with what to do about each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.modeling.dataset import MIN_IMAGES_PER_LABEL, NONE_OF_THE_ABOVE_FOLDER, TrainingData
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.review.models import HumanLoop, HumanLoopStatus
from labelloop.storage.models import DETECTION_FOLDER, LABELED_FOLDER
from labelloop.workforce.models import Role, User

UNUSABLE_SHOWN = 20
# A training that ended this recently is still reported to the dashboard: one on a few cached images ends in
# under a second, between two of the page's polls, and the page must still learn that a new version exists.
RECENTLY_ENDED_SECONDS = 60
WHAT_TO_DO_UNUSABLE = ("delete it, or put a JPEG, PNG, GIF, WebP, BMP or TIFF image in its place; it is left out "
                       "of training until then")


@dataclass(frozen=True)
class Step:
    """One item of the getting-started checklist."""

    id: str
    title: str
    done: bool
    detail: str
    href: str
    action: str


def checklist(data: TrainingData, *, session: Session) -> list[Step]:
    """The five steps of the loop's first hour, each ticked when what it asks for exists."""
    labels = {label for _, label, _ in data.images}
    deployed = session.scalar(select(func.count()).select_from(ModelVersion)
                              .where(ModelVersion.deployed_at.is_not(None))) or 0
    detected = session.scalar(select(func.count()).select_from(DetectionEvent).where(
        DetectionEvent.status == DetectionStatus.DETECTED, DetectionEvent.previous_event_id.is_(None))) or 0
    workers = session.scalar(select(func.count()).select_from(User).where(User.role == Role.WORKER.value)) or 0
    folded = session.scalar(select(func.count()).select_from(HumanLoop).where(
        HumanLoop.status == HumanLoopStatus.COMPLETED, HumanLoop.copied_key.is_not(None),
        HumanLoop.copied_key.not_like(f"{NONE_OF_THE_ABOVE_FOLDER}%"))) or 0
    return [
        Step("labels", "Upload labeled images", len(labels) >= 2,
             f"{len(data.images)} trainable image(s) in {len(labels)} label(s)" if labels else
             f"a folder per label, at least two labels of {MIN_IMAGES_PER_LABEL}+ images each",
             f"/storage?prefix={LABELED_FOLDER}", "Upload label folders"),
        Step("running", "First model version RUNNING", deployed > 0,
             "a version has served" if deployed else "the next training check trains one; or run it now",
             "/models" if deployed else "/parameters", "See the models" if deployed else "Check training"),
        Step("detection", "First detection", detected > 0,
             f"{detected} image(s) detected" if detected else "upload an image for detection",
             f"/storage?prefix={DETECTION_FOLDER}", "Upload images to detect"),
        Step("reviewers", "Reviewers invited", workers > 0,
             f"{workers} reviewer(s)" if workers else "create users with the worker role; they sign in at /review",
             "/workforce", "Invite reviewers"),
        Step("answer", "First answer folded back into the training data", folded > 0,
             f"{folded} answer(s) copied into the training data" if folded else
             "a reviewer answers a human loop; its image joins that label's folder",
             "/review", "Open the review portal"),
    ]


def training_progress(*, session: Session) -> dict[str, Any] | None:
    """The newest version still training, with its phase, images embedded of total and elapsed seconds."""
    row = session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.TRAINING_IN_PROGRESS.value)
                         .order_by(ModelVersion.id.desc()).limit(1))
    if row is None:
        return None
    progress = row.progress or {}
    started = _moment(progress.get("started_at")) or row.created_at
    if started.tzinfo is None:
        started = started.replace(tzinfo=db.utcnow().tzinfo)
    phase = progress.get("phase", "writing the manifest")
    done, total = int(progress.get("done") or 0), int(progress.get("total") or row.image_count or 0)
    return {"training": True, "version": row.version, "phase": phase, "done": done, "total": total,
            "embedding": phase == "embedding", "images": row.image_count,
            "elapsed_s": round((db.utcnow() - started).total_seconds(), 1), "run_id": row.run_id}


def recently_trained(*, session: Session) -> dict[str, Any] | None:
    """The newest version if its training ended in the last ``RECENTLY_ENDED_SECONDS`` (``finished``, with its
    status and training time), so a dashboard that missed a short training still shows it and reloads."""
    row = newest_version(session=session)
    if row is None or row.training_ended_at is None:
        return None
    ended = row.training_ended_at if row.training_ended_at.tzinfo else \
        row.training_ended_at.replace(tzinfo=db.utcnow().tzinfo)
    if (db.utcnow() - ended).total_seconds() > RECENTLY_ENDED_SECONDS:
        return None
    return {"training": False, "finished": True, "version": row.version, "status": row.status,
            "training_seconds": row.training_seconds, "images": row.image_count, "run_id": row.run_id}


def newest_version(*, session: Session) -> ModelVersion | None:
    """The newest model version, whatever its status."""
    return session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1))


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def problems(data: TrainingData) -> dict[str, Any]:
    """Left-out labels and unusable images, each with the reason and what to do."""
    unusable = [{**item, "todo": WHAT_TO_DO_UNUSABLE,
                 "folder": item["key"].rsplit("/", 1)[0] + "/"} for item in data.unusable[:UNUSABLE_SHOWN]]
    return {"left_out": sorted(data.left_out_labels.items()), "unusable": unusable,
            "unusable_total": len(data.unusable), "any": bool(data.left_out_labels or data.unusable)}
