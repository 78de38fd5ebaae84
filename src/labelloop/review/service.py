"""Human loops: create, lease to a reviewer, answer (first answer wins), stop, expire; the task template."""

from __future__ import annotations

import io
import json
import logging
import re
import unicodedata
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.modeling.images import decode_image
from labelloop.parameters import service as parameters
from labelloop.review.models import NONE_OF_THE_ABOVE, HumanLoop, HumanLoopSource, HumanLoopStatus, TaskTemplate
from labelloop.storage import service as storage
from labelloop.storage.models import LABELED_FOLDER
from labelloop.storage.service import InvalidKey, validate_key

log = logging.getLogger(__name__)

LEASE_SECONDS = 300
MAX_LABEL_LENGTH = 100
_FORBIDDEN_IN_LABEL = re.compile(r"[/\\:*?\"<>|]")


class ReviewError(ValueError):
    """A review request that is not allowed; the message says why."""


class LoopNotFound(KeyError):
    """No human loop has this name."""


class AlreadyAnswered(Exception):
    """The loop was answered (or stopped) before; the first answer wins."""


def validate_label(label: str) -> str:
    """Return ``label`` if it can be a folder name under ``images_labeled_by_folder/``."""
    cleaned = unicodedata.normalize("NFC", label.strip()) if isinstance(label, str) else ""
    if not cleaned:
        raise ReviewError("a label may not be empty")
    if len(cleaned) > MAX_LABEL_LENGTH:
        raise ReviewError(f"a label has at most {MAX_LABEL_LENGTH} characters")
    if _FORBIDDEN_IN_LABEL.search(cleaned) or cleaned.startswith("."):
        raise ReviewError("a label may not contain / \\ : * ? \" < > | or start with '.'")
    try:
        validate_key(f"images_labeled_by_folder/{cleaned}/x")
    except InvalidKey as exc:
        raise ReviewError(f"label {cleaned!r} is not allowed: {exc}") from None
    return cleaned


# ── the task template ────────────────────────────────────────────────────────


def template(*, session: Session) -> TaskTemplate:
    """The task template (created with defaults on first use)."""
    row = session.get(TaskTemplate, 1)
    if row is not None:
        return row
    try:
        with session.begin_nested():  # another worker may create it at the same moment
            session.add(TaskTemplate(id=1, extra_labels=[], full_instructions=(
                "Look at the whole image. Choose the label that names what it shows. If none of the labels "
                "fits, choose None of the Above: the image is then not added to the training data.")))
    except IntegrityError:
        pass
    return session.get(TaskTemplate, 1, populate_existing=True)


def update_template(actor: str, *, session: Session, extra_labels: list[str] | None = None,
                    short_instructions: str | None = None, full_instructions: str | None = None,
                    loop_lifetime_hours: int | None = None) -> TaskTemplate:
    """Change the template's extra labels, instructions or loop lifetime."""
    row = template(session=session)
    if extra_labels is not None:
        labels = [validate_label(label) for label in extra_labels]
        if NONE_OF_THE_ABOVE in labels:
            raise ReviewError(f"{NONE_OF_THE_ABOVE!r} is always offered; it is not a label")
        row.extra_labels = sorted(set(labels))
    if short_instructions is not None:
        row.short_instructions = short_instructions.strip()[:500]
    if full_instructions is not None:
        row.full_instructions = full_instructions.strip()[:10000]
    if loop_lifetime_hours is not None:
        if not 1 <= loop_lifetime_hours <= 24 * 365:
            raise ReviewError("a human loop lives from 1 hour to 8760 hours (a year)")
        row.loop_lifetime_hours = loop_lifetime_hours
    row.updated_at, row.updated_by = db.utcnow(), actor
    return row


def label_choices(*, session: Session) -> list[str]:
    """Labels in the training data plus the template's extra labels (None of the Above is offered apart)."""
    existing = {folder[len(LABELED_FOLDER):].rstrip("/") for folder in storage.backend().folders(LABELED_FOLDER)}
    return sorted(existing | set(template(session=session).extra_labels))


def describe_template(*, session: Session) -> dict[str, Any]:
    """The template as the API shows it."""
    row = template(session=session)
    return {"extra_labels": row.extra_labels, "label_choices": label_choices(session=session),
            "none_of_the_above": NONE_OF_THE_ABOVE, "short_instructions": row.short_instructions,
            "full_instructions": row.full_instructions, "loop_lifetime_hours": row.loop_lifetime_hours,
            "updated_at": row.updated_at, "updated_by": row.updated_by}


# ── loops ────────────────────────────────────────────────────────────────────


def as_dict(loop: HumanLoop) -> dict[str, Any]:
    """A human loop as the API shows it."""
    return {column: getattr(loop, column) for column in (
        "name", "source", "status", "object_key", "model_version", "model_label", "model_confidence",
        "created_at", "expires_at", "completed_at", "answer_label", "answered_by", "output_key", "copied_key",
        "status_message")} | {"detection_id": loop.detection_id}


def create_loop(detection_id: int, source: str) -> dict[str, Any] | None:
    """Open a human loop for a detection unless it has one; returns the new loop or ``None``."""
    with db.session() as session:
        event = session.get(DetectionEvent, detection_id)
        if event.human_loop_name is not None:
            return None
        lifetime = template(session=session).loop_lifetime_hours
        prefix = "sampling" if source == HumanLoopSource.SAMPLING else "detection"
        loop = HumanLoop(name=f"{prefix}-{detection_id}-{uuid.uuid4().hex[:8]}", source=source,
                         detection_id=detection_id, object_key=event.object_key, model_version=event.model_version,
                         model_label=event.label, model_confidence=event.confidence,
                         expires_at=db.utcnow() + timedelta(hours=lifetime),
                         task={"taskObject": event.object_key, "detectionRequestId": event.request_id})
        session.add(loop)
        try:
            session.flush()
        except IntegrityError:  # opened by another run a moment ago
            session.rollback()
            return None
        event.human_loop_name = loop.name
        log.info("human loop created", extra={"loop": loop.name, "source": source, "key": event.object_key})
        return as_dict(loop)


def open_label_audit_loops(keys: list[str], actor: str, *, session: Session) -> list[dict[str, Any]]:
    """Send training images (``images_labeled_by_folder/<label>/…``) back to review as "Label Audit" loops;
    a key with an open audit loop gets no second one. Returns the new loops; :class:`ReviewError` names a key
    that cannot be audited. (Minimal version: the review domain applies the answers.)"""
    lifetime = template(session=session).loop_lifetime_hours
    opened = []
    for key in dict.fromkeys(keys):
        label = storage.label_of(key)
        if label is None or key.endswith("/"):
            raise ReviewError(f"{key!r} is not a training image: a Label Audit reviews an image under "
                              f"{LABELED_FOLDER}<label>/")
        try:
            storage.head_object(key)
        except storage.ObjectNotFound:
            raise ReviewError(f"{key!r} is not stored") from None
        if session.scalar(select(HumanLoop.id).where(
                HumanLoop.object_key == key, HumanLoop.source == HumanLoopSource.LABEL_AUDIT,
                HumanLoop.status == HumanLoopStatus.IN_PROGRESS)) is not None:
            continue
        loop = HumanLoop(name=f"label-audit-{uuid.uuid4().hex[:12]}", source=HumanLoopSource.LABEL_AUDIT,
                         object_key=key, model_label=label, expires_at=db.utcnow() + timedelta(hours=lifetime),
                         task={"taskObject": key, "trainingLabel": label, "requestedBy": actor})
        session.add(loop)
        session.flush()
        opened.append(as_dict(loop))
    log.info("label audit loops opened", extra={"requested": len(keys), "opened": len(opened), "actor": actor})
    return opened


def get_loop(name: str, *, session: Session) -> HumanLoop:
    """The loop named ``name``."""
    loop = session.scalar(select(HumanLoop).where(HumanLoop.name == name))
    if loop is None:
        raise LoopNotFound(f"no human loop named {name!r}")
    return loop


def expire_loops(*, session: Session) -> int:
    """Stop every open loop whose lifetime has passed; returns how many."""
    result = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
        HumanLoop.status == HumanLoopStatus.IN_PROGRESS, HumanLoop.expires_at < db.utcnow()).values(
        status=HumanLoopStatus.STOPPED, status_message="expired", completed_at=db.utcnow()))
    return result.rowcount or 0


def list_loops(*, session: Session, status: str | None = None, source: str | None = None, limit: int = 500,
               offset: int = 0) -> list[HumanLoop]:
    """Loops, newest first."""
    expire_loops(session=session)
    query = select(HumanLoop).order_by(HumanLoop.id.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(HumanLoop.status == status)
    if source:
        query = query.where(HumanLoop.source == source)
    return list(session.scalars(query))


def lease_next(worker: str, seconds: int = LEASE_SECONDS, *, session: Session) -> HumanLoop | None:
    """Lease the oldest open task nobody holds to ``worker`` (or the one they already hold)."""
    expire_loops(session=session)
    now = db.utcnow()
    held = session.scalar(select(HumanLoop).where(HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
                                                  HumanLoop.leased_by == worker, HumanLoop.lease_expires_at > now))
    if held is not None:
        return held
    for candidate in session.scalars(select(HumanLoop.id).where(
            HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
            or_(HumanLoop.leased_by.is_(None), HumanLoop.lease_expires_at <= now)).order_by(HumanLoop.id).limit(20)):
        # Conditional update: two reviewers racing for the same task cannot both win it.
        taken = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
            HumanLoop.id == candidate, HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
            or_(HumanLoop.leased_by.is_(None), HumanLoop.lease_expires_at <= now)).values(
            leased_by=worker, lease_expires_at=now + timedelta(seconds=seconds)))
        if taken.rowcount:
            return session.get(HumanLoop, candidate, populate_existing=True)
    return None


def claim_answer(name: str, label: str, worker: str) -> dict[str, Any]:
    """Record the first answer to a loop (Completed); a later answer raises :class:`AlreadyAnswered`."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        if label != NONE_OF_THE_ABOVE:
            label = validate_label(label)
            choices = label_choices(session=session)
            if label not in choices:
                raise ReviewError(f"{label!r} is not one of the task's labels: {', '.join(choices)} "
                                  f"(or {NONE_OF_THE_ABOVE}); an operator can add labels to the task template")
        claimed = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
            HumanLoop.id == loop.id, HumanLoop.status == HumanLoopStatus.IN_PROGRESS).values(
            status=HumanLoopStatus.COMPLETED, answer_label=label, answered_by=worker, completed_at=db.utcnow(),
            leased_by=None, lease_expires_at=None))
        if not claimed.rowcount:
            session.refresh(loop)
            raise AlreadyAnswered(f"human loop {name} is {loop.status} already"
                                  + (f" (answered {loop.answer_label!r})" if loop.answer_label else ""))
        session.refresh(loop)
        return as_dict(loop)


def copy_key(loop_name: str, object_key: str, label: str) -> str:
    """Where an answered image is copied: the same key for the same loop, so a retry never copies twice."""
    unique = uuid.uuid5(uuid.NAMESPACE_URL, f"labelloop:{loop_name}")
    original = object_key.rsplit("/", 1)[-1]
    return f"images_labeled_by_folder/{label}/humanLoopName-{loop_name}-{unique}-{original}"[:1024]


def copy_to_training_data(name: str) -> dict[str, Any] | None:
    """Copy an answered detection loop's image under its label's folder (nothing for None of the Above, nor
    for sampling loops unless Train-On-Audit-Corrections is on and the answer disagrees with the model);
    returns the stored object. The caller fires its "object created" event."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        if loop.answer_label in (None, NONE_OF_THE_ABOVE):
            return None
        if loop.source == HumanLoopSource.SAMPLING and not teaches(loop, session=session):
            return None
        key = copy_key(loop.name, loop.object_key, loop.answer_label)
        source_key = loop.object_key
    _, data = storage.get_object(source_key)
    info = storage.put_object(key, data, source="human loop")
    with db.session() as session:
        get_loop(name, session=session).copied_key = key
    return info.model_dump(mode="json")


def teaches(loop: HumanLoop, *, session: Session) -> bool:
    """Whether a sampling loop's answer becomes training data: one that caught the model wrong, with
    Train-On-Audit-Corrections on. The estimates stay honest: an audit judges only the version that made the
    detection, and the F1 gate leaves out answers about images a version trained on."""
    return (loop.answer_label != loop.model_label
            and parameters.value(parameters.TRAIN_ON_AUDIT_CORRECTIONS, session=session))


def write_output(name: str) -> str:
    """Write the loop's output in A2I's shape to ``a2i-human-loop-data/`` and return its key."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        day = loop.completed_at or db.utcnow()
        key = f"a2i-human-loop-data/{day:%Y/%m/%d}/{loop.name}/output.json"
        output = {
            "humanLoopName": loop.name,
            "inputContent": {**loop.task, "source": loop.source, "modelLabel": loop.model_label,
                             "modelConfidence": loop.model_confidence, "modelVersion": loop.model_version},
            "humanAnswers": [{"answerContent": {"crowd-image-classifier": {"label": loop.answer_label}},
                              "submissionTime": day.isoformat(), "workerId": loop.answered_by}],
            "humanLoopStatus": loop.status,
        }
    storage.put_object(key, json.dumps(output, indent=1, default=str).encode(), source="human loop")
    with db.session() as session:
        get_loop(name, session=session).output_key = key
    return key


def record_on_detection(name: str) -> dict[str, Any]:
    """Write the answer onto the loop's detection event."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        event = session.get(DetectionEvent, loop.detection_id)
        event.human_label, event.human_worker = loop.answer_label, loop.answered_by
        event.human_answered_at = loop.completed_at
        return {"detection_id": event.id, "human_label": event.human_label, "model_label": event.label,
                "agrees": event.human_label == event.label}


def stop_loop(name: str, actor: str, *, session: Session) -> HumanLoop:
    """Stop an open loop (it can no longer be answered)."""
    loop = get_loop(name, session=session)
    stopped = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
        HumanLoop.id == loop.id, HumanLoop.status == HumanLoopStatus.IN_PROGRESS).values(
        status=HumanLoopStatus.STOPPED, status_message=f"stopped by {actor}", completed_at=db.utcnow()))
    if not stopped.rowcount:
        raise AlreadyAnswered(f"human loop {name} is {loop.status}; only InProgress loops can be stopped")
    session.refresh(loop)
    return loop


# ── the review portal (one task at a time, leased) ───────────────────────────


class LeaseNotHeld(ReviewError):
    """The worker does not hold this task's lease (it expired and went to someone else, or never was theirs)."""


_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
                (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def open_task_count(*, session: Session) -> int:
    """How many tasks are waiting for an answer (InProgress and not past their lifetime), leased ones included.

    Counts without writing, so it is safe in a session that already holds loaded loops."""
    return session.scalar(select(func.count()).select_from(HumanLoop).where(
        HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
        or_(HumanLoop.expires_at.is_(None), HumanLoop.expires_at >= db.utcnow()))) or 0


def held_task(name: str, worker: str, *, session: Session) -> HumanLoop:
    """The open task ``name`` if ``worker`` holds its live lease, else :class:`LeaseNotHeld`."""
    loop = get_loop(name, session=session)
    now = db.utcnow()
    expires = loop.lease_expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=now.tzinfo)
    if loop.status != HumanLoopStatus.IN_PROGRESS or loop.leased_by != worker or expires is None or expires <= now:
        raise LeaseNotHeld(f"you do not hold the task {name} (any more)")
    return loop


def task_view(loop: HumanLoop, *, session: Session) -> dict[str, Any]:
    """What the portal shows for a task. Sampling tasks leave out the model's guess, so reviewers are not
    biased by it."""
    row = template(session=session)
    show_guess = loop.source != HumanLoopSource.SAMPLING and loop.model_label is not None
    return {"name": loop.name, "source": loop.source, "choices": label_choices(session=session),
            "none_of_the_above": NONE_OF_THE_ABOVE, "short_instructions": row.short_instructions,
            "full_instructions": row.full_instructions, "lease_expires_at": loop.lease_expires_at,
            "model_label": loop.model_label if show_guess else None,
            "model_confidence": loop.model_confidence if show_guess else None}


def answer_task(name: str, label: str, worker: str) -> dict[str, Any]:
    """A portal answer: refused when someone else now holds the task's lease, else as :func:`claim_answer`.

    A worker whose lease ran out may still answer while nobody else has taken the task (first answer wins)."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        lease_end = loop.lease_expires_at
        if lease_end is not None and lease_end.tzinfo is None:
            lease_end = lease_end.replace(tzinfo=db.utcnow().tzinfo)
        if loop.leased_by not in (None, worker) and lease_end is not None and lease_end > db.utcnow():
            raise LeaseNotHeld(f"the task {name} went to another reviewer after your lease ran out")
    return claim_answer(name, label, worker)


def release_lease(worker: str, *, session: Session) -> int:
    """Give back every task ``worker`` holds (they stopped working); returns how many."""
    result = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
        HumanLoop.leased_by == worker, HumanLoop.status == HumanLoopStatus.IN_PROGRESS).values(
        leased_by=None, lease_expires_at=None))
    return result.rowcount or 0


def task_image(name: str, worker: str) -> tuple[bytes, str]:
    """The image of a task ``worker`` holds, with an image content type a browser shows.

    PNG, JPEG, GIF, BMP and WebP are served as stored; any other format (TIFF …) is re-encoded as PNG after
    the same checks the model's decoder makes, so the response is always a plain image."""
    with db.session() as session:
        key = held_task(name, worker, session=session).object_key
    _, data = storage.get_object(key)
    for magic, media_type in _IMAGE_TYPES:
        if data.startswith(magic):
            return data, media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    buffer = io.BytesIO()
    decode_image(data).save(buffer, "PNG")
    return buffer.getvalue(), "image/png"


AUDIT_ANSWERS_USED = 500


def review_evidence(limit: int = AUDIT_ANSWERS_USED) -> dict[str, Any]:
    """What human review knows about production traffic, for the F1 gate's production estimate.

    `review_share`: the share of detections that went to human review for low confidence;
    `reviewed_keys`: the training-data keys those answers were copied to; `audit`: (object key, label) of
    the `limit` newest human-sampling answers (None of the Above left out), which never become training data.
    """
    with db.session() as session:
        detected = session.scalar(select(func.count()).select_from(DetectionEvent)
                                  .where(DetectionEvent.status == DetectionStatus.DETECTED,
                                         DetectionEvent.previous_event_id.is_(None))) or 0  # arrivals only
        reviewed = session.scalar(select(func.count()).select_from(HumanLoop)
                                  .where(HumanLoop.source == HumanLoopSource.DETECTION)) or 0
        copied = session.scalars(select(HumanLoop.copied_key).where(
            HumanLoop.source == HumanLoopSource.DETECTION, HumanLoop.copied_key.is_not(None)))
        audit = session.execute(select(HumanLoop.object_key, HumanLoop.answer_label).where(
            HumanLoop.source == HumanLoopSource.SAMPLING, HumanLoop.status == HumanLoopStatus.COMPLETED,
            HumanLoop.answer_label.is_not(None), HumanLoop.answer_label != NONE_OF_THE_ABOVE)
            .order_by(HumanLoop.completed_at.desc(), HumanLoop.id.desc()).limit(limit))
        return {"review_share": min(1.0, reviewed / detected) if detected else 0.0,
                "reviewed_keys": set(copied), "audit": [(key, label) for key, label in audit]}
