"""The training branch: check for new training, then (with the model code) train, evaluate, gate, deploy."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dbos import DBOS

from labelloop import db, engine
from labelloop.notifications import service as notifications
from labelloop.parameters import service as parameters
from labelloop.storage import service as storage
from labelloop.storage.models import LABELED_FOLDER

TRAINING_CHECK = "training_check"
SCHEDULED_TRAINING_CHECK = "scheduled_training_check"


def start_training_check(trigger: str, run_key: str | None = None) -> str:
    """Queue a training check (one runs at a time); returns its run id."""
    return engine.enqueue(engine.TRAINING_QUEUE, training_check, trigger, workflow_id=run_key)


@engine.step()
def check_new_training(trigger: str) -> dict[str, Any]:
    """Decide whether to train: automatic training on, and enough labeled images added since last time."""
    with db.session() as session:
        enabled = parameters.value(session, parameters.ENABLE_AUTOMATIC_TRAINING)
        minimum = parameters.value(session, parameters.MINIMUM_UNTRAINED_IMAGES)
        previous = int(parameters.system_state(session).get("previous_trained_images", 0))
    images = [info for info in storage.list_objects(LABELED_FOLDER) if storage.label_of(info.key)]
    labels = sorted({storage.label_of(info.key) for info in images})
    untrained = len(images) - previous
    decision = {"trigger": trigger, "automatic_training_enabled": enabled, "labeled_images": len(images),
                "labels": labels, "previous_trained_images": previous, "untrained_images": untrained,
                "minimum_untrained_images": minimum}
    if not enabled and trigger.startswith("schedule"):
        return {**decision, "train": False, "reason": "automatic training is disabled"}
    if untrained < minimum:
        return {**decision, "train": False,
                "reason": f"{untrained} new labeled image(s) since the last training; {minimum} needed"}
    return {**decision, "train": True, "reason": f"{untrained} new labeled images ≥ {minimum}"}


@engine.step()
def notify_check(decision: dict[str, Any], run_id: str) -> int:
    """Report the outcome of a training check."""
    verdict = "training starts" if decision["train"] else "no training"
    return notifications.notify("training.checked", f"labelloop: training check — {verdict}",
                                f"Training check ({decision['trigger']}): {decision['reason']}.",
                                status="TRAINING_CHECKED", run_id=run_id, dedupe_key=f"{run_id}:checked")


@engine.step()
def train_model_version(decision: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate and deploy a new model version (arrives with the model code)."""
    return {"trained": False, "reason": "no model code yet", "labeled_images": decision["labeled_images"]}


def _check_and_train(trigger: str) -> dict[str, Any]:
    decision = check_new_training(trigger)
    notify_check(decision, DBOS.workflow_id)
    if not decision["train"]:
        return decision
    return {**decision, "training": train_model_version(decision)}


@DBOS.workflow(name=TRAINING_CHECK)
def training_check(trigger: str) -> dict[str, Any]:
    """Check for new training now (API, CLI, or Enable-Automatic-Training switched to true)."""
    return _check_and_train(trigger)


@DBOS.workflow(name=SCHEDULED_TRAINING_CHECK)
def scheduled_training_check(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """The training check on the Automatic-Training-Poll-Frequency schedule."""
    return _check_and_train(f"schedule at {scheduled_time.isoformat()}")
