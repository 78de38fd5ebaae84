"""The detection branch: log the event, detect with the serving version, open a human loop, notify."""

from __future__ import annotations

from typing import Any

from dbos import DBOS

from labelloop import engine
from labelloop.detection import service
from labelloop.notifications import service as notifications
from labelloop.review.models import HumanLoopSource

DETECT_WAITING_IMAGE = "detect_waiting_image"


@engine.step()
def record_detection_event(key: str, etag: str, run_id: str) -> dict[str, Any]:
    """Log the detection event for this image (once per key and ETag)."""
    return service.record_arrival(key, etag, run_id)


@engine.step()
def detect_image(event_id: int) -> dict[str, Any]:
    """Run the serving model version on the image."""
    return service.detect_event(event_id)


@engine.step()
def open_human_loop(detection: dict[str, Any]) -> dict[str, Any] | None:
    """Below Minimum-Label-Detection-Confidence with Enable-A2I-Workflow on: open a human loop."""
    if not service.needs_human_review(detection):
        return None
    from labelloop.review.service import create_loop

    return create_loop(detection["id"], HumanLoopSource.DETECTION)


@engine.step()
def notify_detection(detection: dict[str, Any], loop: dict[str, Any] | None, run_id: str) -> int:
    """Tell the consumer what was detected (or why not yet)."""
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
    return notifications.notify("detection." + status.lower(), subject, message, object_key=key,
                                model_version=detection["model_version"], label=detection["label"],
                                confidence=detection["confidence"], status=status, run_id=run_id,
                                dedupe_key=f"{run_id}:detection:{status}")


def _detect(event_id: int, run_id: str) -> dict[str, Any]:
    detection = detect_image(event_id)
    loop = open_human_loop(detection)
    notify_detection(detection, loop, run_id)
    return {"detection_id": event_id, "status": detection["status"], "label": detection["label"],
            "confidence": detection["confidence"], "model_version": detection["model_version"],
            "human_loop": loop["name"] if loop else None}


def detect_object(event: dict[str, Any]) -> dict[str, Any]:
    """Detection steps for a new object under ``images_for_detection/`` (inside its "object created" run)."""
    recorded = record_detection_event(event["key"], event["etag"], DBOS.workflow_id)
    return _detect(recorded["id"], DBOS.workflow_id)


@DBOS.workflow(name=DETECT_WAITING_IMAGE)
def detect_waiting_image(event_id: int) -> dict[str, Any]:
    """Detect an image that arrived while no model version was serving."""
    return _detect(event_id, DBOS.workflow_id)


@engine.step()
def find_waiting_detections() -> dict[str, Any]:
    """The images still waiting for a model, and the version now serving them."""
    from labelloop.modeling.service import sync_serving

    return {"model_version": sync_serving(force=True), "detection_ids": service.waiting_event_ids()}


def queue_waiting_detections() -> dict[str, Any]:
    """Queue a detection run for every image still waiting for a model (call from a workflow)."""
    waiting = find_waiting_detections()
    for event_id in waiting["detection_ids"]:
        engine.enqueue(engine.OBJECT_EVENTS_QUEUE, detect_waiting_image, event_id,
                       workflow_id=f"detect-waiting-{event_id}-{waiting['model_version']}")
    return {"queued": len(waiting["detection_ids"]), "model_version": waiting["model_version"]}
