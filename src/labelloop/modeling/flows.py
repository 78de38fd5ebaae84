"""The training branch as durable steps: check → manifest → train → evaluate → F1 gate → start → switch → stop.

Also the deploy / roll back and stop runs started from the API, built from the same steps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dbos import DBOS

from labelloop import engine
from labelloop.modeling import gate, service
from labelloop.notifications import service as notifications

TRAINING_CHECK = "training_check"
SCHEDULED_TRAINING_CHECK = "scheduled_training_check"
DEPLOY_VERSION = "deploy_model_version"
STOP_VERSION = "stop_model_version"


def start_training_check(trigger: str, run_key: str | None = None) -> str:
    """Queue a training check (one runs at a time, across all workers); returns its run id."""
    return engine.enqueue(engine.TRAINING_QUEUE, training_check, trigger, workflow_id=run_key)


def start_deploy(version: str, actor: str) -> str:
    """Queue a blue-green deployment of ``version`` (also how a roll back is done); returns the run id."""
    return engine.enqueue(engine.TRAINING_QUEUE, deploy_model_version, version, actor)


def start_stop(version: str, actor: str) -> str:
    """Queue stopping ``version``; returns the run id."""
    return engine.enqueue(engine.TRAINING_QUEUE, stop_model_version, version, actor)


@engine.step()
def check_new_training(trigger: str) -> dict[str, Any]:
    """Decide whether to train: automatic training on, and enough labeled images added since last time."""
    return service.check_new_training(trigger)


@engine.step()
def notify_check(decision: dict[str, Any], run_id: str) -> int:
    """Report the outcome of a training check."""
    verdict = "training starts" if decision["train"] else "no training"
    return notifications.notify("training.checked", f"labelloop: training check — {verdict}",
                                f"Training check ({decision['trigger']}): {decision['reason']}.",
                                status="TRAINING_CHECKED", run_id=run_id, dedupe_key=f"{run_id}:checked")


@engine.step()
def create_manifest(run_id: str) -> dict[str, Any]:
    """Create the new model version and write its manifest (every image, its label and content hash)."""
    return service.create_version_with_manifest(run_id)


@engine.step()
def train_model(version: str, run_id: str) -> dict[str, Any]:
    """Embed the images (cached by content hash) and train the head on the training split."""
    return service.train_version(version, run_id)


@engine.step()
def evaluate_model(version: str) -> dict[str, Any]:
    """Write the test-split evaluation to ``evaluation/<version>.json``."""
    return service.write_evaluation(version)


@engine.step()
def check_f1_gate(version: str, run_id: str) -> dict[str, Any]:
    """Deploy only if the version is good enough or better than the serving one (modeling/gate.py);
    otherwise it is TRAINING_FAILED with its metrics."""
    return gate.f1_gate(version, run_id)


@engine.step()
def start_new_version(version: str, run_id: str) -> dict[str, Any]:
    """Load and warm the new version while the current one keeps serving."""
    return service.start_version(version, run_id)


@engine.step()
def switch_endpoint(version: str, run_id: str) -> dict[str, Any]:
    """Switch the endpoint to the new version atomically."""
    return service.switch_endpoint(version, run_id)


@engine.step()
def stop_previous_version(previous: str | None, run_id: str) -> dict[str, Any]:
    """Stop the version that served before."""
    return service.stop_version(previous, run_id)


@engine.step()
def record_trained_images(version: str) -> dict[str, Any]:
    """Remember how many labeled images this successful training used (``previous_trained_images``)."""
    return service.record_trained_images(version)


def _deploy(version: str, run_id: str) -> dict[str, Any]:
    started = start_new_version(version, run_id)
    switched = switch_endpoint(version, run_id)
    stopped = stop_previous_version(switched["previous"], run_id)
    from labelloop.detection.flows import queue_waiting_detections

    waiting = queue_waiting_detections()
    return {"started": started, "switched": switched, "stopped": stopped, "waiting_detections": waiting}


def _check_and_train(trigger: str) -> dict[str, Any]:
    run_id = DBOS.workflow_id
    decision = check_new_training(trigger)
    notify_check(decision, run_id)
    if not decision["train"]:
        return decision
    version = create_manifest(run_id)["version"]
    trained = train_model(version, run_id)
    if not trained["trained"]:
        return {**decision, "version": version, "training": trained}
    evaluation = evaluate_model(version)
    gate = check_f1_gate(version, run_id)
    result = {**decision, "version": version, "training": trained, "evaluation": evaluation, "gate": gate}
    if not gate["passed"]:
        return result
    deployed = _deploy(version, run_id)
    record_trained_images(version)
    return {**result, "deployment": deployed}


@DBOS.workflow(name=TRAINING_CHECK)
def training_check(trigger: str) -> dict[str, Any]:
    """Check for new training now (API, CLI, or Enable-Automatic-Training switched to true)."""
    return _check_and_train(trigger)


@DBOS.workflow(name=SCHEDULED_TRAINING_CHECK)
def scheduled_training_check(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """The training check on the Automatic-Training-Poll-Frequency schedule."""
    return _check_and_train(f"schedule at {scheduled_time.isoformat()}")


@DBOS.workflow(name=DEPLOY_VERSION)
def deploy_model_version(version: str, actor: str) -> dict[str, Any]:
    """Deploy (or roll back to) a trained version, blue-green."""
    return {"actor": actor, **_deploy(version, DBOS.workflow_id)}


@DBOS.workflow(name=STOP_VERSION)
def stop_model_version(version: str, actor: str) -> dict[str, Any]:
    """Stop serving a version."""
    return {"actor": actor, **stop_previous_version(version, DBOS.workflow_id)}

