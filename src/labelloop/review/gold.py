"""Gold tasks (honeypots): labeled images an operator marked with their known label, mixed into each reviewer's
queue at ``Gold-Task-Rate`` and served exactly like a real audit task. Their answers never touch the training
data, the A2I output or a detection; they score the reviewer (``review.service.reviewer_metrics``) and can pause
one below ``Minimum-Gold-Accuracy``.

A gold task is served as a loop of source "Gold" leased to one reviewer, named like an audit loop; the
reviewer's views (``review.service.for_reviewer``) show it as that audit, without storage keys.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.detection.models import DetectionEvent
from labelloop.parameters import service as parameters
from labelloop.review import service
from labelloop.review.models import GoldTask, HumanAnswer, HumanLoop, HumanLoopSource, HumanLoopStatus
from labelloop.storage import service as storage

log = logging.getLogger(__name__)


# ── the operator's list ──────────────────────────────────────────────────────


def add_gold(key: str, label: str | None, actor: str, *, session: Session) -> GoldTask:
    """Mark the stored image ``key`` as gold with its known ``label`` (default: the label folder it is in under
    images_labeled_by_folder/); marking it again changes the label. :class:`service.ReviewError` says why a
    key or label cannot be gold."""
    if not key or key.endswith("/"):
        raise service.ReviewError("name one stored image (its object key) to mark as gold")
    label = label or storage.label_of(key)
    if not label:
        raise service.ReviewError(f"{key!r} is not under images_labeled_by_folder/<label>/: give its known label")
    label = service.checked_answer(label, session=session)
    try:
        info = storage.head_object(key)
    except storage.ObjectNotFound:
        raise service.ReviewError(f"{key!r} is not stored") from None
    gold = session.scalar(select(GoldTask).where(GoldTask.object_key == key))
    if gold is None:
        gold = GoldTask(object_key=key, added_by=actor)
        session.add(gold)
    gold.object_etag, gold.label, gold.active, gold.added_by, gold.added_at = (
        info.etag, label, True, actor, db.utcnow())
    session.flush()
    log.info("gold task added", extra={"key": key, "label": label, "actor": actor})
    return gold


def remove_gold(key: str, actor: str, *, session: Session) -> None:
    """Stop serving the gold task ``key`` (the answers it got keep their score)."""
    gold = session.scalar(select(GoldTask).where(GoldTask.object_key == key, GoldTask.active.is_(True)))
    if gold is None:
        raise service.ReviewError(f"{key!r} is not a gold task")
    gold.active = False
    log.info("gold task removed", extra={"key": key, "actor": actor})


def list_gold(*, session: Session) -> list[dict[str, Any]]:
    """The active gold tasks with how often they were answered and answered right."""
    answered = (select(HumanLoop.gold_task_id, func.count().label("answers"),
                       func.sum(case((HumanAnswer.label == GoldTask.label, 1), else_=0)).label("right"))
                .join(HumanAnswer, HumanAnswer.loop_id == HumanLoop.id)
                .join(GoldTask, GoldTask.id == HumanLoop.gold_task_id)
                .where(HumanLoop.status == HumanLoopStatus.COMPLETED).group_by(HumanLoop.gold_task_id))
    tally = {row.gold_task_id: (row.answers, row.right or 0) for row in session.execute(answered)}
    return [{"object_key": gold.object_key, "label": gold.label, "added_by": gold.added_by,
             "added_at": gold.added_at, "answers": tally.get(gold.id, (0, 0))[0],
             "answered_right": tally.get(gold.id, (0, 0))[1]}
            for gold in session.scalars(select(GoldTask).where(GoldTask.active.is_(True)).order_by(GoldTask.id))]


# ── serving: mixed into the queue ────────────────────────────────────────────


def lease_next(worker: str, *, session: Session) -> HumanLoop | None:
    """The task ``worker`` works on next: the one they hold, else now and then a gold task they have not seen
    (only while a real task waits for them, so a gold task never comes alone), else the next real task."""
    service.expire_loops(session=session)
    _stop_lapsed(worker, session=session)
    if worker in service.template(session=session).paused_reviewers:
        return None
    held = service.held_by(worker, session=session)
    if held is not None:
        return held
    if service.task_waiting(worker, session=session) and _gold_is_due(worker, session=session):
        served = _serve(worker, session=session)
        if served is not None:
            return served
    return service.lease_next(worker, session=session)


def _stop_lapsed(worker: str, *, session: Session) -> None:
    """Stop the gold task ``worker`` let run past its time limit (it goes to nobody else)."""
    session.execute(update(HumanLoop).execution_options(synchronize_session=False).where(
        HumanLoop.source == HumanLoopSource.GOLD, HumanLoop.status == HumanLoopStatus.IN_PROGRESS,
        HumanLoop.leased_by == worker, HumanLoop.lease_expires_at <= db.utcnow()).values(
        status=HumanLoopStatus.STOPPED, status_message="gold task not answered in its time limit",
        completed_at=db.utcnow()))


def _served_to(worker: str) -> Any:
    """Condition: a gold loop served to ``worker`` (held or stopped in their hands, or answered by them)."""
    answered = select(HumanAnswer.id).where(HumanAnswer.loop_id == HumanLoop.id, HumanAnswer.worker == worker)
    return (HumanLoop.source == HumanLoopSource.GOLD) & or_(HumanLoop.leased_by == worker, answered.exists())


def _gold_is_due(worker: str, *, session: Session) -> bool:
    """Whether this task should be gold: with the chance that keeps the reviewer's gold share at the rate
    (``rate × tasks so far − gold so far``, so the count never drifts by more than one from the rate while the
    position of each gold task stays unpredictable)."""
    rate = parameters.value(parameters.GOLD_TASK_RATE, session=session) / 100
    if rate <= 0:
        return False
    gold = session.scalar(select(func.count()).select_from(HumanLoop).where(_served_to(worker))) or 0
    answered_real = session.scalar(select(func.count()).select_from(HumanAnswer).join(
        HumanLoop, HumanLoop.id == HumanAnswer.loop_id).where(
        HumanAnswer.worker == worker, HumanLoop.source != HumanLoopSource.GOLD)) or 0
    return random.random() < rate * (answered_real + gold + 1) - gold


def _serve(worker: str, *, session: Session) -> HumanLoop | None:
    """Lease a gold task ``worker`` was never served, as a loop named and timed like a real audit loop."""
    seen = select(HumanLoop.gold_task_id).where(_served_to(worker), HumanLoop.gold_task_id.is_not(None))
    gold = session.scalar(select(GoldTask).where(GoldTask.active.is_(True), GoldTask.id.not_in(seen))
                          .order_by(func.random()).limit(1))
    if gold is None:
        return None
    row = service.template(session=session)
    now = db.utcnow()
    loop = HumanLoop(name=_audit_like_name(session=session), source=HumanLoopSource.GOLD, gold_task_id=gold.id,
                     object_key=gold.object_key, object_etag=gold.object_etag, required_answers=1,
                     expires_at=now + timedelta(hours=row.loop_lifetime_hours), leased_by=worker, leased_at=now,
                     lease_expires_at=now + timedelta(seconds=row.task_time_limit_seconds),
                     task={"taskObject": gold.object_key, "goldTask": gold.id})
    session.add(loop)
    session.flush()
    log.info("gold task served", extra={"loop": loop.name, "reviewer": worker, "gold_task": gold.id})
    return loop


def _audit_like_name(*, session: Session) -> str:
    """A name like a Human Sampling loop's (``sampling-<detection id>-<hex>``, after a recent detection), or
    like a Label Audit loop's when there are no detections to audit."""
    recent = list(session.scalars(select(DetectionEvent.id).order_by(DetectionEvent.id.desc()).limit(50)))
    if not recent:
        return f"label-audit-{uuid.uuid4().hex[:12]}"
    return f"sampling-{random.choice(recent)}-{uuid.uuid4().hex[:8]}"


# ── pausing by gold accuracy ─────────────────────────────────────────────────


def pause_below(accuracy: float, min_answers: int, actor: str, *, session: Session,
                only: str | None = None) -> list[str]:
    """Pause every active reviewer (or ``only`` this one) whose gold accuracy (all their gold answers) is below
    ``accuracy`` (0-1) with at least ``min_answers`` gold answers; returns whom it paused."""
    if not 0 < accuracy <= 1:
        raise service.ReviewError("the accuracy to pause below is a share from 0 to 1 (0.7 = 70 %)")
    if min_answers < 1:
        raise service.ReviewError("pausing by gold accuracy needs at least 1 gold answer")
    paused = []
    for reviewer in service.reviewer_metrics(session=session):
        if only not in (None, reviewer["reviewer"]):
            continue
        if (not reviewer["paused"] and reviewer["gold_answers"] >= min_answers
                and reviewer["gold_accuracy"] < accuracy):
            service.set_paused(reviewer["reviewer"], True, actor, session=session)
            paused.append(reviewer["reviewer"])
    log.info("reviewers paused by gold accuracy", extra={"below": accuracy, "min_answers": min_answers,
                                                         "paused": paused, "actor": actor})
    return paused


def after_gold_answer(worker: str) -> bool:
    """Pause ``worker`` when ``Minimum-Gold-Accuracy`` is set and their gold accuracy fell below it; returns
    whether they were paused."""
    with db.session() as session:
        floor = parameters.value(parameters.MINIMUM_GOLD_ACCURACY, session=session) / 100
        if floor <= 0:
            return False
        needed = parameters.value(parameters.MINIMUM_GOLD_ANSWERS, session=session)
        return worker in pause_below(floor, needed, "Minimum-Gold-Accuracy", session=session, only=worker)
