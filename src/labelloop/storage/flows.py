"""The "object created" event: every new object under an event folder starts one durable run."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from dbos import DBOS

from labelloop import engine
from labelloop.storage import service
from labelloop.storage.models import DETECTION_FOLDER, ObjectInfo

log = logging.getLogger(__name__)

OBJECT_CREATED = "object_created"


def event_id(key: str, etag: str) -> str:
    """The run id of the event for this content at this key: the same upload never runs twice."""
    digest = hashlib.sha256(f"{key}\x00{etag}".encode()).hexdigest()[:32]
    return f"object-created-{digest}"


def fire_object_created(info: ObjectInfo, source: str) -> str:
    """Queue the "object created" run for a stored object; returns its run id."""
    run_id = engine.enqueue(engine.OBJECT_EVENTS_QUEUE, object_created,
                            {"key": info.key, "etag": info.etag, "size": info.size, "source": source},
                            workflow_id=event_id(info.key, info.etag))
    log.info("object created event queued", extra={"key": info.key, "etag": info.etag, "run_id": run_id,
                                                   "source": source})
    return run_id


@engine.step()
def route_object(event: dict[str, Any]) -> dict[str, Any]:
    """Decide which branch of the loop a new object feeds."""
    key = event["key"]
    if key.startswith(DETECTION_FOLDER):
        return {"branch": "detection", "key": key}
    return {"branch": "training data", "key": key, "label": service.label_of(key)}


@DBOS.workflow(name=OBJECT_CREATED)
def object_created(event: dict[str, Any]) -> dict[str, Any]:
    """One run per created object: route it to detection or count it as training data."""
    route = route_object(event)
    if route["branch"] == "detection":
        from labelloop.detection.flows import detect_object

        return {**route, **detect_object(event)}
    return route
