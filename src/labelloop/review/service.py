"""Human loops: create, lease to a reviewer, answer (first answer wins), stop, expire; the task template."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from collections import Counter
from datetime import UTC, timedelta
from statistics import median
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop import db, labels
from labelloop.config import get_settings
from labelloop.detection import silent_errors
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.modeling import dataset
from labelloop.modeling.images import decode_image
from labelloop.parameters import service as parameters
from labelloop.review.models import (
    MAX_REVIEWERS,
    NONE_OF_THE_ABOVE,
    AnswerKind,
    GoldTask,
    HumanAnswer,
    HumanLoop,
    HumanLoopSource,
    HumanLoopStatus,
    TaskTemplate,
)
from labelloop.storage import service as storage
from labelloop.storage.models import HUMAN_LOOP_FOLDER, LABELED_FOLDER, ObjectInfo
from labelloop.workforce.models import User

log = logging.getLogger(__name__)

# Where a Label Audit answered None of the Above moves the image: out of the training data, kept for a person.
AUDIT_REMOVED_FOLDER = "label-audit-removed/"


class ReviewError(ValueError):
    """A review request that is not allowed; the message says why."""


class LoopNotFound(KeyError):
    """No human loop has this name."""


class AlreadyAnswered(Exception):
    """The loop was answered (or stopped) before; the first answer wins."""


class LeaseNotHeld(ReviewError):
    """The worker does not hold this task's lease (it expired and went to someone else, or never was theirs)."""


class ReviewerPaused(ReviewError):
    """An admin paused this reviewer from review."""


class ImageChanged(ReviewError):
    """The object at the loop's key is no longer the content the loop was opened for."""


def validate_label(label: str) -> str:
    """Return ``label`` as the one label rule writes it (``labelloop.labels.check_label``), else ReviewError."""
    try:
        return labels.check_label(label)
    except labels.InvalidLabel as exc:
        raise ReviewError(str(exc)) from None


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
                    loop_lifetime_hours: int | None = None,
                    task_time_limit_seconds: int | None = None, reviewers_per_task: dict[str, int] | None = None,
                    min_agreement: float | None = None) -> TaskTemplate:
    """Change the template's extra labels, instructions, loop lifetime, task time limit, reviewers per task (by
    loop source) or the agreement a consolidated label needs."""
    row = template(session=session)
    if extra_labels is not None:
        row.extra_labels = _extra_labels(extra_labels)
    if short_instructions is not None:
        row.short_instructions = short_instructions.strip()[:500]
    if full_instructions is not None:
        row.full_instructions = full_instructions.strip()[:10000]
    if loop_lifetime_hours is not None:
        if not 1 <= loop_lifetime_hours <= 24 * 365:
            raise ReviewError("a human loop lives from 1 hour to 8760 hours (a year)")
        row.loop_lifetime_hours = loop_lifetime_hours
    if task_time_limit_seconds is not None:
        if not 30 <= task_time_limit_seconds <= 8 * 3600:
            raise ReviewError("a task time limit is from 30 to 28800 seconds (8 hours), as A2I allows")
        row.task_time_limit_seconds = task_time_limit_seconds
    if reviewers_per_task is not None:
        row.reviewers_per_task = checked_reviewers(reviewers_per_task)
    if min_agreement is not None:
        if not 0.5 <= min_agreement <= 1.0:
            raise ReviewError("min_agreement is the share of answers the majority label needs: 0.5 to 1.0")
        row.min_agreement = min_agreement
    row.updated_at, row.updated_by = db.utcnow(), actor
    return row


def _extra_labels(given: list[str]) -> list[str]:
    """The template's extra labels under the one label rule, none a case-only twin of a trained label or of
    another one given."""
    known = [folder[len(LABELED_FOLDER):].rstrip("/") for folder in storage.backend().folders(LABELED_FOLDER)]
    chosen: list[str] = []
    for name in given:
        try:
            label = labels.check_new_label(name, known + chosen)
        except labels.InvalidLabel as exc:
            raise ReviewError(str(exc)) from None
        if label == NONE_OF_THE_ABOVE:
            raise ReviewError(f"{NONE_OF_THE_ABOVE!r} is always offered; it is not a label")
        chosen.append(label)
    return sorted(set(chosen))


SOURCES = (HumanLoopSource.DETECTION, HumanLoopSource.SAMPLING, HumanLoopSource.LABEL_AUDIT)


def checked_reviewers(reviewers: dict[str, int]) -> dict[str, int]:
    """``reviewers`` (loop source → distinct reviewers per task) if every source is known and every number is
    1-9, as Ground Truth allows; else :class:`ReviewError` saying what is allowed."""
    unknown = sorted(set(reviewers) - set(SOURCES))
    if unknown:
        raise ReviewError(f"unknown loop source(s) {', '.join(unknown)}; the sources are {', '.join(SOURCES)}")
    for source, count in reviewers.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REVIEWERS:
            raise ReviewError(f"reviewers per task for {source!r} must be a whole number from 1 to "
                              f"{MAX_REVIEWERS}, not {count!r}")
    return dict(reviewers)


def reviewers_for(source: str, *, session: Session) -> int:
    """Distinct reviewers a new loop of ``source`` asks for (the template's number, default 1)."""
    return reviewers_in(template(session=session), source)


def reviewers_in(task_template: TaskTemplate, source: str) -> int:
    """:func:`reviewers_for` with the template already read (a batch reads it once)."""
    return task_template.reviewers_per_task.get(source, 1)


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
            "task_time_limit_seconds": row.task_time_limit_seconds,
            "reviewers_per_task": {source: row.reviewers_per_task.get(source, 1) for source in SOURCES},
            "min_agreement": row.min_agreement, "updated_at": row.updated_at,
            "updated_by": row.updated_by}


# ── loops ────────────────────────────────────────────────────────────────────


GUESS_FIELDS = ("model_version", "model_label", "model_confidence")


def as_dict(loop: HumanLoop, *, reviewer_view: bool = False) -> dict[str, Any]:
    """A human loop as the API shows it; ``reviewer_view`` (a worker asking) leaves out the model's guess on
    audit loops, as the portal does."""
    shown = {column: getattr(loop, column) for column in (
        "name", "source", "status", "object_key", "object_etag", *GUESS_FIELDS, "created_at", "expires_at",
        "completed_at", "answer_label", "answered_by", "answer_round", "output_key", "copied_key", "applied_at",
        "status_message", "required_answers", "leased_by", "leased_at", "lease_expires_at")} | {
        "detection_id": loop.detection_id, "answers": [
        {"worker": a.worker, "label": a.label, "kind": a.kind, "submitted_at": a.submitted_at}
        for a in loop.answers]} | shown_copies(loop.copied_key)
    return for_reviewer(shown) if reviewer_view else shown


def shown_copies(key: str | None) -> dict[str, str | None]:
    """A loop's stored copy as the API shows it. ``copied_key`` (the seed's CopiedS3ObjectKey) names a copy in a
    label folder only: a None of the Above answer still adds nothing there, as the seed says. The copy that
    trains the hidden class (Learn-From-None-Of-The-Above) is ``none_of_the_above_key``."""
    if key and key.startswith(dataset.NONE_OF_THE_ABOVE_FOLDER):
        return {"copied_key": None, "none_of_the_above_key": key}
    return {"copied_key": key, "none_of_the_above_key": None}


# What a reviewer is never shown: where the image is stored (a training image's key names its label, a gold
# task's would give it away) and where the answer went.
HIDDEN_FROM_REVIEWERS = ("object_key", "object_etag", "detection_id", "output_key", "copied_key",
                         "none_of_the_above_key")


def for_reviewer(shown: dict[str, Any]) -> dict[str, Any]:
    """A loop as :func:`as_dict` shows it to a reviewer: without the others' answers, the storage keys, the run,
    and the model's guess unless it is a detection loop; a gold task looks like the audit it is served as."""
    shown = shown | {"answers": None, "leased_by": None} | dict.fromkeys(HIDDEN_FROM_REVIEWERS)
    if "run_id" in shown:
        shown["run_id"] = None
    if shown["source"] == HumanLoopSource.GOLD:
        shown = _as_served(shown)
    if shown["source"] == HumanLoopSource.DETECTION:
        return shown
    return shown | dict.fromkeys(GUESS_FIELDS)


def gold_disguise(name: str) -> str:
    """The source a gold loop named ``name`` is served as: a Label Audit when named like one, else an audit."""
    return HumanLoopSource.LABEL_AUDIT if name.startswith("label-audit-") else HumanLoopSource.SAMPLING


def _as_served(shown: dict[str, Any]) -> dict[str, Any]:
    """A gold loop as a real loop of its disguise would look after this reviewer's answer: still waiting when
    that source asks several reviewers, applied once the undo window has passed."""
    source = gold_disguise(shown["name"])
    with db.session() as session:
        required = reviewers_for(source, session=session)
    shown = shown | {"source": source, "required_answers": required, "status_message": ""}
    if shown["status"] != HumanLoopStatus.COMPLETED:
        return shown
    if required > 1:
        return shown | {"status": HumanLoopStatus.IN_PROGRESS, "answer_label": None, "answered_by": None,
                        "completed_at": None, "applied_at": None}
    completed = shown["completed_at"]
    completed = completed.replace(tzinfo=UTC) if completed.tzinfo is None else completed
    undo_ends = completed + timedelta(seconds=get_settings().undo_seconds)
    return shown | {"applied_at": undo_ends if undo_ends <= db.utcnow() else None}


def create_loop(detection_id: int, source: str, *, session: Session | None = None) -> dict[str, Any] | None:
    """Open a human loop for a detection unless it has one; returns the new loop or ``None``.

    With ``session`` the loop is written in the caller's transaction (an ``IntegrityError`` at its commit means
    another run opened one a moment ago); without, in a transaction of its own."""
    if session is not None:
        return _create_loop(detection_id, source, session=session)
    with db.session() as own:
        try:
            return _create_loop(detection_id, source, session=own)
        except IntegrityError:  # opened by another run a moment ago
            own.rollback()
            return None


def _create_loop(detection_id: int, source: str, *, session: Session) -> dict[str, Any] | None:
    event = session.get(DetectionEvent, detection_id)
    if event.human_loop_name is not None:
        return None
    loop = new_loop(event, source, template(session=session))
    session.add(loop)
    session.flush()
    event.human_loop_name = loop.name
    _log_created(loop)
    return as_dict(loop)


def new_loop(event: Any, source: str, task_template: TaskTemplate) -> HumanLoop:
    """A human loop of ``source`` for detection ``event`` (an ORM row or a batch's ``EventRow``), not added to any
    session: its lifetime and reviewers from ``task_template``, every other column its default (as a flush would)."""
    prefix = "sampling" if source == HumanLoopSource.SAMPLING else "detection"
    now = db.utcnow()
    return HumanLoop(**db.with_defaults(HumanLoop.__table__, {
        "name": f"{prefix}-{event.id}-{uuid.uuid4().hex[:8]}", "source": source, "detection_id": event.id,
        "object_key": event.object_key, "model_version": event.model_version, "model_label": event.label,
        "model_confidence": event.confidence, "object_etag": event.etag, "created_at": now,
        "required_answers": reviewers_in(task_template, source),
        "expires_at": now + timedelta(hours=task_template.loop_lifetime_hours),
        "task": {"taskObject": event.object_key, "detectionRequestId": event.request_id}}))


def stage_loops(wanted: list[tuple[Any, str]], *, session: Session) -> list[HumanLoop]:
    """A batch's new human loops, one per (event, source) in ``wanted`` whose event has none yet (the task template
    read once), each event given its loop's name; :func:`write_loops` writes them once the caller has written the
    events, so the batch takes SQLite's write lock at its end."""
    wanted = [(event, source) for event, source in wanted if event.human_loop_name is None]
    if not wanted:
        return []
    task_template = template(session=session)
    loops = []
    for event, source in wanted:
        loop = new_loop(event, source, task_template)
        event.human_loop_name = loop.name
        loops.append(loop)
    return loops


def write_loops(loops: list[HumanLoop], *, session: Session) -> None:
    """Write the loops :func:`stage_loops` made, in one executemany INSERT."""
    db.insert_all(session, loops)
    for loop in loops:
        _log_created(loop)


def _log_created(loop: HumanLoop) -> None:
    log.info("human loop created", extra={"loop": loop.name, "source": loop.source, "key": loop.object_key})


def open_label_audit_loops(keys: list[str], actor: str, *, session: Session) -> list[dict[str, Any]]:
    """Send training images (``images_labeled_by_folder/<label>/…``) back to review as "Label Audit" loops;
    a key with an open audit loop gets no second one. The answer moves the image (see
    :func:`apply_label_audit`). Returns the new loops; :class:`ReviewError` names a key that cannot be audited."""
    lifetime = template(session=session).loop_lifetime_hours
    opened = []
    for key in dict.fromkeys(keys):
        label = storage.label_of(key)
        if label is None or key.endswith("/"):
            raise ReviewError(f"{key!r} is not a training image: a Label Audit reviews an image under "
                              f"{LABELED_FOLDER}<label>/")
        try:
            info = storage.head_object(key)
        except storage.ObjectNotFound:
            raise ReviewError(f"{key!r} is not stored") from None
        if session.scalar(select(HumanLoop.id).where(
                HumanLoop.object_key == key, HumanLoop.source == HumanLoopSource.LABEL_AUDIT,
                HumanLoop.status == HumanLoopStatus.IN_PROGRESS)) is not None:
            continue
        loop = HumanLoop(name=f"label-audit-{uuid.uuid4().hex[:12]}", source=HumanLoopSource.LABEL_AUDIT,
                         object_key=key, object_etag=info.etag, model_label=label,
                         required_answers=reviewers_for(HumanLoopSource.LABEL_AUDIT, session=session),
                         expires_at=db.utcnow() + timedelta(hours=lifetime),
                         task={"taskObject": key, "trainingLabel": label, "requestedBy": actor})
        session.add(loop)
        session.flush()
        opened.append(as_dict(loop))
    log.info("label audit loops opened", extra={"requested": len(keys), "opened": len(opened), "actor": actor})
    return opened


def correct_answer(name: str, label: str, actor: str, *, session: Session) -> HumanLoop:
    """An operator corrects an applied answer: the loop gets the new label in a new round, whose run moves the
    training copy (or removes it for None of the Above), rewrites the output and the detection's answer."""
    loop = get_loop(name, session=session)
    label = checked_answer(label, session=session)
    if loop.source == HumanLoopSource.GOLD:
        raise ReviewError(f"human loop {name} is a gold task: its label is the gold task's, its answer only "
                          "scores the reviewer")
    if loop.status != HumanLoopStatus.COMPLETED or loop.applied_at is None:
        raise ReviewError(f"human loop {name} is {loop.status}, not applied yet: only applied answers are "
                          "corrected (its reviewer can undo an answer in its undo window)")
    if label == loop.answer_label:
        raise ReviewError(f"human loop {name} is answered {label!r} already")
    previous, now = loop.answer_label, db.utcnow()
    mine = next((a for a in loop.answers if a.worker == actor), None)
    if mine is None:
        loop.answers.append(HumanAnswer(worker=actor, label=label, kind=AnswerKind.CORRECTION, accepted_at=now,
                                        submitted_at=now))
    else:  # an operator who reviewed it, or corrects it again: their answer becomes the correction
        mine.label, mine.kind, mine.submitted_at = label, AnswerKind.CORRECTION, now
    loop.answer_label, loop.answer_round = label, loop.answer_round + 1
    loop.applied_at, loop.apply_started_at = None, db.utcnow()  # no undo window for a correction
    loop.status_message = f"corrected by {actor} from {previous!r} to {label!r}"
    log.info("answer corrected", extra={"loop": name, "from": previous, "to": label, "actor": actor})
    return loop


def copied_keys(names: list[str], *, session: Session) -> dict[str, str | None]:
    """Where each named loop's answer put its image in the training data (the seed's CopiedS3ObjectKey)."""
    found: dict[str, str | None] = {}
    for start in range(0, len(names), 500):
        rows = session.execute(select(HumanLoop.name, HumanLoop.copied_key).where(
            HumanLoop.name.in_(names[start:start + 500])))
        # a Result has keys(): not a mapping to update from
        found.update((name, shown_copies(key)["copied_key"]) for name, key in rows)
    return found


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
               offset: int = 0, gold_as_audits: bool = False) -> list[HumanLoop]:
    """Loops, newest first; ``gold_as_audits`` (a reviewer asking) lists gold loops under the source they are
    served as, never under their own."""
    expire_loops(session=session)
    query = select(HumanLoop).order_by(HumanLoop.id.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(HumanLoop.status == status)
    if source and gold_as_audits and source in (HumanLoopSource.SAMPLING, HumanLoopSource.LABEL_AUDIT):
        served_as = HumanLoop.name.like("label-audit-%")
        query = query.where(or_(HumanLoop.source == source, (HumanLoop.source == HumanLoopSource.GOLD) & (
            served_as if source == HumanLoopSource.LABEL_AUDIT else ~served_as)))
    elif source:  # a reviewer asking for "Gold" finds none: gold loops are never shown as such
        query = query.where(HumanLoop.source == source,
                            *([HumanLoop.source != HumanLoopSource.GOLD] if gold_as_audits else []))
    return list(session.scalars(query))


def held_by(worker: str, *, session: Session) -> HumanLoop | None:
    """The open task ``worker`` holds a live lease on, if any."""
    return session.scalar(select(HumanLoop).where(HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
                                                  HumanLoop.leased_by == worker,
                                                  HumanLoop.lease_expires_at > db.utcnow()))


def _free_for(worker: str, now: Any) -> tuple[Any, ...]:
    """Conditions of a real task ``worker`` may take: open, nobody's live lease, not answered by them (gold
    loops are served to one reviewer only, never from the queue)."""
    answered = select(HumanAnswer.id).where(HumanAnswer.loop_id == HumanLoop.id, HumanAnswer.worker == worker)
    return (HumanLoop.status == HumanLoopStatus.IN_PROGRESS, HumanLoop.source != HumanLoopSource.GOLD,
            or_(HumanLoop.leased_by.is_(None), HumanLoop.lease_expires_at <= now), ~answered.exists())


def task_waiting(worker: str, *, session: Session) -> bool:
    """Whether a real task waits that ``worker`` could take."""
    return session.scalar(select(HumanLoop.id).where(*_free_for(worker, db.utcnow())).limit(1)) is not None


def lease_next(worker: str, *, session: Session) -> HumanLoop | None:
    """Lease the oldest open task nobody holds to ``worker`` (or the one they already hold), for the task
    template's time limit; a lease past it returns the task to the queue. (The portal leases through
    ``review.gold.lease_next``, which mixes gold tasks in.)"""
    expire_loops(session=session)
    if worker in template(session=session).paused_reviewers:
        return None
    held = held_by(worker, session=session)
    if held is not None:
        return held
    now = db.utcnow()
    seconds = template(session=session).task_time_limit_seconds
    free = _free_for(worker, now)
    for candidate in session.scalars(select(HumanLoop.id).where(*free).order_by(HumanLoop.id).limit(20)):
        # Conditional update: two reviewers racing for the same task cannot both win it; nobody gets a task
        # they answered.
        taken = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
            HumanLoop.id == candidate, *free).values(
            leased_by=worker, leased_at=now, lease_expires_at=now + timedelta(seconds=seconds)))
        if taken.rowcount:
            return session.get(HumanLoop, candidate, populate_existing=True)
    return None


def checked_answer(label: str, *, session: Session) -> str:
    """``label`` as an answer: None of the Above, or one of the task's label choices."""
    if label == NONE_OF_THE_ABOVE:
        return label
    label = validate_label(label)
    choices = label_choices(session=session)
    if label not in choices:
        raise ReviewError(f"{label!r} is not one of the task's labels: {', '.join(choices)} "
                          f"(or {NONE_OF_THE_ABOVE}); an operator can add labels to the task template")
    return label


def claim_answer(name: str, label: str, worker: str) -> dict[str, Any]:
    """Record a reviewer's answer. The loop stays open until its required number of distinct reviewers answered,
    then it is Completed with their consolidated label (:func:`consolidate`), or asks one more reviewer when
    they disagree beyond the template's ``min_agreement`` (up to 9).

    Refused (:class:`LeaseNotHeld`) while another reviewer holds the task's live lease. The same answer sent
    again by the same reviewer (a retry after a lost response) returns the recorded loop, so a retry never
    loses an answer; any other later answer raises :class:`AlreadyAnswered`."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        label = checked_answer(label, session=session)
        if worker in template(session=session).paused_reviewers:
            raise ReviewerPaused(f"{worker} is paused from review by an admin; the answer was not recorded")
        now = db.utcnow()
        accepted = loop.leased_at if loop.leased_by == worker else None
        # Taking the slot also locks the loop's row, so answers to one loop are counted one at a time.
        took = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
            HumanLoop.id == loop.id, HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
            or_(HumanLoop.leased_by.is_(None), HumanLoop.leased_by == worker, HumanLoop.lease_expires_at <= now))
            .values(leased_by=None, lease_expires_at=None))
        session.refresh(loop)
        session.expire(loop, ["answers"])
        mine = next((a for a in loop.answers if a.worker == worker), None)
        if mine is not None:
            if (mine.label, mine.kind) == (label, AnswerKind.REVIEW):
                return as_dict(loop)
            raise AlreadyAnswered(f"you answered human loop {name} already ({mine.label!r}); an operator can "
                                  "correct an answer once it is applied")
        if not took.rowcount:
            if loop.status == HumanLoopStatus.IN_PROGRESS:
                raise LeaseNotHeld(f"the task {name} is held by another reviewer; answer the tasks you hold "
                                   "(POST /review/work or the portal gives you one)")
            raise AlreadyAnswered(f"human loop {name} is {loop.status} already"
                                  + (f" (answered {loop.answer_label!r})" if loop.answer_label else ""))
        loop.answers.append(HumanAnswer(worker=worker, label=label, kind=AnswerKind.REVIEW, accepted_at=accepted or now,
                                        submitted_at=now))
        _complete_if_answered(loop, worker, now, session=session)
        log.info("human loop answered", extra={"loop": name, "label": label, "worker": worker,
                                               "status": loop.status, "round": loop.answer_round})
        return as_dict(loop)


def _complete_if_answered(loop: HumanLoop, worker: str, now: Any, *, session: Session) -> None:
    """Complete ``loop`` with its consolidated label once enough reviewers answered, or escalate it."""
    reviews = [a for a in loop.answers if a.kind == AnswerKind.REVIEW]
    if len(reviews) < loop.required_answers:
        return
    label, share = consolidate(reviews, session=session)
    needed = template(session=session).min_agreement
    if share < needed and loop.required_answers < MAX_REVIEWERS:
        loop.required_answers += 1
        loop.status_message = (f"escalated: {share:.0%} of {len(reviews)} answers agree, {needed:.0%} needed; "
                               f"one more reviewer asked")
        log.info("human loop escalated", extra={"loop": loop.name, "answers": len(reviews), "agreement": share})
        return
    loop.status, loop.answer_label, loop.answered_by, loop.completed_at = (
        HumanLoopStatus.COMPLETED, label, worker, now)
    if loop.source == HumanLoopSource.GOLD:  # it only scores the reviewer: nothing to apply
        loop.applied_at = now
    if len(reviews) > 1:
        loop.status_message = f"consolidated from {len(reviews)} answers ({share:.0%} agree)"


def consolidate(answers: list[HumanAnswer], *, session: Session) -> tuple[str, float]:
    """The loop's label by majority vote, a tie going to the label whose reviewers are more reliable
    (:func:`reviewer_reliability`), then the first in alphabetical order; returns it with the share of answers
    that gave it."""
    counts = Counter(a.label for a in answers)
    top = max(counts.values())
    tied = sorted(label for label, count in counts.items() if count == top)
    if len(tied) > 1:
        reliability = reviewer_reliability([a.worker for a in answers], session=session)
        weight = {label: sum(reliability[a.worker] for a in answers if a.label == label) for label in tied}
        tied.sort(key=lambda label: -weight[label])
    return tied[0], top / len(answers)


def reviewer_reliability(workers: list[str], *, session: Session) -> dict[str, float]:
    """Each reviewer's agreement with the final label of the loops they answered (the known label of gold
    tasks), smoothed as (agreed + 1) / (answered + 2): the one-coin Dawid–Skene estimate of accuracy, taken
    against the consolidated (or operator-corrected) labels rather than iterated, which is enough to break
    ties."""
    tally = {worker: [0, 0] for worker in workers}
    for worker, answer, final in session.execute(
            select(HumanAnswer.worker, HumanAnswer.label, func.coalesce(GoldTask.label, HumanLoop.answer_label))
            .join(HumanLoop, HumanLoop.id == HumanAnswer.loop_id)
            .outerjoin(GoldTask, GoldTask.id == HumanLoop.gold_task_id)
            .where(HumanAnswer.worker.in_(workers), HumanAnswer.kind == AnswerKind.REVIEW,
                   HumanLoop.status == HumanLoopStatus.COMPLETED, HumanLoop.answer_label.is_not(None))):
        tally[worker][0] += answer == final
        tally[worker][1] += 1
    return {worker: (agreed + 1) / (answered + 2) for worker, (agreed, answered) in tally.items()}


def undo_last_answer(worker: str, *, session: Session) -> HumanLoop:
    """Take back ``worker``'s last answer within the undo window, while no run has started applying it: the
    answer is removed and the task is theirs again (a Completed loop reopens in a new round). Otherwise
    :class:`ReviewError`."""
    window = get_settings().undo_seconds
    now = db.utcnow()
    too_late = ReviewError(f"too late to undo: answers can be undone for {window:g} s, before they are applied; "
                           "an operator can still correct an applied answer")
    mine = session.scalar(select(HumanAnswer).where(HumanAnswer.worker == worker,
                                                    HumanAnswer.kind == AnswerKind.REVIEW)
                          .order_by(HumanAnswer.submitted_at.desc(), HumanAnswer.id.desc()).limit(1))
    if mine is None:
        raise ReviewError("you have no answer to undo")
    if mine.submitted_at <= now - timedelta(seconds=window):
        raise too_late
    loop = session.get(HumanLoop, mine.loop_id)
    release_lease(worker, session=session)
    lease = {"leased_by": worker, "leased_at": now,
             "lease_expires_at": now + timedelta(seconds=template(session=session).task_time_limit_seconds)}
    if loop.status == HumanLoopStatus.COMPLETED:
        changed = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
            HumanLoop.id == loop.id, HumanLoop.status == HumanLoopStatus.COMPLETED,
            HumanLoop.apply_started_at.is_(None)).values(
            status=HumanLoopStatus.IN_PROGRESS, answer_label=None, answered_by=None, completed_at=None,
            answer_round=HumanLoop.answer_round + 1, **lease))
    elif loop.status == HumanLoopStatus.IN_PROGRESS:  # other reviewers still to answer
        changed = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
            HumanLoop.id == loop.id, HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
            or_(HumanLoop.leased_by.is_(None), HumanLoop.lease_expires_at <= now)).values(**lease))
    else:
        raise too_late
    if loop.status == HumanLoopStatus.COMPLETED and not changed.rowcount:
        raise too_late
    session.delete(mine)
    session.flush()
    session.refresh(loop)
    session.expire(loop, ["answers"])
    log.info("answer undone", extra={"loop": loop.name, "worker": worker, "round": loop.answer_round})
    return loop


# ── applying an answer (the steps of the apply run) ──────────────────────────


def undo_seconds_left(name: str, answer_round: int) -> float:
    """How long the answer of ``answer_round`` can still be undone (0 when it was undone or the window passed)."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        if loop.answer_round != answer_round or loop.completed_at is None:
            return 0.0
        elapsed = (db.utcnow() - loop.completed_at).total_seconds()
        return max(0.0, get_settings().undo_seconds - elapsed)


def begin_apply(name: str, answer_round: int) -> bool:
    """Mark the answer of ``answer_round`` as being applied (no undo from now on); False when it was undone."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
            HumanLoop.id == loop.id, HumanLoop.answer_round == answer_round,
            HumanLoop.status == HumanLoopStatus.COMPLETED, HumanLoop.apply_started_at.is_(None)).values(
            apply_started_at=db.utcnow()))
        session.refresh(loop)
        return (loop.answer_round == answer_round and loop.status == HumanLoopStatus.COMPLETED
                and loop.apply_started_at is not None)


def unapplied_answers(*, session: Session) -> list[tuple[str, int]]:
    """(name, round) of every answered loop whose answer is not applied yet."""
    return [(name, answer_round) for name, answer_round in session.execute(
        select(HumanLoop.name, HumanLoop.answer_round).where(
            HumanLoop.status == HumanLoopStatus.COMPLETED, HumanLoop.applied_at.is_(None)))]


def copy_key(loop_name: str, object_key: str, label: str) -> str:
    """Where an answered image is copied: the same key for the same loop, so a retry never copies twice."""
    return _copy_in(f"images_labeled_by_folder/{label}/", loop_name, object_key)


def none_of_the_above_key(loop_name: str, object_key: str) -> str:
    """Where an image answered None of the Above is kept to train the hidden class (Learn-From-None-Of-The-Above):
    under ``images_none_of_the_above/``, named as a label copy, never in ``images_labeled_by_folder/``."""
    return _copy_in(dataset.NONE_OF_THE_ABOVE_FOLDER, loop_name, object_key)


def _copy_in(folder: str, loop_name: str, object_key: str) -> str:
    unique = uuid.uuid5(uuid.NAMESPACE_URL, f"labelloop:{loop_name}")
    original = object_key.rsplit("/", 1)[-1]
    return f"{folder}humanLoopName-{loop_name}-{unique}-{original}"[:1024]


def training_copy_key(loop: HumanLoop) -> str | None:
    """Where a Detection (or teaching sampling) loop's answer keeps its image: its label's folder; for None of
    the Above, ``images_none_of_the_above/`` with Learn-From-None-Of-The-Above on, else nowhere."""
    if loop.answer_label is None:
        return None
    if loop.answer_label == NONE_OF_THE_ABOVE:
        return none_of_the_above_key(loop.name, loop.object_key) if dataset.learns_from_none_of_the_above() else None
    return copy_key(loop.name, loop.object_key, loop.answer_label)


def pinned_content(key: str, etag: str | None) -> bytes:
    """The object at ``key`` if it is still the content ``etag`` names; :class:`ImageChanged` if it was replaced."""
    info, data = storage.get_object(key)
    found = info.etag if etag and "-" in etag else hashlib.md5(data, usedforsecurity=False).hexdigest()
    if etag and found != etag:
        raise ImageChanged(f"the image at {key} was replaced after its human loop opened (ETag {etag} then, "
                           f"{found} now); the answer is kept but not applied to other content")
    return data


def _note(name: str, message: str) -> None:
    with db.session() as session:
        get_loop(name, session=session).status_message = message
    log.warning("answer not applied to the training data", extra={"loop": name, "reason": message})


def copy_to_training_data(name: str) -> dict[str, Any] | None:
    """Put an answered loop's image where its answer says. Detection loops: one copy under the label's folder
    (for None of the Above: under images_none_of_the_above/ with Learn-From-None-Of-The-Above on, else none;
    none for sampling loops unless Audit-Training-Share draws the loop's detection, or Train-On-Audit-Corrections
    is on and the answer disagrees with the model); a corrected answer moves that copy, never adds a second.
    Label Audit loops: the training image itself moves (:func:`apply_label_audit`). Only the content the loop
    was opened for is used. Returns the new training object; the caller fires its "object created" event."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        learns = loop.source != HumanLoopSource.SAMPLING or teaches(loop, session=session)
        session.expunge(loop)
    if loop.source == HumanLoopSource.GOLD:  # never reached (nothing applies gold answers), never training data
        return None
    if loop.source == HumanLoopSource.LABEL_AUDIT:
        return apply_label_audit(loop)
    if not learns:
        return None
    wanted = training_copy_key(loop)
    previous = loop.copied_key
    if wanted is None:
        if previous:
            storage.delete_object(previous, actor=f"human loop {name}")
        _set_copied_key(name, None)
        return None
    if previous == wanted and _holds(wanted, loop.object_etag):  # a retry after the copy was made
        info = storage.head_object(wanted)
    elif previous:
        info = _move(name, previous, wanted, loop.object_etag)
    else:
        try:
            info = storage.put_object(wanted, pinned_content(loop.object_key, loop.object_etag),
                                      source="human loop")
        except (ImageChanged, storage.ObjectNotFound) as exc:
            _note(name, f"not copied to the training data: {exc}")
            return None
    if info is None:
        return None
    _set_copied_key(name, info.key)
    return info.model_dump(mode="json")


def teaches(loop: HumanLoop, *, session: Session) -> bool:
    """Whether a sampling loop's answer becomes training data: one the Audit-Training-Share draws (by a hash of
    its detection's request id, never by the answer), or one that caught the model wrong with
    Train-On-Audit-Corrections on. The estimates stay honest: an audit judges only the version that made the
    detection (trained before it), a later version's backtest leaves out the audits it trained on (a random
    part of them, when drawn), and the F1 gate leaves out answers about images a version trained on."""
    if loop.answer_label != loop.model_label and parameters.value(parameters.TRAIN_ON_AUDIT_CORRECTIONS,
                                                                  session=session):
        return True
    share = parameters.value(parameters.AUDIT_TRAINING_SHARE, session=session) / 100
    request_id = session.scalar(select(DetectionEvent.request_id).where(DetectionEvent.id == loop.detection_id))
    drawn = silent_errors.audit_trains(request_id or loop.name, share)
    if drawn:
        log.info("audit answer drawn into the training data by Audit-Training-Share",
                 extra={"loop": loop.name, "request_id": request_id, "share": share})
    return drawn


def _set_copied_key(name: str, key: str | None) -> None:
    with db.session() as session:
        get_loop(name, session=session).copied_key = key


def audit_destination(loop: HumanLoop) -> str:
    """Where a Label Audit answer puts the training image: its answered label's folder (where it is, when the
    answer is the label it had), or ``label-audit-removed/`` for None of the Above."""
    relative = loop.object_key[len(LABELED_FOLDER):]
    if loop.answer_label == NONE_OF_THE_ABOVE:
        return AUDIT_REMOVED_FOLDER + relative
    if loop.answer_label == storage.label_of(loop.object_key):
        return loop.object_key
    return f"{LABELED_FOLDER}{loop.answer_label}/{relative.split('/', 1)[-1]}"


def apply_label_audit(loop: HumanLoop) -> dict[str, Any] | None:
    """Move an audited training image to where its answer says (never a second copy); returns the image as a
    new training object, or ``None`` (kept where it is, or moved out of the training data)."""
    target = audit_destination(loop)
    current = loop.copied_key or loop.object_key  # a corrected answer moves it from where the last one put it
    if target == current:
        _record_move(loop.name, current, f"kept at {current}: the answer is the label it has")
        return None
    info = _move(loop.name, current, target, loop.object_etag)
    if info is None:
        return None
    _record_move(loop.name, info.key, f"moved from {current} to {info.key}")
    return info.model_dump(mode="json") if info.key.startswith(LABELED_FOLDER) else None


def _move(name: str, source: str, target: str, etag: str | None) -> ObjectInfo | None:
    """Move the pinned content from ``source`` to ``target`` (or beside it, named after the loop, when another
    image is there); a retry finds the move it made before. ``None`` when the content is gone or replaced."""
    folder, file_name = target.rsplit("/", 1)
    candidates = (target, f"{folder}/labelAudit-{name}-{file_name}")
    for candidate in candidates:
        if _holds(candidate, etag) and not _holds(source, etag):
            return storage.head_object(candidate)
    try:
        data = pinned_content(source, etag)
    except (ImageChanged, storage.ObjectNotFound) as exc:
        _note(name, f"not moved: {exc}")
        return None
    taken = storage.object_exists(target) and not _holds(target, etag)
    info = storage.put_object(candidates[taken], data, source="human loop")
    storage.delete_object(source, actor=f"human loop {name}")
    return info


def _holds(key: str, etag: str | None) -> bool:
    try:
        return storage.head_object(key).etag == etag
    except storage.ObjectNotFound:
        return False


def _record_move(name: str, key: str, message: str) -> None:
    with db.session() as session:
        loop = get_loop(name, session=session)
        loop.copied_key, loop.status_message = key, message
    log.info("label audit applied", extra={"loop": name, "key": key, "outcome": message})


def flow_definition_arn() -> str:
    """The ARN A2I would give the review flow, in labelloop's local account."""
    return f"arn:aws:sagemaker:local:000000000000:flow-definition/{get_settings().flow_definition_name}"


def output_key(loop: HumanLoop) -> str:
    """A2I's output path: flow definition name, the loop's creation time to the second, the loop's name."""
    return (f"{HUMAN_LOOP_FOLDER}{get_settings().flow_definition_name}/{loop.created_at:%Y/%m/%d/%H/%M/%S}/"
            f"{loop.name}/output.json")


def output_record(loop: HumanLoop, request_id: str | None) -> dict[str, Any]:
    """The loop's output in A2I's shape: every answer in ``humanAnswers`` (an operator's correction last, marked
    in its ``workerMetadata``), labelloop's fields in ``inputContent`` and the label that counts in
    ``consolidatedAnswer``."""
    answers = []
    for answer in loop.answers:
        accepted = min(answer.accepted_at or answer.submitted_at, answer.submitted_at)
        answers.append({
            "acceptanceTime": accepted.isoformat(), "submissionTime": answer.submitted_at.isoformat(),
            "timeSpentInSeconds": round((answer.submitted_at - accepted).total_seconds(), 3),
            "workerId": answer.worker,
            "workerMetadata": {"identityData": {"identityProviderType": "labelloop", "issuer": "labelloop",
                                                "sub": answer.worker}, "answerKind": answer.kind},
            "answerContent": {"crowd-image-classifier": {"label": answer.label}}})
    answers.sort(key=lambda entry: entry["workerMetadata"]["answerKind"] == AnswerKind.CORRECTION)
    return {
        "flowDefinitionArn": flow_definition_arn(),
        "humanLoopName": loop.name,
        "inputContent": {
            "taskObject": f"s3://{storage.bucket_name() or get_settings().local_bucket_name}/{loop.object_key}",
            "initialValue": loop.model_label, "initialConfidence": loop.model_confidence,
            "detectLabelRequestId": request_id, "objectKey": loop.object_key, "objectEtag": loop.object_etag,
            "source": loop.source, "modelLabel": loop.model_label, "modelConfidence": loop.model_confidence,
            "modelVersion": loop.model_version, "requiredAnswers": loop.required_answers},
        "humanAnswers": answers,
        "consolidatedAnswer": {"crowd-image-classifier": {"label": loop.answer_label}},
        "humanLoopStatus": loop.status,
    }


def write_output(name: str) -> str:
    """Write the loop's output in A2I's shape and at A2I's path under ``a2i-human-loop-data/``; returns its key."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        event = session.get(DetectionEvent, loop.detection_id) if loop.detection_id is not None else None
        key = output_key(loop)
        output = output_record(loop, event.request_id if event else None)
    storage.put_object(key, json.dumps(output, indent=1, default=str).encode(), source="human loop")
    with db.session() as session:
        get_loop(name, session=session).output_key = key
    return key


def record_on_detection(name: str) -> dict[str, Any]:
    """Write the answer onto the loop's detection event (Label Audit loops have none) and mark it applied."""
    with db.session() as session:
        loop = get_loop(name, session=session)
        loop.applied_at = db.utcnow()
        event = session.get(DetectionEvent, loop.detection_id) if loop.detection_id is not None else None
        if event is None:
            return {"detection_id": None, "human_label": loop.answer_label, "model_label": loop.model_label,
                    "agrees": loop.answer_label == loop.model_label}
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


_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
                (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def open_task_count(*, session: Session, worker: str | None = None) -> int:
    """How many tasks are waiting for an answer (InProgress and not past their lifetime), leased ones included;
    gold tasks only the one ``worker`` holds, so it counts like the real task it looks like.

    Counts without writing, so it is safe in a session that already holds loaded loops."""
    return session.scalar(select(func.count()).select_from(HumanLoop).where(
        HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
        or_(HumanLoop.source != HumanLoopSource.GOLD, HumanLoop.leased_by == worker),
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
    show_guess = loop.source == HumanLoopSource.DETECTION and loop.model_label is not None  # audits unbiased
    return {"name": loop.name, "source": loop.source, "choices": label_choices(session=session),
            "none_of_the_above": NONE_OF_THE_ABOVE, "short_instructions": row.short_instructions,
            "full_instructions": row.full_instructions, "lease_expires_at": loop.lease_expires_at,
            "model_label": loop.model_label if show_guess else None,
            "model_confidence": loop.model_confidence if show_guess else None}


def release_lease(worker: str, *, session: Session) -> int:
    """Give back every task ``worker`` holds (they stopped working); returns how many. A gold task held goes
    nowhere: it was theirs only, so it stops (and is not served to them again)."""
    held = (HumanLoop.leased_by == worker, HumanLoop.status == HumanLoopStatus.IN_PROGRESS)
    session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
        *held, HumanLoop.source == HumanLoopSource.GOLD).values(
        status=HumanLoopStatus.STOPPED, status_message="gold task given back unanswered",
        completed_at=db.utcnow()))
    result = session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(*held).values(
        leased_by=None, lease_expires_at=None))
    return result.rowcount or 0


def task_image(name: str, worker: str) -> tuple[bytes, str]:
    """The image of a task ``worker`` holds, with an image content type a browser shows; only the content the
    loop was opened for (:class:`ImageChanged` if the key now holds another).

    PNG, JPEG, GIF, BMP and WebP are served as stored; any other format (TIFF …) is re-encoded as PNG after
    the same checks the model's decoder makes, so the response is always a plain image."""
    with db.session() as session:
        loop = held_task(name, worker, session=session)
        key, etag = loop.object_key, loop.object_etag
    data = pinned_content(key, etag)
    for magic, media_type in _IMAGE_TYPES:
        if data.startswith(magic):
            return data, media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    buffer = io.BytesIO()
    decode_image(data).save(buffer, "PNG")
    return buffer.getvalue(), "image/png"


# ── reviewer metrics, and pausing a reviewer ─────────────────────────────────


def set_paused(username: str, paused: bool, actor: str, *, session: Session) -> list[str]:
    """Pause ``username`` from review (no tasks, answers refused; the task they hold goes back) or resume them;
    returns the paused reviewers."""
    if session.scalar(select(User.id).where(User.username == username)) is None:
        raise ReviewError(f"there is no user {username!r}")
    row = template(session=session)
    names = set(row.paused_reviewers)
    names = names | {username} if paused else names - {username}
    row.paused_reviewers = sorted(names)
    if paused:
        release_lease(username, session=session)
    log.info("reviewer paused" if paused else "reviewer resumed", extra={"reviewer": username, "actor": actor})
    return row.paused_reviewers


def reviewer_metrics(*, session: Session, since: Any = None) -> list[dict[str, Any]]:
    """Per reviewer, overall and per day (UTC): tasks answered, median seconds per task (lease to answer),
    agreement with the loop's final label (consolidated or corrected), the same on Human Sampling audits,
    accuracy on gold tasks (answers equal to the known label), and whether they are paused."""
    query = (select(HumanAnswer.worker, HumanAnswer.label, HumanAnswer.accepted_at, HumanAnswer.submitted_at,
                    HumanLoop.source, HumanLoop.status, HumanLoop.answer_label, GoldTask.label.label("gold_label"))
             .join(HumanLoop, HumanLoop.id == HumanAnswer.loop_id)
             .outerjoin(GoldTask, GoldTask.id == HumanLoop.gold_task_id).where(HumanAnswer.kind == AnswerKind.REVIEW))
    if since is not None:
        query = query.where(HumanAnswer.submitted_at >= since)
    groups: dict[str, dict[str, list[Any]]] = {}
    for row in session.execute(query):
        groups.setdefault(row.worker, {}).setdefault(f"{row.submitted_at:%Y-%m-%d}", []).append(row)
    paused = set(template(session=session).paused_reviewers)
    return [{"reviewer": worker, "paused": worker in paused, **_tally([r for rows in days.values() for r in rows]),
             "days": [{"day": day, **_tally(rows)} for day, rows in sorted(days.items())]}
            for worker, days in sorted(groups.items())]


def _tally(rows: list[Any]) -> dict[str, Any]:
    seconds = list((r.submitted_at - (r.accepted_at or r.submitted_at)).total_seconds() for r in rows)
    final = [r for r in rows if r.status == HumanLoopStatus.COMPLETED and r.answer_label is not None]
    gold = [r for r in final if r.source == HumanLoopSource.GOLD]
    final = [r for r in final if r.source != HumanLoopSource.GOLD]
    audits = [r for r in final if r.source == HumanLoopSource.SAMPLING]

    def share(subset: list[Any], truth: str = "answer_label") -> float | None:
        return round(sum(r.label == getattr(r, truth) for r in subset) / len(subset), 4) if subset else None

    return {"answered": len(rows), "median_seconds": round(median(seconds), 1) if seconds else None,
            "decided": len(final), "agreement": share(final), "audits": len(audits),
            "audit_agreement": share(audits), "gold_answers": len(gold), "gold_accuracy": share(gold, "gold_label")}


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
