"""Human sampling, as the seed describes it: every n-th detection since sampling was enabled goes to a human."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from labelloop import db
from labelloop.detection import silent_errors
from labelloop.detection.models import DetectionEvent, DetectionStatus
from labelloop.detection.service import base_threshold
from labelloop.modeling import versions
from labelloop.parameters import service as parameters
from labelloop.review.models import HumanLoopSource
from labelloop.review.service import create_loop


def sampling_start(*, session: Any) -> datetime:
    """Sample forward from when sampling (or its interval) was last changed, never backwards."""
    enabled = parameters.get(parameters.ENABLE_AUTOMATIC_HUMAN_SAMPLING, session=session).last_modified
    interval = parameters.get(parameters.HUMAN_SAMPLING_INTERVAL, session=session).last_modified
    return max(enabled, interval)


def sample_detections() -> dict[str, Any]:
    """Mark every ``Human-Sampling-Interval``-th detection since the start as sampled and open its loop.

    Walks forward from the start in steps of the interval; stops when fewer than ``interval`` detections
    remain. A detection that already has a loop (from low confidence) is marked but gets no second loop.
    Running it again finds the same detections, so it never samples twice.
    """
    with db.session() as session:
        if not parameters.value(parameters.ENABLE_AUTOMATIC_HUMAN_SAMPLING, session=session):
            return {"sampled": [], "opened": [], "reason": "automatic human sampling is disabled"}
        interval = parameters.value(parameters.HUMAN_SAMPLING_INTERVAL, session=session)
        since = sampling_start(session=session)
        ids = list(session.scalars(select(DetectionEvent.id).where(
            DetectionEvent.status == DetectionStatus.DETECTED, DetectionEvent.detected_at >= since,
            DetectionEvent.previous_event_id.is_(None))  # re-detections are not new traffic
            .order_by(DetectionEvent.detected_at, DetectionEvent.id)))
        chosen = ids[interval - 1::interval]
        newly = []
        for event_id in chosen:
            event = session.get(DetectionEvent, event_id)
            if not event.sampled:
                event.sampled = True
                newly.append(event_id)
    opened = [loop["name"] for event_id in newly if (loop := create_loop(event_id, HumanLoopSource.SAMPLING))]
    return {"since": since.isoformat(), "interval": interval, "detections": len(ids), "sampled": newly,
            "opened": opened, "remaining": len(ids) % interval}


def summary() -> dict[str, Any]:
    """Agreement between sampled human answers and the model, per label and per day."""
    with db.session() as session:
        columns = (DetectionEvent.label, DetectionEvent.human_label, DetectionEvent.human_answered_at)
        answered = (DetectionEvent.sampled.is_(True), DetectionEvent.human_label.is_not(None))
        rows = session.execute(select(*columns).where(*answered)).all()
    per_label: dict[str, dict[str, int]] = {}
    per_day: dict[str, dict[str, int]] = {}
    for model_label, human_label, answered_at in rows:
        agrees = int(model_label == human_label)
        for bucket, key in ((per_label, model_label or "?"), (per_day, f"{answered_at:%Y-%m-%d}")):
            entry = bucket.setdefault(key, {"answers": 0, "agreements": 0})
            entry["answers"] += 1
            entry["agreements"] += agrees

    def rated(bucket: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
        return {k: {**v, "agreement_rate": v["agreements"] / v["answers"]} for k, v in sorted(bucket.items())}

    total = len(rows)
    agreements = sum(1 for model_label, human_label, _ in rows if model_label == human_label)
    return {"answers": total, "agreements": agreements,
            "agreement_rate": agreements / total if total else None,
            "per_label": rated(per_label), "per_day": rated(per_day)}


HISTORY_POINTS = 40


def silent_error_report(version: str | None = None) -> dict[str, Any]:
    """The silent-error estimate of ``version`` (default: the serving one) against Maximum-Silent-Error-Rate,
    with the bound after each answered audit (at most HISTORY_POINTS points, evenly spaced) and, per label,
    the thresholds its detections are routed by now."""
    with db.session() as session:
        values = parameters.values(session=session)
        if version is None:
            serving = versions.serving_version(session=session)
            version = serving.version if serving is not None else None
        else:
            versions.get_version(version, session=session)  # VersionNotFound names it
        target = values[parameters.MAXIMUM_SILENT_ERROR_RATE]
        found, audits = (silent_errors.estimate_with_audits(version, target, session=session) if version
                         else (silent_errors.estimate(None, target, session=session), []))
        points = silent_errors.history(version, session=session) if version else []
        labels = list(versions.get_version(version, session=session).labels or []) if version else []
        routing = []
        for label in labels:
            base, base_name = base_threshold(label, version, values, session=session)
            raised = silent_errors.raised_threshold(label, audits, target) if target > 0 else None
            routing.append({"label": label, "base_threshold": base, "base_rule": base_name,
                            "raised_threshold": raised, "threshold": max(base, raised or 0.0)})
    step = max(1, len(points) // HISTORY_POINTS)
    shown = points[step - 1::step] if points else []
    if points and shown[-1] is not points[-1]:
        shown.append(points[-1])
    return {**found.to_dict(), "history": shown, "routing": routing}
