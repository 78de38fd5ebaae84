"""The loop's routing: every workflow (the seed's state machine, branch by branch), what starts each one, the
run id each gets, and the schedules that fire them.

This is the one place that wires one domain's events to another domain's steps: an object created under
``images_for_detection/`` runs the detection steps and opens a human loop; a deployed version detects the
images that waited for it; an answered loop copies its image into the training data, which is a new object
again. The domains' ``flows.py`` hold the recorded steps; this module imports them, never the other way.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dbos import DBOS
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop import db, engine
from labelloop.config import get_settings
from labelloop.detection import flows as detection
from labelloop.detection import service as detections
from labelloop.detection import warm_start
from labelloop.detection.models import DetectionStatus
from labelloop.files import short_digest
from labelloop.loop import batches
from labelloop.modeling import dataset, versions
from labelloop.modeling import flows as modeling
from labelloop.modeling import service as models
from labelloop.notifications import service as notifications
from labelloop.parameters import flows as parameters_flows
from labelloop.parameters import service as parameters
from labelloop.review import flows as review
from labelloop.review import service as reviews
from labelloop.runs import retention
from labelloop.runs import service as runs
from labelloop.sampling import flows as sampling
from labelloop.storage import service as storage
from labelloop.storage.models import DETECTION_FOLDER, ObjectInfo

log = logging.getLogger(__name__)

# Workflow names: what the run history and the run graph call each branch's runs.
OBJECT_CREATED = "object_created"
TRAINING_CHECK = "training_check"
SCHEDULED_TRAINING_CHECK = "scheduled_training_check"
DEPLOY_VERSION = "deploy_model_version"
STOP_VERSION = "stop_model_version"
DETECT_WAITING_IMAGE = "detect_waiting_image"
APPLY_HUMAN_ANSWER = "apply_human_answer"
ANSWER_SWEEP = "scheduled_answer_sweep"
PARAMETER_CHANGE = "parameter_change"
HUMAN_SAMPLING = "human_sampling"
SCHEDULED_HUMAN_SAMPLING = "scheduled_human_sampling"
REDETECT_IMAGES = "redetect_images"
DETECT_IMAGE_AGAIN = "detect_image_again"
RUN_PRUNING = "scheduled_run_pruning"

# Run id prefixes: the run list filters a branch by them where one workflow serves two branches.
DETECTION_RUN_PREFIX = "detection-"
TRAINING_DATA_RUN_PREFIX = "training-data-"
WAITING_RUN_PREFIX = "detect-waiting-"
AGAIN_RUN_PREFIX = "detect-again-"
REDETECT_RUN_PREFIX = "redetect-"
WAITING_BATCH_PREFIX = f"{DETECTION_RUN_PREFIX}waiting-"


# ── run ids: the same event never starts two runs ────────────────────────────


def object_created_run_id(key: str, etag: str) -> str:
    """The run of the event for this content at this key: the same upload never runs twice. An image for
    detection and a training image get different prefixes, so the run list can tell the branches apart."""
    prefix = DETECTION_RUN_PREFIX if key.startswith(DETECTION_FOLDER) else TRAINING_DATA_RUN_PREFIX
    return f"{prefix}{short_digest(key, etag)}"


def answer_run_id(loop_name: str, answer_round: int = 0) -> str:
    """The run that applies a loop's answer: one per loop and answer round (an undo or a correction starts a
    new round)."""
    return f"answer-{loop_name}" if answer_round == 0 else f"answer-{loop_name}-r{answer_round}"


def parameter_change_run_id(name: str, version: int) -> str:
    """The run that applies one version of a parameter."""
    return f"parameter-{name}-v{version}"


def waiting_detection_run_id(event_id: int, model_version: str | None) -> str:
    """The run that detects a waiting image with the version that now serves."""
    return f"{WAITING_RUN_PREFIX}{event_id}-{model_version}"


def waiting_batch_run_id(model_version: str | None, uploads: list[dict[str, Any]]) -> str:
    """The run that detects a batch of images that waited for a model, with the version that now serves (an
    "object created" run: the detection branch, the same steps as a batch of uploads)."""
    return f"{WAITING_BATCH_PREFIX}{model_version}-{uploads[0]['detection_id']}-{len(uploads)}"


def detect_again_run_id(previous_event_id: int, model_version: str | None) -> str:
    """The run that detects an image again with ``model_version``, repeating detection event ``previous_event_id``."""
    return f"{AGAIN_RUN_PREFIX}{previous_event_id}-{model_version}"


def training_check_run_id(parent_run_id: str) -> str:
    """The training check a parameter change starts (Enable-Automatic-Training switched to true)."""
    return f"{parent_run_id}-check"


# ── the "object created" event ───────────────────────────────────────────────


def fire_object_created(info: ObjectInfo, source: str) -> str | None:
    """Start the "object created" event of a stored object under an event folder; returns the id of the run
    that handles it (None for objects under other folders, which start nothing)."""
    return object_event(info, source)[0]


def object_event(info: ObjectInfo, source: str) -> tuple[str | None, bool]:
    """:func:`fire_object_created`, and whether this event (this key and ETag) had been started before.

    An image for detection logs its detection event and joins a batch of uploads that one run detects
    (``loop/batches.py``); a training image gets a run of its own."""
    if not storage.fires_event(info.key):
        return None, False
    if info.key.startswith(DETECTION_FOLDER):
        run_id, existed = _join_detection_batch(info, source)
    else:
        run_id = object_created_run_id(info.key, info.etag)
        existed = engine.run_exists(run_id)
        engine.enqueue(engine.OBJECT_EVENTS_QUEUE, object_created,
                       {"key": info.key, "etag": info.etag, "size": info.size, "source": source},
                       workflow_id=run_id, wake=True)
    log.info("object created event", extra={"key": info.key, "etag": info.etag, "run_id": run_id,
                                            "source": source, "repeated": existed})
    return run_id, existed


_upload_batches: batches.UploadBatches | None = None
_upload_batches_lock = threading.Lock()


def upload_batches() -> batches.UploadBatches:
    """This process's batches of uploads for detection (made on first use, timed by the settings)."""
    global _upload_batches
    made = _upload_batches
    if made is not None:  # every upload asks: no lock once made
        return made
    with _upload_batches_lock:
        if _upload_batches is None:
            settings = get_settings()
            _upload_batches = batches.UploadBatches(_queue_batch, prefix=DETECTION_RUN_PREFIX,
                                                    window=settings.upload_batch_seconds,
                                                    max_size=settings.upload_batch_size)
        return _upload_batches


def flush_uploads() -> None:
    """Queue the runs of every batch of uploads now (at shutdown)."""
    if _upload_batches is not None:
        _upload_batches.flush()


def _join_detection_batch(info: ObjectInfo, source: str) -> tuple[str | None, bool]:
    """Log the detection event of an upload under the batch it joins; returns the run id and whether the event
    existed (the same key and ETag before: its run is the earlier one, and nothing new starts)."""
    group = upload_batches()
    batch = group.join()
    member = None
    try:
        event = detections.record_arrival(info.key, info.etag, batch.run_id)
        if event["run_id"] == batch.run_id:
            member = {"key": info.key, "etag": info.etag, "source": source, "detection_id": event["id"]}
    finally:
        group.recorded(batch, member)
    return event["run_id"], member is None


def upload_summary(output: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """What an "object created" run's output says of the upload at ``key``: a batch's output has one summary per
    key (``keys`` and ``detections`` in the same order) and lists the uploads whose event was gone (``missing``);
    a run of one object is its own summary."""
    output = output or {}
    keys = output.get("keys") or []
    if key in keys:
        return output["detections"][keys.index(key)]
    gone = next((item for item in output.get("missing") or [] if item.get("key") == key), None)
    return gone if gone is not None else output


def _queue_batch(run_id: str, members: list[dict[str, Any]], at_once: bool) -> str:
    """Start the run that detects a batch of uploads: here and now in a process that takes object-events runs (under
    its cap), else on the queue (``at_once``: wake this process's worker, if it polls the queue)."""
    return engine.start_run(engine.OBJECT_EVENTS_QUEUE, object_created, {"uploads": members}, workflow_id=run_id,
                            wake=at_once)


def _route(event: dict[str, Any]) -> dict[str, Any]:
    """Which branch of the loop a new object feeds (decided from the event alone, so not a step of its own)."""
    key = event["key"]
    if key.startswith(DETECTION_FOLDER):
        return {"branch": "detection", "key": key}
    return {"branch": "training data", "key": key, "label": storage.label_of(key)}


@engine.step()
def route_object(event: dict[str, Any]) -> dict[str, Any]:
    """Decide which branch of the loop a new object feeds; a training image from an S3 event is checked."""
    route = _route(event)
    if event.get("source") == "s3 event":  # uploads through labelloop were checked before they were stored
        problem = dataset.check_stored_image(route["key"], event["etag"])
        if problem:
            route.update(usable=False, reason=problem)
    return route


def _detect_now(event: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Detect, open a human loop if needed, notify: the work of one detection, run inside one recorded step
    (see :func:`_detect_all`)."""
    return _detect_all([event], run_id)[0]


def _detect_all(events: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """Detect several events, open the human loops they need, notify: run inside one recorded step.

    Inference runs outside any transaction (every image queued before any answer is awaited, so they share
    micro-batches); the answers with their routing, human loops and notifications are then written in one
    transaction, and delivered to channels beyond the feed after it. Each part is idempotent (an answered
    event is not detected again, a detection with a loop gets no second, a notification is stored once per
    detection event and status), so a retried step repeats nothing; if another execution wrote a part a
    moment ago (a unique key clashes at the commit), each event's parts run again one transaction each,
    finding what it wrote."""
    outcomes = detections.infer_all(events)
    try:
        with db.session() as session:
            written = _write_batch(events, outcomes, run_id, session)
    except IntegrityError:
        log.warning("a part of a detection was written by another execution of its run; finding it",
                    extra={"detection_ids": [event["id"] for event in events], "run_id": run_id})
        return [_write_detection_alone(event, outcome, run_id)
                for event, outcome in zip(events, outcomes, strict=True)]
    return [{"detection": found, "human_loop": loop, "notification": notifications.deliver_recorded(recorded)}
            for found, loop, recorded in written]


def _write_batch(events: list[dict[str, Any]], outcomes: list[detections.Outcome], run_id: str,
                 session: Session) -> list[tuple[dict[str, Any], dict[str, Any] | None, notifications.Recorded]]:
    """A batch's answers with their routing, its human loops and notifications, in ``session``'s transaction.
    Every image is routed, and every loop and notification made, before anything is written (routing reads the
    events' routes, never the loops); then each table's rows go in one executemany statement (SQLAlchemy Core),
    so SQLite's write lock is held for those statements and the commit alone."""
    detections.read_versions_once(session)
    values = parameters.values(session=session)
    routed = detections.route_outcomes([event["id"] for event in events], outcomes, session=session, values=values)
    found = [detections.as_dict(row) for row in routed]
    sources = [review.loop_source(item) for item in found]
    loops = {loop.detection_id: loop for loop in reviews.stage_loops(
        [(row, source) for row, source in zip(routed, sources, strict=True) if source], session=session)}
    shown = [reviews.as_dict(loops[item["id"]]) if item["id"] in loops else None for item in found]
    notes = [detection.stage_notification(item, loop, run_id, session=session,
                                          new=event["status"] != item["status"] == DetectionStatus.DETECTED)
             for event, item, loop in zip(events, found, shown, strict=True)]
    detections.write_answers(routed, session=session)
    reviews.write_loops(list(loops.values()), session=session)
    notifications.write_staged(notes, session=session)
    return [(item, loop, notifications.recorded(note)) for item, loop, note in zip(found, shown, notes, strict=True)]


def _write_detection_alone(event: dict[str, Any], outcome: detections.Outcome, run_id: str) -> dict[str, Any]:
    with db.session() as session:
        found = detections.record_outcome(event["id"], outcome, session=session)
    loop = review.open_loop_in(found)
    return {"detection": found, "human_loop": loop, "notification": detection.notify_detection(found, loop, run_id)}


@engine.step()
def detect_and_notify(event_id: int, run_id: str) -> dict[str, Any]:
    """Detect a recorded detection event with the serving version, open a human loop if it needs one, notify.
    One recorded step: concurrent runs' images share the serving micro-batches."""
    return _detect_now(detections.read_event(event_id), run_id)


@engine.step()
def detect_uploaded_image(key: str, etag: str, run_id: str) -> dict[str, Any]:
    """An image arrived for detection: log its detection event (once per key and ETag), then
    :func:`detect_and_notify` it, all in one recorded step (runs of earlier versions: one run per upload)."""
    recorded = detection.record_detection_event(key, etag, run_id)
    return {"event": recorded, **_detect_now(recorded, run_id)}


@engine.step()
def detect_uploaded_images(detection_ids: list[int], run_id: str,
                           keys: list[str] | None = None) -> dict[str, Any]:
    """Detect a batch of uploads whose detection events are logged, open the human loops they need, notify
    each: one recorded step whose output has each image's summary (see :func:`detect_uploads`)."""
    done = detect_uploads(detection_ids, run_id, keys)
    upload_batches().detected(run_id)  # the next upload after a quiet spell starts its run at once
    return done


def detect_uploads(detection_ids: list[int], run_id: str, keys: list[str] | None = None) -> dict[str, Any]:
    """The work of :func:`detect_uploaded_images` (``keys``: the uploads' keys, in the order of ``detection_ids``).
    An event deleted since its upload is not detected: it is logged and listed under ``missing`` (its id and
    key), and the others are detected as usual; ``keys`` of the output are those detected, in the order of
    ``detections``."""
    events = detections.read_events(detection_ids)
    found = {event["id"] for event in events}
    key_of = dict(zip(detection_ids, keys or [], strict=False))
    missing = [{"detection_id": event_id, "key": key_of.get(event_id), "status": "MISSING",
                "status_message": "its detection event was deleted before the batch was detected"}
               for event_id in detection_ids if event_id not in found]
    for item in missing:
        log.warning("detection event of an upload gone before its batch was detected; the others are detected",
                    extra={"detection_id": item["detection_id"], "key": item["key"], "run_id": run_id})
    done = _detect_all(events, run_id) if events else []
    return {"keys": [event["object_key"] for event in events],
            "detections": [{**_summary(item), "notification": item["notification"]} for item in done],
            "missing": missing}


def _summary(done: dict[str, Any]) -> dict[str, Any]:
    found, loop = done["detection"], done["human_loop"]
    return {"detection_id": found["id"], "status": found["status"], "label": found["label"],
            "confidence": found["confidence"], "model_version": found["model_version"],
            "human_loop": loop["name"] if loop else None}


@engine.workflow(OBJECT_CREATED)
def object_created(event: dict[str, Any]) -> dict[str, Any]:
    """A created object: count it as training data (one run each), or detect it (images_for_detection/). Uploads
    for detection come in batches (``{"uploads": [{"key", "etag", "source", "detection_id"}, …]}``, see
    ``loop/batches.py``), detected in one recorded step; a run of an earlier version detects one ``key``."""
    if "uploads" in event:  # a batch of uploads for detection, their events logged as they arrived
        uploads = event["uploads"]
        done = detect_uploaded_images([upload["detection_id"] for upload in uploads], DBOS.workflow_id,
                                      [upload["key"] for upload in uploads])
        return {"branch": "detection", "keys": [upload["key"] for upload in uploads], **done}
    if event["key"].startswith(DETECTION_FOLDER):
        done = detect_uploaded_image(event["key"], event["etag"], DBOS.workflow_id)
        return {**_route(event), **_summary(done)}
    return route_object(event)


@engine.workflow(DETECT_WAITING_IMAGE)
def detect_waiting_image(event_id: int) -> dict[str, Any]:
    """Detect an image that arrived while no model version was serving."""
    return _summary(detect_and_notify(event_id, DBOS.workflow_id))


def queue_waiting_detections() -> dict[str, Any]:
    """Queue the detection of every image still waiting for a model (called from a workflow): in batches, each
    one "object created" run as uploads that arrive together get (``waiting_batch_run_id``); a deploy recorded
    before batches (its step's output has no ``uploads``) queues one run per image, as it did. The runs wake this
    process's object-events worker (they are taken at once, not at its next poll)."""
    waiting = detection.find_waiting_detections()
    version = waiting["model_version"]
    if "uploads" not in waiting:
        for event_id in waiting["detection_ids"]:
            engine.enqueue(engine.OBJECT_EVENTS_QUEUE, detect_waiting_image, event_id,
                           workflow_id=waiting_detection_run_id(event_id, version), wake=True)
        return {"queued": len(waiting["detection_ids"]), "model_version": version}
    uploads, size = waiting["uploads"], waiting["batch_size"]
    runs = [engine.enqueue(engine.OBJECT_EVENTS_QUEUE, object_created, {"uploads": uploads[start:start + size]},
                           workflow_id=waiting_batch_run_id(version, uploads[start:start + size]), wake=True)
            for start in range(0, len(uploads), size)]
    return {"queued": len(uploads), "runs": len(runs), "model_version": version}


def waiting_detections_in_flight() -> set[int]:
    """The detection events that a batch of waiting images queued at a deploy is detecting now."""
    runs = DBOS.list_workflows(name=OBJECT_CREATED, status=list(IN_FLIGHT), workflow_id_prefix=WAITING_BATCH_PREFIX,
                               load_input=True, load_output=False)
    return {upload["detection_id"] for run in runs for upload in _batch_uploads(run.input)}


def _batch_uploads(given: Any) -> list[dict[str, Any]]:
    """The uploads of an "object created" run's input (none for a run of one object)."""
    args = given.get("args") if isinstance(given, dict) else None
    event = args[0] if args else None
    return event.get("uploads") or [] if isinstance(event, dict) else []


IN_FLIGHT = ("PENDING", "ENQUEUED")


@engine.step()
def detections_to_retry() -> list[dict[str, Any]]:
    """Every image still WAITING_FOR_MODEL although a version serves and no run of it is in flight (its run
    failed, or ended before recording the answer), with the run id to detect it under: at most
    ``stranded_detection_retries`` such runs per image and version, after which it is marked FAILED. What to
    queue.

    The runs' statuses are read in one query after the waiting images are listed, and the images are read again
    after that: one whose run detected it meanwhile (a sweep during a stream of uploads lists hundreds whose
    batches are running) is left out, not detected again by a run of its own; the sweep once read each image's
    runs one query at a time."""
    with db.session() as session:
        version = versions.serving_version_name(session=session)
    if version is None:
        return []
    batched, group = waiting_detections_in_flight(), upload_batches()
    # Left out: images a deploy's batch is detecting, and those of a batch of this process about to be queued
    # (asked before the statuses are read, so that a batch queued meanwhile is seen in flight, as it was).
    listed = [(event_id, first_run, _retry_run_ids(event_id, version))
              for event_id, first_run in detection.waiting_events()
              if event_id not in batched and not (first_run and group.holds(first_run))]
    statuses = engine.run_statuses([run_id for _, first_run, tried in listed
                                    for run_id in (first_run, *tried) if run_id])
    wanted = []
    for event_id, first_run, tried in listed:
        if any(statuses.get(run_id) in IN_FLIGHT for run_id in (first_run, *tried) if run_id):
            continue
        free = next((run_id for run_id in tried if run_id not in statuses), None)
        if free is None:
            detection.mark_failed(event_id, version, [run_id for run_id in (first_run, *tried) if run_id])
            continue
        wanted.append({"detection_id": event_id, "run_id": free})
    still = set(detection.still_waiting([item["detection_id"] for item in wanted]))
    return [item for item in wanted if item["detection_id"] in still]


def _retry_run_ids(event_id: int, version: str) -> list[str]:
    """The runs that may detect a stranded image with ``version``: the first, then its retries."""
    base = waiting_detection_run_id(event_id, version)
    return [base, *(f"{base}-retry-{n}" for n in range(1, get_settings().stranded_detection_retries + 1))]


def retry_stranded_detections() -> list[str]:
    """Queue a detection run for every image left waiting while a version serves (see
    :func:`detections_to_retry`): an image never waits for a model that is there. At start-up and on the sweep's
    schedule; returns the run ids."""
    queued = [engine.enqueue(engine.OBJECT_EVENTS_QUEUE, detect_waiting_image, item["detection_id"],
                             workflow_id=item["run_id"], wake=True) for item in detections_to_retry()]
    if queued:
        log.warning("detections left waiting while a version serves queued again", extra={"runs": queued})
    return queued


# ── re-detection: stored images detected again with the serving version ──────


@engine.workflow(REDETECT_IMAGES)
def redetect_images(request: dict[str, Any]) -> dict[str, Any]:
    """Detect stored images again with the serving version: one child run per image, each a new detection
    event pointing to the image's latest one (so the history of answers is kept)."""
    plan = detection.plan_redetection(request["keys"])
    runs = [engine.enqueue(engine.OBJECT_EVENTS_QUEUE, detect_image_again, event_id,
                           workflow_id=detect_again_run_id(event_id, plan["model_version"]), wake=True)
            for event_id in plan["previous_event_ids"]]
    return {"actor": request["actor"], "model_version": plan["model_version"], "queued": len(runs), "runs": runs,
            "skipped": plan["skipped"]}


@engine.workflow(DETECT_IMAGE_AGAIN)
def detect_image_again(previous_event_id: int) -> dict[str, Any]:
    """One image detected again: a new detection event that points to ``previous_event_id``."""
    recorded = detection.record_redetection_event(previous_event_id, DBOS.workflow_id)
    return {"key": recorded["object_key"], "previous_detection_id": previous_event_id,
            **_summary(detect_and_notify(recorded["id"], DBOS.workflow_id))}


def start_redetection(keys: list[str], actor: str) -> str:
    """Queue the re-detection of ``keys`` (stored images under images_for_detection/); returns the run id."""
    return engine.enqueue(engine.OBJECT_EVENTS_QUEUE, redetect_images, {"keys": keys, "actor": actor},
                          workflow_id=f"{REDETECT_RUN_PREFIX}{uuid.uuid4().hex[:12]}", wake=True)


# ── training and deployment ──────────────────────────────────────────────────


@engine.step()
def check_f1_gate(version: str, run_id: str) -> dict[str, Any]:
    """Deploy only if the version is good enough or better than the serving one (modeling/gate.py), judged on
    what human review knows about production traffic; otherwise it is TRAINING_FAILED with its metrics."""
    return models.apply_f1_gate(version, run_id, reviews.review_evidence())


@engine.step()
def start_new_version(version: str, run_id: str) -> dict[str, Any]:
    """Store the new version's warm start against the serving one (``detection/warm_start.py``; None: it starts
    cold), then load and warm it while the current one keeps serving."""
    warm = warm_start.store(version)
    started = models.start_version(version, run_id)
    return {**started, "warm_start": None if warm is None else {"previous": warm["previous"],
                                                                "backtest": len(warm["backtest"])}}


def _deploy(version: str, run_id: str) -> dict[str, Any]:
    started = start_new_version(version, run_id)
    switched = modeling.switch_endpoint(version, run_id)
    stopped = modeling.stop_previous_version(switched["previous"], run_id)
    waiting = queue_waiting_detections()
    return {"started": started, "switched": switched, "stopped": stopped, "waiting_detections": waiting}


def _check_and_train(trigger: str) -> dict[str, Any]:
    run_id = DBOS.workflow_id
    decision = modeling.check_new_training(trigger)
    modeling.notify_check(decision, run_id)
    if not decision["train"]:
        return decision
    version = modeling.create_manifest(run_id)["version"]
    trained = modeling.train_model(version, run_id)
    if not trained["trained"]:
        return {**decision, "version": version, "training": trained}
    evaluation = modeling.evaluate_model(version)
    gate = check_f1_gate(version, run_id)
    result = {**decision, "version": version, "training": trained, "evaluation": evaluation, "gate": gate}
    if not gate["passed"]:
        return result
    deployed = _deploy(version, run_id)
    modeling.record_trained_images(version)
    return {**result, "deployment": deployed}


@engine.workflow(TRAINING_CHECK)
def training_check(trigger: str) -> dict[str, Any]:
    """Check for new training now (API, CLI, or Enable-Automatic-Training switched to true)."""
    return _check_and_train(trigger)


@engine.workflow(SCHEDULED_TRAINING_CHECK)
def scheduled_training_check(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """The training check on the Automatic-Training-Poll-Frequency schedule."""
    return _check_and_train(f"schedule at {scheduled_time.isoformat()}")


@engine.workflow(DEPLOY_VERSION)
def deploy_model_version(version: str, actor: str) -> dict[str, Any]:
    """Deploy (or roll back to) a trained version, blue-green."""
    return {"actor": actor, **_deploy(version, DBOS.workflow_id)}


@engine.workflow(STOP_VERSION)
def stop_model_version(version: str, actor: str) -> dict[str, Any]:
    """Stop serving a version."""
    return {"actor": actor, **modeling.stop_previous_version(version, DBOS.workflow_id)}


def start_training_check(trigger: str, run_id: str | None = None) -> str:
    """Queue a training check (one runs at a time, across all workers); returns its run id."""
    return engine.enqueue(engine.TRAINING_QUEUE, training_check, trigger, workflow_id=run_id)


def start_deploy(version: str, actor: str) -> str:
    """Queue a blue-green deployment of ``version`` (also how a roll back is done); returns the run id."""
    return engine.enqueue(engine.TRAINING_QUEUE, deploy_model_version, version, actor)


def start_stop(version: str, actor: str) -> str:
    """Queue stopping ``version``; returns the run id."""
    return engine.enqueue(engine.TRAINING_QUEUE, stop_model_version, version, actor)


# ── human loops ──────────────────────────────────────────────────────────────


@engine.workflow(APPLY_HUMAN_ANSWER)
def apply_human_answer(name: str, answer_round: int = 0) -> dict[str, Any]:
    """Apply a loop's answer once its undo window has passed: the copy is new training data, with its own
    "object created" run."""
    wait = review.undo_seconds_left(name, answer_round)
    if wait > 0:
        DBOS.sleep(wait)  # durable: a restart sleeps only what is left
    if not review.begin_apply(name, answer_round):
        return {"loop": name, "round": answer_round, "undone": True}
    copied_object = review.copy_to_training_data(name)
    copied = copied_object["key"] if copied_object else None
    if copied_object:
        fire_object_created(ObjectInfo(**copied_object), "human loop")
    output = review.write_loop_output(name)
    recorded = review.record_answer_on_detection(name)
    shown = reviews.shown_copies(copied)
    review.notify_answer(name, shown["copied_key"], recorded, DBOS.workflow_id)
    return {"loop": name, "round": answer_round, **shown, "output_key": output, **recorded}


def start_apply_answer(loop_name: str, answer_round: int = 0, run_id: str | None = None) -> str:
    """Queue the run that applies a loop's answer (once per loop and round: a second call returns the same run)."""
    return engine.enqueue(engine.OBJECT_EVENTS_QUEUE, apply_human_answer, loop_name, answer_round,
                          workflow_id=run_id or answer_run_id(loop_name, answer_round), wake=True)


APPLY_RETRIES = 3
FAILED_RUN = ("ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")


@engine.step()
def answers_to_apply() -> list[dict[str, Any]]:
    """Every answer recorded but not applied whose run is missing (a stop between recording the answer and
    queueing its run) or failed (retried up to ``APPLY_RETRIES`` times under new run ids): what to queue."""
    with db.session() as session:
        unapplied = reviews.unapplied_answers(session=session)
    wanted = []
    for name, answer_round in unapplied:
        first = answer_run_id(name, answer_round)
        for run_id in (first, *(f"{first}-retry-{n}" for n in range(1, APPLY_RETRIES + 1))):
            status = engine.run_status(run_id)
            if status is None:
                wanted.append({"loop": name, "round": answer_round, "run_id": run_id})
            if status not in FAILED_RUN:
                break
        else:
            log.error("an answer could not be applied after retries", extra={"loop": name, "run_id": first})
    return wanted


def apply_recorded_answers() -> list[str]:
    """Queue the apply run of every answer recorded but not applied (see :func:`answers_to_apply`); at
    start-up and on the answer sweep's schedule. Returns the loops queued."""
    wanted = answers_to_apply()
    for item in wanted:
        start_apply_answer(item["loop"], item["round"], item["run_id"])
    if wanted:
        log.warning("queued the runs of answers not yet applied", extra={
            "loops": len(wanted), "runs": [item["run_id"] for item in wanted][:20]})
    return [item["loop"] for item in wanted]


@engine.step()
def forget_idle_sweeps(run_id: str) -> int:
    """Delete the earlier sweep runs that queued nothing: the run list keeps the newest such run, not one every
    few minutes. Returns how many were deleted."""
    return runs.forget_idle_runs(ANSWER_SWEEP, run_id, lambda output: not any(output.values()))


@engine.workflow(ANSWER_SWEEP)
def scheduled_answer_sweep(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """The sweep's schedule: no recorded answer stays unapplied and no image waits for a model that serves, even
    where no process restarts."""
    swept = {"queued": apply_recorded_answers(), "detection_runs": retry_stranded_detections()}
    forget_idle_sweeps(DBOS.workflow_id)
    return swept


def schedule_answer_sweep(every_minutes: int) -> dict[str, Any]:
    """Keep the answer sweep on its schedule (at start-up)."""
    return engine.apply_schedule("answer-sweep", scheduled_answer_sweep, every_minutes, True,
                                 engine.OBJECT_EVENTS_QUEUE)


# ── human sampling ───────────────────────────────────────────────────────────


def _sample(trigger: str) -> dict[str, Any]:
    result = sampling.sample_detections(trigger)
    sampling.notify_sampling(result, DBOS.workflow_id)
    return result


@engine.workflow(HUMAN_SAMPLING)
def human_sampling(trigger: str) -> dict[str, Any]:
    """Human sampling on demand."""
    return _sample(trigger)


@engine.workflow(SCHEDULED_HUMAN_SAMPLING)
def scheduled_human_sampling(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """Human sampling on its schedule."""
    return _sample(f"schedule at {scheduled_time.isoformat()}")


def start_sampling(trigger: str) -> str:
    """Queue a sampling run now; returns its run id."""
    return engine.enqueue(engine.SAMPLING_QUEUE, human_sampling, trigger)


# ── schedules, and the parameters that drive them ────────────────────────────


@dataclass(frozen=True)
class Schedule:
    """A schedule of the loop: the workflow it fires, on which queue, and the parameters that time it."""

    name: str
    title: str
    workflow: Any
    queue: str
    every_minutes: str  # the parameter giving the period
    enabled_by: str  # the parameter switching it on and off

    @property
    def parameters(self) -> set[str]:
        return {self.every_minutes, self.enabled_by}


SCHEDULES = (
    Schedule("training-check", "Training check", scheduled_training_check, engine.TRAINING_QUEUE,
             parameters.TRAINING_POLL_FREQUENCY, parameters.ENABLE_AUTOMATIC_TRAINING),
    Schedule("human-sampling", "Human sampling", scheduled_human_sampling, engine.SAMPLING_QUEUE,
             parameters.HUMAN_SAMPLING_FREQUENCY, parameters.ENABLE_AUTOMATIC_HUMAN_SAMPLING),
)


@engine.step()
def apply_schedules(values: dict[str, Any], names: list[str] | None = None) -> list[dict[str, Any]]:
    """Make the schedules match ``values`` (only those the parameters ``names`` drive, if given)."""
    return [engine.apply_schedule(s.name, s.workflow, values[s.every_minutes], values[s.enabled_by], s.queue)
            for s in SCHEDULES if names is None or s.parameters.intersection(names)]


def apply_schedules_now() -> list[dict[str, Any]]:
    """Make the schedules match the parameters in force (at start-up)."""
    with db.session() as session:
        values = parameters.values(session=session)
    return apply_schedules(values)


@engine.workflow(PARAMETER_CHANGE)
def parameter_change(change: dict[str, Any]) -> dict[str, Any]:
    """Apply one accepted parameter change: re-time, pause or resume schedules; notify; check training."""
    values = parameters_flows.read_parameters()
    applied = apply_schedules(values, [change["name"]])
    parameters_flows.notify_change(change, applied, DBOS.workflow_id)
    result: dict[str, Any] = {"parameter": change["name"], "schedules": applied}
    if change["name"] == parameters.ENABLE_AUTOMATIC_TRAINING and change["new_value"] == "true":
        result["training_check_run"] = start_training_check("Enable-Automatic-Training switched to true",
                                                            run_id=training_check_run_id(DBOS.workflow_id))
    return result


def start_change_run(change: dict[str, Any]) -> str:
    """Queue the run that applies an accepted parameter change; returns its run id."""
    return engine.enqueue(engine.PARAMETERS_QUEUE, parameter_change, change,
                          workflow_id=parameter_change_run_id(change["name"], change["version"]))


# ── run retention ────────────────────────────────────────────────────────────


def _training_runs() -> set[str]:
    with db.session() as session:
        return versions.training_run_ids(session=session)


@engine.step()
def prune_old_runs(days: int) -> dict[str, Any]:
    """Delete the finished runs older than ``days`` days (``runs.retention``), except those that trained a model
    version: the version's page links to them."""
    return retention.prune_finished_runs(days, _training_runs)


@engine.workflow(RUN_PRUNING)
def scheduled_run_pruning(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """Run retention's schedule (daily at midnight UTC): prune what ``LABELLOOP_RUN_RETENTION_DAYS`` no longer
    keeps."""
    return prune_old_runs(get_settings().run_retention_days)


def schedule_run_pruning(days: int) -> dict[str, Any]:
    """Keep the daily run pruning on its schedule, paused when runs are kept for ever (``days`` 0); at start-up."""
    return engine.apply_schedule("run-pruning", scheduled_run_pruning, 24 * 60, days > 0, engine.OBJECT_EVENTS_QUEUE)
