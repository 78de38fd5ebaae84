"""The detection steps of the loop: log the event, detect with the serving version, notify (composed into
workflows in ``labelloop/loop/routing.py``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from labelloop import engine
from labelloop.config import get_settings
from labelloop.detection import service
from labelloop.modeling.endpoint import sync_serving
from labelloop.notifications import service as notifications
from labelloop.notifications.models import Notification


@engine.step()
def record_detection_event(key: str, etag: str, run_id: str) -> dict[str, Any]:
    """Log the detection event for this image (once per key and ETag)."""
    return service.record_arrival(key, etag, run_id)


@engine.step()
def plan_redetection(keys: list[str]) -> dict[str, Any]:
    """The serving version, and the latest detection event of each stored image to detect again."""
    return service.plan_redetection(keys, sync_serving(force=True))


@engine.step()
def record_redetection_event(previous_event_id: int, run_id: str) -> dict[str, Any]:
    """Log a new detection event for the image of ``previous_event_id``, pointing back to it (once per run)."""
    return service.record_redetection(previous_event_id, run_id)


@engine.step()
def detect_image(event_id: int) -> dict[str, Any]:
    """Run the serving model version on the image."""
    return service.detect_event(event_id)


@engine.step()
def notify_detection(detection: dict[str, Any], loop: dict[str, Any] | None, run_id: str) -> int:
    """Tell the consumer what was detected (or why not yet)."""
    event_type, subject, message, fields = detection_message(detection, loop, run_id)
    return notifications.notify(event_type, subject, message, **fields)


def stage_notification(detection: dict[str, Any], loop: dict[str, Any] | None, run_id: str, *,
                       session: Session, new: bool = False) -> Notification:
    """:func:`notify_detection`'s notification for the caller's transaction, not written yet
    (``notifications.write_staged`` writes a batch's; then ``notifications.recorded`` gives what to deliver after
    the commit with ``notifications.deliver_recorded``); ``new``: the answer is written in this transaction, so no
    notification of it can exist yet."""
    event_type, subject, message, fields = detection_message(detection, loop, run_id)
    return notifications.stage(event_type, subject, message, session=session, new=new, **fields)


def detection_message(detection: dict[str, Any], loop: dict[str, Any] | None,
                      run_id: str) -> tuple[str, str, str, dict[str, Any]]:
    """The notification of a detection: event type, subject, message and fields (one per detection event and
    status: a run may detect several uploads)."""
    key = detection["object_key"]
    status = detection["status"]
    if status == "DETECTED":
        subject = f"labelloop: {key} — {detection['label']} ({detection['confidence']:.1f})"
        message = (f"Detected {detection['label']} with confidence {detection['confidence']:.2f} "
                   f"(threshold {detection['threshold']}) using model version {detection['model_version']}.")
        message += f" Human loop {loop['name']} created for review." if loop else " No human review needed."
    elif status == "WAITING_FOR_MODEL":
        subject = f"labelloop: {key} — waiting for a model"
        message = ("No model version is serving yet. The image is kept and will be detected as soon as one "
                   "serves.")
    else:
        subject = f"labelloop: {key} — not detected"
        message = f"The image could not be detected: {detection['status_message']}"
    return "detection." + status.lower(), subject, message, {
        "object_key": key, "model_version": detection["model_version"], "label": detection["label"],
        "confidence": detection["confidence"], "status": status, "run_id": run_id,
        "dedupe_key": f"detection-{detection['id']}:{status}"}


@engine.step()
def find_waiting_detections() -> dict[str, Any]:
    """The images still waiting for a model (their ids, and as members of upload batches), the version now
    serving them, and how many one batch's run detects (recorded, so a replayed deploy queues the same runs)."""
    uploads = service.waiting_uploads()
    return {"model_version": sync_serving(force=True), "detection_ids": [item["detection_id"] for item in uploads],
            "uploads": uploads, "batch_size": get_settings().upload_batch_size}


def mark_failed(event_id: int, version: str, runs: list[str]) -> None:
    """Mark a detection whose runs all failed while ``version`` served as FAILED (see the service)."""
    service.mark_failed(event_id, version, runs)


def still_waiting(event_ids: list[int]) -> list[int]:
    """Those of ``event_ids`` still WAITING_FOR_MODEL (not a step: read by the sweep)."""
    return service.still_waiting(event_ids)


def waiting_events() -> list[tuple[int, str | None]]:
    """(id, run id) of each detection still waiting for a model (not a step: read by the start-up sweep)."""
    return service.waiting_events()
