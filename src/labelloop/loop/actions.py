"""What a user does, one entry per action, shared by the API views, the web pages, the CLI and the drop folder:
store an object, answer a human loop, change a parameter, check for training, deploy or stop a version, run
human sampling, detect stored images again. Each validates, records, and starts the run that carries it out;
views and pages only translate requests and answers.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from labelloop.loop import routing
from labelloop.modeling import service as models
from labelloop.modeling import versions
from labelloop.modeling.images import check_image
from labelloop.parameters import service as parameters
from labelloop.review import gold
from labelloop.review import service as reviews
from labelloop.review.models import HumanLoopSource, HumanLoopStatus
from labelloop.storage import service as storage
from labelloop.storage.models import DETECTION_FOLDER, ObjectInfo

log = logging.getLogger(__name__)


REDETECT_HOW = ("to detect it again with the serving version, re-detect it: the storage page's Re-detect, "
                "`labelloop redetect KEY` or POST /api/v1/detections/redetect")


def store_object(key: str, data: bytes, *, source: str, actor: str = "system") -> ObjectInfo:
    """Store an object; under an event folder its "object created" event starts (once per key and ETag: an image
    for detection joins a run with the uploads that arrive beside it, a training image gets its own).

    Under an event folder only images are taken, judged by their content: anything else raises
    ``ImageRejected`` with the reason and nothing is stored. The same bytes stored again change nothing (the
    answer says so and, for an image for detection, how to detect it again)."""
    if storage.fires_event(key):
        check_image(data)
    info = storage.put_object(key, data, source=source, actor=actor)
    run_id = routing.fire_object_created(info, source)
    message = None
    if info.unchanged:
        message = "the same bytes are already stored at this key: nothing changed"
        if key.startswith(DETECTION_FOLDER):
            message += f" and no new detection runs; {REDETECT_HOW}"
    return info.model_copy(update={"run_id": run_id, "message": message})


def redetect_images(keys: list[str], actor: str, *, session: Session) -> dict[str, Any]:
    """Detect stored images again with the serving version (``keys``: objects or folders, ending in ``/``,
    under images_for_detection/); each gets a new detection event pointing to its previous one.

    ``ModelError`` when no version serves; ``InvalidKey`` for a key outside images_for_detection/ or not
    stored, so nothing starts on a mistaken request."""
    if versions.serving_version_name(session=session) is None:
        raise models.ModelError("no model version serves: deploy one first, then re-detect")
    objects = resolve_detection_images(keys)
    run_id = routing.start_redetection(objects, actor)
    log.info("re-detection requested", extra={"images": len(objects), "run_id": run_id, "actor": actor})
    return {"run_id": run_id, "images": len(objects), "keys": objects}


def resolve_detection_images(keys: list[str]) -> list[str]:
    """The stored images that ``keys`` name: each key itself, or every object under a folder key."""
    if not keys:
        raise storage.InvalidKey("name at least one image or folder under images_for_detection/")
    found: dict[str, None] = {}
    for key in keys:
        if not key.startswith(DETECTION_FOLDER):
            raise storage.InvalidKey(f"{key!r} is not under {DETECTION_FOLDER}: only images for detection "
                                     "are detected again")
        if key.endswith("/"):
            found.update((info.key, None) for info in storage.list_objects(key) if not info.key.endswith("/"))
        else:
            found[storage.head_object(key).key] = None
    if not found:
        raise storage.InvalidKey(f"no stored image under {', '.join(keys)}")
    return list(found)


def answer_loop(name: str, label: str, worker: str) -> dict[str, Any]:
    """A reviewer's answer: recorded, and its run queued at once; the run waits out the undo window, then
    applies it. Refused while another reviewer holds the task (``LeaseNotHeld``).

    The recorded answer is the durable point: should the process stop before its run is queued, the answer
    sweep (at start and on a schedule, :func:`routing.apply_recorded_answers`) queues it, and the same answer
    sent again by the same reviewer is taken as the same answer (no 409 on a retry)."""
    loop = reviews.claim_answer(name, label, worker)
    if loop["status"] != HumanLoopStatus.COMPLETED:  # waiting for more reviewers
        return {**loop, "run_id": None}
    if loop["source"] == HumanLoopSource.GOLD:  # it scores the reviewer; nothing is applied
        gold.after_gold_answer(worker)
        return {**loop, "run_id": None}
    return {**loop, "run_id": routing.start_apply_answer(loop["name"], loop["answer_round"])}


def undo_answer(worker: str, *, session: Session) -> dict[str, Any]:
    """Take back ``worker``'s last answer within its undo window (``ReviewError`` when too late): the task is
    theirs again. Commits ``session``."""
    loop = reviews.undo_last_answer(worker, session=session)
    session.commit()
    return reviews.as_dict(loop, reviewer_view=True)


def correct_answer(name: str, label: str, actor: str, *, session: Session) -> dict[str, Any]:
    """An operator's correction of an applied answer: recorded, then its run moves the training copy (never a
    second one) and rewrites the output and the detection's answer. Commits ``session``."""
    loop = reviews.correct_answer(name, label, actor, session=session)
    session.commit()
    return {**reviews.as_dict(loop), "run_id": routing.start_apply_answer(loop.name, loop.answer_round)}


def open_label_audits(keys: list[str], actor: str, *, session: Session) -> list[dict[str, Any]]:
    """Send training images back to review as "Label Audit" loops (see
    ``review.service.open_label_audit_loops``). Commits ``session``."""
    opened = reviews.open_label_audit_loops(keys, actor, session=session)
    session.commit()
    return opened


def apply_recorded_answers() -> list[str]:
    """Queue the run of every recorded answer not yet applied (at start-up); see ``routing``."""
    return routing.apply_recorded_answers()


def change_parameter(name: str, raw: object, *, actor: str, session: Session) -> dict[str, Any]:
    """Validate and store a parameter's new value, then start the run that applies it. Commits ``session``.

    Returns ``{"changed": False}`` when the value is the same; a bad value raises ``ParameterError`` saying what
    is allowed, and nothing changes.
    """
    change = parameters.change(name, raw, session=session, changed_by=actor)
    if change is None:
        return {"changed": False, "run_id": None}
    session.commit()  # the run reads the new value
    run_id = routing.start_change_run({"name": change.name, "version": change.version,
                                       "old_value": change.old_value, "new_value": change.new_value,
                                       "changed_by": change.changed_by})
    return {"changed": True, "run_id": run_id, "version": change.version}


def check_training(actor: str) -> str:
    """Run the training check now; returns its run id."""
    return routing.start_training_check(f"requested by {actor}")


def deploy_version(version: str, actor: str, *, session: Session) -> str:
    """Deploy (or roll back to) a trained version, blue-green; ``ModelError`` when it cannot be deployed."""
    models.check_deployable(version, session=session)
    return routing.start_deploy(version, actor)


def stop_version(version: str, actor: str, *, session: Session) -> str:
    """Stop serving the RUNNING version ``version``; ``ModelError`` when it is not RUNNING."""
    models.check_stoppable(version, session=session)
    return routing.start_stop(version, actor)


def audit_suspect_labels(version: str, actor: str, *, session: Session) -> dict[str, Any]:
    """Send a version's suspect training labels (its training's out-of-fold predictions confidently name
    another label) to human review as "Label Audit" loops. Images no longer stored (moved or deleted since)
    are passed over and listed; ``VersionNotFound`` for an unknown version."""
    suspects = models.suspect_labels(version, session=session)
    stored = [s["key"] for s in suspects if storage.object_exists(s["key"])]
    opened = reviews.open_label_audit_loops(stored, actor, session=session)
    gone = sorted({s["key"] for s in suspects} - set(stored))
    log.info("suspect labels sent to review", extra={"version": version, "actor": actor, "suspects": len(suspects),
                                                     "opened": len(opened), "gone": len(gone)})
    return {"version": version, "suspects": len(suspects), "opened": [loop["name"] for loop in opened],
            "already_open": len(stored) - len(opened), "no_longer_stored": gone}


def run_sampling(actor: str) -> str:
    """Run human sampling now; returns its run id."""
    return routing.start_sampling(f"requested by {actor}")


def objects_created_in_bucket(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Start the "object created" run of each object an S3 event notification reports (exactly once per key
    and ETag, as for an upload through the API); say why any record was passed over."""
    bucket = storage.bucket_name()
    started: list[dict[str, Any]] = []
    ignored: list[dict[str, Any]] = []
    for record in records:
        info, reason = storage.created_object(record, bucket)
        if info is None:
            ignored.append({"key": record["key"], "event": record["event"], "reason": reason})
            continue
        run_id, existed = routing.object_event(info, "s3 event")
        # "replaced": the object changed since this event was sent; the run is for what is there now.
        started.append({"key": info.key, "etag": info.etag, "run_id": run_id, "already_started": existed,
                        "replaced": bool(record["etag"]) and record["etag"] != info.etag})
    log.info("S3 event notification", extra={"records": len(records), "started": len(started),
                                             "ignored": len(ignored)})
    return {"records": len(records), "started": started, "ignored": ignored}
