"""Detections: run the serving model on a stored image, log the event, decide on human review."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.detection import silent_errors
from labelloop.detection.arrivals import arrivals
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.modeling import endpoint
from labelloop.modeling.images import ImageRejected
from labelloop.modeling.models import ModelVersion
from labelloop.modeling.serving import Compared, NoModelServing, ViewChanged
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage

log = logging.getLogger(__name__)


SHOWN = ("id", "request_id", "created_at", "detected_at", "object_key", "etag", "source", "status", "status_message",
         "model_version", "label", "confidence", "labels", "threshold", "human_review_enabled", "sampled",
         "human_loop_name", "human_label", "human_worker", "human_answered_at", "run_id", "previous_event_id",
         "routing_rule", "review_reason", "new_stratum")
EVENTS = DetectionEvent.__table__
ARRIVAL = insert(EVENTS).returning(EVENTS.c.id)
# A batch's events by id, built once (the ids bound at execution): building the statement cost more CPU than
# running it (README Performance, item 35).
BY_IDS = select(EVENTS).where(EVENTS.c.id.in_(bindparam("ids", expanding=True)))
BEFORE_INFERENCE = select(EVENTS.c.id, EVENTS.c.object_key, EVENTS.c.status).where(
    EVENTS.c.id.in_(bindparam("ids", expanding=True)))
ANSWER = update(EVENTS).where(EVENTS.c.id == bindparam("event_id"))  # its SET: the columns each executemany gives


def as_dict(event: Any) -> dict[str, Any]:
    """A detection event (an ORM row, a Core row or an :class:`EventRow`) as the API, CSV export and pages show
    it."""
    return {column: getattr(event, column) for column in SHOWN}


def record_arrival(key: str, etag: str, run_id: str | None, source: str = "upload") -> dict[str, Any]:
    """The detection event of this object (created once; the same key and ETag give the same event: the unique
    index on them refuses a second, so a new arrival costs no lookup first). One INSERT … RETURNING id on a
    connection of its own (no ORM session: a third of the CPU), so a PUT's write turn lasts the statement and
    its commit; on SQLite on the connection kept for these inserts, through its driver
    (:mod:`labelloop.detection.arrivals`)."""
    values = db.with_defaults(EVENTS, {
        "request_id": str(uuid.uuid4()), "object_key": key, "etag": etag, "run_id": run_id, "source": source,
        "status": DetectionStatus.WAITING_FOR_MODEL, "status_message": "waiting for a model version to serve"})
    try:
        values["id"] = arrivals.insert(ARRIVAL, values)
    except IntegrityError:  # recorded before: by this step's earlier try, or another worker a moment ago
        with db.session() as session:
            return as_dict(_event_for(key, etag, session=session))
    return {column: values[column] for column in SHOWN}


def _event_for(key: str, etag: str, *, session: Session) -> DetectionEvent | None:
    """The event of this content's arrival at this key (not a re-detection of it)."""
    return session.scalar(select(DetectionEvent).where(DetectionEvent.object_key == key,
                                                       DetectionEvent.etag == etag,
                                                       DetectionEvent.previous_event_id.is_(None)))


def event_of_run(run_id: str, *, session: Session, key: str | None = None) -> DetectionEvent | None:
    """The detection event a run recorded (an upload's "object created" run, or a re-detection); ``key``: the
    one of that image, for a run that detected several uploads."""
    query = select(DetectionEvent).where(DetectionEvent.run_id == run_id)
    if key is not None:
        query = query.where(DetectionEvent.object_key == key)
    return session.scalar(query.order_by(DetectionEvent.id.desc()).limit(1))


def latest_event_for(key: str, *, session: Session) -> DetectionEvent | None:
    """The newest detection event of the object now stored at ``key`` (its arrival or a re-detection)."""
    return session.scalar(select(DetectionEvent).where(DetectionEvent.object_key == key)
                          .order_by(DetectionEvent.id.desc()).limit(1))


def plan_redetection(keys: list[str], model_version: str | None) -> dict[str, Any]:
    """Which events to repeat: each key's newest event for its current content; the others are skipped with
    the reason. Nothing is planned while no version serves."""
    if model_version is None:
        return {"model_version": None, "previous_event_ids": [],
                "skipped": [{"key": key, "reason": "no model version serves"} for key in keys]}
    planned, skipped = [], []
    with db.session() as session:
        for key in keys:
            try:
                etag = storage.head_object(key).etag
            except (storage.ObjectNotFound, storage.InvalidKey):
                skipped.append({"key": key, "reason": "no longer stored"})
                continue
            latest = latest_event_for(key, session=session)
            if latest is None or latest.etag != etag:
                skipped.append({"key": key, "reason": "its upload has no detection yet: it is detected as it "
                                "arrives"})
                continue
            planned.append(latest.id)
    return {"model_version": model_version, "previous_event_ids": planned, "skipped": skipped}


def record_redetection(previous_event_id: int, run_id: str) -> dict[str, Any]:
    """A new event for the image of ``previous_event_id`` that points back to it (one per run: a retried step
    finds the event it made). The human answer already given for the image, if any, carries over, so the
    image is not sent to a reviewer again."""
    with db.session() as session:
        existing = session.scalar(select(DetectionEvent).where(DetectionEvent.run_id == run_id,
                                                               DetectionEvent.previous_event_id.is_not(None)))
        if existing is not None:
            return as_dict(existing)
        earlier = session.get(DetectionEvent, previous_event_id)
        event = DetectionEvent(request_id=str(uuid.uuid4()), object_key=earlier.object_key, etag=earlier.etag,
                               run_id=run_id, source="re-detection", previous_event_id=earlier.id,
                               status=DetectionStatus.WAITING_FOR_MODEL, status_message="detecting again",
                               human_loop_name=earlier.human_loop_name, human_label=earlier.human_label,
                               human_worker=earlier.human_worker, human_answered_at=earlier.human_answered_at)
        session.add(event)
        session.flush()
        log.info("detection repeated", extra={"key": event.object_key, "previous_event": earlier.id,
                                              "event": event.id})
        return as_dict(event)


@dataclass(frozen=True)
class Outcome:
    """What detecting an event's image came to, before anything is written: ``kind`` is ``detected`` (with the
    serving ``version``, its ``labels`` and the ``previous`` version's top label and confidence, if any),
    ``rejected`` or ``waiting`` (with the ``reason``), or ``recorded`` (the event has its answer already)."""

    kind: str
    reason: str = ""
    version: str | None = None
    labels: list[dict[str, Any]] | None = None
    previous: tuple[str, float] | None = None


def infer(event: dict[str, Any]) -> Outcome:
    """Run the serving model on the image of ``event`` (a detection event as :func:`as_dict` gives it). Reads the
    bucket and waits for inference; opens no database transaction, so none is held through the wait."""
    return infer_all([event])[0]


def infer_all(events: list[dict[str, Any]]) -> list[Outcome]:
    """:func:`infer` for several events: every image is queued for inference before any answer is awaited, so
    they share the serving micro-batches."""
    return [_answer(started) for started in [_queue_inference(event) for event in events]]


def _queue_inference(event: dict[str, Any]) -> Outcome | tuple[bytes, Future[Compared]]:
    """The event's image read, prepared with the serving version's input view and queued (its bytes and
    future), or the outcome already known."""
    if event["status"] == DetectionStatus.DETECTED:
        return Outcome("recorded")
    try:
        data = storage.read_object(event["object_key"])
        return data, endpoint.submit_image_compared(data)
    except (ImageRejected, storage.ObjectNotFound) as exc:
        return Outcome("rejected", str(exc))
    except NoModelServing as exc:
        return Outcome("waiting", str(exc))


def _answer(started: Outcome | tuple[bytes, Future[Compared]]) -> Outcome:
    if isinstance(started, Outcome):
        return started
    data, future = started
    try:
        try:
            answer = future.result(timeout=120)
        except ViewChanged:  # a version with another input view came in between: prepared again for it
            answer = endpoint.detect_image_compared(data)
    except NoModelServing as exc:
        return Outcome("waiting", str(exc))
    previous = None if answer.previous is None else answer.previous[0]
    return Outcome("detected", version=answer.version.version,
                   labels=endpoint.labels_of(answer.version.labels, answer.probabilities[0]), previous=previous)


class EventRow:
    """A detection event's columns as read with SQLAlchemy Core: the routing reads and sets the same attributes as
    on the ORM row, and :func:`write_answers` writes back only the columns that changed (as a flush would), a
    whole batch in one executemany UPDATE, without the ORM's identity map and unit of work."""

    def __init__(self, columns: Mapping[str, Any]) -> None:
        self.__dict__.update(columns)
        self._read = dict(columns)

    def changed(self) -> dict[str, Any]:
        """The columns given another value since they were read."""
        return {name: value for name, value in vars(self).items() if name != "_read" and value != self._read[name]}


def record_outcome(event_id: int, outcome: Outcome, *, session: Session,
                   values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``outcome`` on the event in the caller's transaction, with its routing; an event that has its answer
    already is returned as it is (a retried step repeats nothing). ``values``: the parameters in force, when
    the caller read them for several events."""
    event = route_outcomes([event_id], [outcome], session=session, values=values)[0]
    write_answers([event], session=session)
    return as_dict(event)


def route_outcomes(event_ids: list[int], outcomes: list[Outcome], *, session: Session,
                   values: dict[str, Any] | None = None) -> list[EventRow]:
    """Read the events in one query and route each one's outcome in memory, in the order of ``event_ids``. Nothing
    is written: the caller writes them with :func:`write_answers`, so SQLite's write lock is taken at its end."""
    read = {row.id: EventRow(row._mapping) for row in session.execute(BY_IDS, {"ids": event_ids})}
    if values is None and any(outcome.kind == "detected" for outcome in outcomes):
        values = parameters.values(session=session)
    return [_route_outcome(read[event_id], outcome, session=session, values=values or {})
            for event_id, outcome in zip(event_ids, outcomes, strict=True)]


def _route_outcome(event: EventRow, outcome: Outcome, *, session: Session, values: dict[str, Any]) -> EventRow:
    if event.status == DetectionStatus.DETECTED or outcome.kind == "recorded":
        return event
    if outcome.kind == "rejected":
        event.status, event.status_message = DetectionStatus.REJECTED, outcome.reason
        log.warning("detection rejected", extra={"key": event.object_key, "reason": outcome.reason})
    elif outcome.kind == "waiting":
        event.status, event.status_message = DetectionStatus.WAITING_FOR_MODEL, outcome.reason
    else:
        _record(event, outcome.version, outcome.labels, outcome.previous, session=session, values=values)
    return event


def write_answers(events: list[EventRow], *, session: Session) -> None:
    """Write the columns each event's routing changed: one executemany UPDATE per set of changed columns."""
    changes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for event in events:
        changed = event.changed()
        if changed:
            changes.setdefault(tuple(sorted(changed)), []).append({"event_id": event.id, **changed})
    for rows in changes.values():
        session.execute(ANSWER, rows)


def read_event(event_id: int) -> dict[str, Any]:
    """A detection event by id, as :func:`as_dict` gives it."""
    with db.session() as session:
        return as_dict(session.get(DetectionEvent, event_id))


def read_events(event_ids: list[int]) -> list[dict[str, Any]]:
    """Detection events by id, in the order of ``event_ids``, with what a batch needs before inference: ``id``,
    ``object_key`` and ``status`` (the routing reads the whole rows again in its transaction); an id with no event
    (deleted meanwhile) is left out: the caller tells which by the ids it gets back. One Core SELECT on a
    connection (no ORM session, not every column: a third of the CPU of reading them as :func:`as_dict` gives
    them)."""
    with db.connection() as connection:
        found = {row.id: dict(row._mapping) for row in connection.execute(BEFORE_INFERENCE, {"ids": event_ids})}
    return [found[event_id] for event_id in event_ids if event_id in found]


def detect_event(event_id: int) -> dict[str, Any]:
    """Run the serving model on the event's image and record the answer (once; a repeat returns it)."""
    outcome = infer(read_event(event_id))
    with db.session() as session:
        return record_outcome(event_id, outcome, session=session)


def _record(event: EventRow, version: str, labels: list[dict[str, Any]],
            previous: tuple[str, float] | None, *, session: Session, values: dict[str, Any]) -> None:
    event.status, event.status_message = DetectionStatus.DETECTED, ""
    event.detected_at = db.utcnow()
    event.model_version = version
    event.labels = labels
    event.label, event.confidence = labels[0]["name"], labels[0]["confidence"]
    event.human_review_enabled = values[parameters.ENABLE_A2I_WORKFLOW]
    # Nothing is written here (see route_outcomes): the first write takes SQLite's write lock, held to the commit.
    event.new_stratum = new_stratum(version, previous, values, session=session)
    decided = decide_route(event, values, session=session)
    event.threshold, event.routing_rule, event.review_reason = decided.threshold, decided.rule, decided.reason
    event.sampled = event.sampled or decided.rule == silent_errors.Rule.AUDIT
    log.info("image detected", extra={"key": event.object_key, "version": version, "label": event.label,
                                      "confidence": event.confidence, "routing_rule": decided.rule,
                                      "review_reason": decided.reason, "new_stratum": event.new_stratum})


def base_threshold(label: str, version: str, values: dict[str, Any], *, session: Session) -> tuple[float, str]:
    """The threshold of the routing rule in force for ``label`` (0–100) and its name: the label's assumed
    threshold on ``version``'s test split with Use-Label-Assumed-Thresholds on (when it has one), otherwise
    Minimum-Label-Detection-Confidence."""
    minimum = values[parameters.MINIMUM_LABEL_DETECTION_CONFIDENCE]
    if not values.get(parameters.USE_LABEL_ASSUMED_THRESHOLDS):
        return minimum, parameters.MINIMUM_LABEL_DETECTION_CONFIDENCE
    evaluation = _of_version("evaluation", version, session=session) or {}
    assumed = next((m.get("assumed_threshold") for m in evaluation.get("per_label") or [] if m["label"] == label),
                   None)
    if assumed is None:
        return minimum, parameters.MINIMUM_LABEL_DETECTION_CONFIDENCE
    return round(100 * assumed, 2), f"{label}'s assumed threshold"


VERSION_READS = "detection.version_reads"  # session.info key: a batch's reads of model-version columns


def read_versions_once(session: Session) -> None:
    """Within ``session``, read each model version's evaluation and warm start once (a batch of detections
    routes every image with the same few versions; they do not change while it is written)."""
    session.info.setdefault(VERSION_READS, {})


def _read_once(key: tuple[Any, ...], read: Callable[[], Any], *, session: Session) -> Any:
    """``read()``, remembered under ``key`` for the session after :func:`read_versions_once` (else read each time)."""
    memo = session.info.get(VERSION_READS)
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


# The model-version columns routing reads (by name), each statement built once: only the replaced version's name
# of the stored warm start (which also holds the whole backtest, read once by silent_errors.warm_of).
_VERSIONS = ModelVersion.__table__
VERSION_COLUMNS = {name: select(column).where(_VERSIONS.c.version == bindparam("version")) for name, column in (
    ("evaluation", _VERSIONS.c.evaluation), ("replaced", _VERSIONS.c.warm_start["previous"].as_string()))}


def _of_version(name: str, version: str, *, session: Session) -> Any:
    """The column ``name`` (a :data:`VERSION_COLUMNS` key) of model version ``version``, remembered for the session
    after :func:`read_versions_once`."""
    return _read_once((name, version), lambda: session.scalar(VERSION_COLUMNS[name], {"version": version}),
                      session=session)


def new_stratum(version: str, previous: tuple[str, float] | None, values: dict[str, Any], *,
                session: Session) -> bool | None:
    """Warm start: whether the version ``version`` replaced would not have auto-accepted this image (its top
    ``previous`` label and confidence below its own threshold; unknown counts as new, which is always valid).
    None when ``version`` has no warm start."""
    replaced = _of_version("replaced", version, session=session)
    if not replaced:
        return None
    if previous is None:
        return True
    label, confidence = previous
    return confidence < base_threshold(label, replaced, values, session=session)[0]


def decide_route(event: DetectionEvent | EventRow, values: dict[str, Any], *, session: Session) -> silent_errors.Route:
    """Who sees this detection, and why (see ``silent_errors``; with a warm start, by the event's stratum)."""
    base, base_name = base_threshold(event.label, event.model_version, values, session=session)
    target = values.get(parameters.MAXIMUM_SILENT_ERROR_RATE, 0.0)
    if event.previous_event_id is not None:  # a re-detection is not new traffic: it is never audited
        target = 0.0
    review = bool(event.human_review_enabled)
    if target > 0 and review and event.confidence >= base:  # otherwise the seed's rule alone decides
        found, audits = _estimate(event.model_version, target, session=session)
    else:
        found, audits = silent_errors.estimate_from(event.model_version, target, [], 0), []
    decided = silent_errors.route(event.label, event.confidence, event.request_id, base=base, base_name=base_name,
                                  review=review, found=found, audits=audits, new=bool(event.new_stratum))
    _count_routed(event, decided, session=session)
    return decided


def _count_routed(event: DetectionEvent | EventRow, decided: silent_errors.Route, *, session: Session) -> None:
    """A detection routed in a batch: the estimate's counts the batch remembered count it in memory, as reading
    them again would (an audit opened; with a warm start, a would-be auto-accepted detection), so the batch reads
    them once and writes nothing before its end. Images that do not read the estimate change none of its counts
    (below the threshold, or silent-error control off for the whole batch)."""
    memo = session.info.get(VERSION_READS, {})
    counts = memo.get(("counts", event.model_version))
    if counts is None:
        return
    accepted = (event.previous_event_id is None and decided.threshold is not None
                and event.confidence >= decided.threshold)
    memo[("counts", event.model_version)] = counts.routed(
        audit=decided.rule == silent_errors.Rule.AUDIT, new=bool(event.new_stratum), accepted=accepted)


def _estimate(version: str, target: float, *,
              session: Session) -> tuple[silent_errors.Estimate, list[silent_errors.Audit]]:
    """``silent_errors.estimate_with_audits``; after :func:`read_versions_once` its counts are read once per batch
    (the answered audits, the audits opened, a warm start's would-be auto-accepted detections) and kept up to
    date in memory as the batch routes (:func:`_count_routed`), the estimate computed again only when they
    changed. Parity with image-by-image routing: ``tests/test_pipeline_transaction.py``."""
    if VERSION_READS not in session.info:
        return silent_errors.estimate_with_audits(version, target, session=session)
    counts = _read_once(("counts", version), lambda: silent_errors.counts_of(version, session=session),
                        session=session)
    memo = session.info[VERSION_READS]
    known = memo.get(("estimate", version, target))
    if known is None or known[0] is not counts:
        known = memo[("estimate", version, target)] = (counts, counts.estimate(version, target))
    return known[1]


def needs_human_review(event: dict[str, Any]) -> bool:
    """Whether the routing rule sends the detection to a human (events recorded before routing rules: below
    the minimum confidence with the A2I workflow enabled)."""
    if event["status"] != DetectionStatus.DETECTED:
        return False
    if event.get("routing_rule"):
        return event["routing_rule"] in silent_errors.TO_REVIEW
    return event["human_review_enabled"] and event["confidence"] < event["threshold"]


def is_audit(event: dict[str, Any]) -> bool:
    """Whether silent-error control chose the detection as an audit (a "Human Sampling" loop)."""
    return event.get("routing_rule") == silent_errors.Rule.AUDIT


def waiting_uploads() -> list[dict[str, Any]]:
    """Detections a newly serving version should make: those still waiting for a model and those whose runs
    failed under an earlier version, oldest first (a re-detection in flight is its own run's), as the members
    of a batch of uploads (``{"key", "etag", "source", "detection_id"}`` each): it detects them in batches."""
    with db.session() as session:
        rows = session.execute(select(DetectionEvent.object_key, DetectionEvent.etag, DetectionEvent.source,
                                      DetectionEvent.id).where(
            DetectionEvent.status.in_((DetectionStatus.WAITING_FOR_MODEL, DetectionStatus.FAILED)),
            DetectionEvent.previous_event_id.is_(None)).order_by(DetectionEvent.id))
        return [{"key": key, "etag": etag, "source": source, "detection_id": event_id}
                for key, etag, source, event_id in rows]


def mark_failed(event_id: int, version: str, runs: list[str]) -> None:
    """A detection left waiting whose runs all failed while ``version`` served: FAILED, saying so and what the
    user can do, instead of waiting for a model that is there. A repeat changes nothing."""
    with db.session() as session:
        event = session.get(DetectionEvent, event_id)
        if event.status != DetectionStatus.WAITING_FOR_MODEL:
            return
        event.status = DetectionStatus.FAILED
        event.status_message = (f"detection failed {len(runs)} time(s) while {version} served (runs "
                                f"{', '.join(runs)}); the next version to serve tries it again, or re-detect "
                                f"it now (storage page, or `labelloop redetect {event.object_key}`)")
        log.error("detection failed after its retries", extra={"detection_id": event_id, "key": event.object_key,
                                                                "model_version": version, "runs": runs})


def waiting_events() -> list[tuple[int, str | None]]:
    """(id, run id) of each first-arrival detection still waiting for a model, oldest first."""
    with db.session() as session:
        rows = session.execute(select(DetectionEvent.id, DetectionEvent.run_id).where(
            DetectionEvent.status == DetectionStatus.WAITING_FOR_MODEL,
            DetectionEvent.previous_event_id.is_(None)).order_by(DetectionEvent.id))
        return [(event_id, run_id) for event_id, run_id in rows]


IDS_PER_READ = 500  # ids bound in one IN (...) (SQLite's bound parameters are limited)


def still_waiting(event_ids: list[int]) -> list[int]:
    """Those of ``event_ids`` still WAITING_FOR_MODEL, read now."""
    found: list[int] = []
    with db.session() as session:
        for start in range(0, len(event_ids), IDS_PER_READ):
            found += session.scalars(select(DetectionEvent.id).where(
                DetectionEvent.id.in_(event_ids[start:start + IDS_PER_READ]),
                DetectionEvent.status == DetectionStatus.WAITING_FOR_MODEL))
    return found


def list_events(*, session: Session, label: str | None = None, min_confidence: float | None = None,
                max_confidence: float | None = None, sampled: bool | None = None, human_label: str | None = None,
                answered: bool | None = None, since: datetime | None = None, until: datetime | None = None,
                status: str | None = None, routing_rule: str | None = None, limit: int = 500,
                offset: int = 0) -> list[DetectionEvent]:
    """Detection events, newest first, filtered (``routing_rule``: the rule that routed it, silent_errors.Rule)."""
    query = select(DetectionEvent).order_by(DetectionEvent.id.desc()).limit(limit).offset(offset)
    conditions = [
        (label, lambda: DetectionEvent.label == label),
        (min_confidence, lambda: DetectionEvent.confidence >= min_confidence),
        (max_confidence, lambda: DetectionEvent.confidence <= max_confidence),
        (sampled, lambda: DetectionEvent.sampled.is_(sampled)),
        (human_label, lambda: DetectionEvent.human_label == human_label),
        (answered, lambda: DetectionEvent.human_label.is_not(None) if answered
         else DetectionEvent.human_label.is_(None)),
        (since, lambda: DetectionEvent.created_at >= since),
        (until, lambda: DetectionEvent.created_at <= until),
        (status, lambda: DetectionEvent.status == status),
        (routing_rule, lambda: DetectionEvent.routing_rule == routing_rule),
    ]
    for given, condition in conditions:
        if given is not None:
            query = query.where(condition())
    return list(session.scalars(query))


def count_events(*, session: Session) -> int:
    """How many detection events there are."""
    return session.scalar(select(func.count(DetectionEvent.id))) or 0


def labels_seen(*, session: Session) -> list[str]:
    """Every label the model or a reviewer gave a detection, sorted (for the detection log's filters)."""
    model = session.scalars(select(DetectionEvent.label).where(DetectionEvent.label.is_not(None)).distinct())
    human = session.scalars(select(DetectionEvent.human_label).where(DetectionEvent.human_label.is_not(None))
                            .distinct())
    return sorted(set(model) | set(human))
