"""The training and deployment steps of the loop, recorded in its runs (composed into workflows in
``labelloop/loop/routing.py``)."""

from __future__ import annotations

from typing import Any

from labelloop import engine
from labelloop.modeling import dataset, service
from labelloop.notifications import service as notifications


@engine.step()
def check_new_training(trigger: str) -> dict[str, Any]:
    """Decide whether to train: automatic training on, and enough labeled images added since last time."""
    return dataset.check_new_training(trigger)


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
