"""Applying a human answer as a durable run: copy to training data, write the A2I output, record, notify."""

from __future__ import annotations

from typing import Any

from dbos import DBOS

from labelloop import engine
from labelloop.notifications import service as notifications
from labelloop.review import service
from labelloop.storage.flows import fire_object_created
from labelloop.storage.models import ObjectInfo

APPLY_HUMAN_ANSWER = "apply_human_answer"


def start_apply_answer(loop: dict[str, Any]) -> str:
    """Queue the run that applies a loop's answer (once per loop); returns its run id."""
    return engine.enqueue(engine.OBJECT_EVENTS_QUEUE, apply_human_answer, loop["name"],
                          workflow_id=f"answer-{loop['name']}")


@engine.step()
def copy_to_training_data(name: str) -> dict[str, Any] | None:
    """Copy the image under its label's folder (not for None of the Above or sampling loops)."""
    return service.copy_to_training_data(name)


@engine.step()
def write_loop_output(name: str) -> str:
    """Write the loop's output JSON to ``a2i-human-loop-data/``."""
    return service.write_output(name)


@engine.step()
def record_answer_on_detection(name: str) -> dict[str, Any]:
    """Write the answer onto the detection event."""
    return service.record_on_detection(name)


@engine.step()
def notify_answer(name: str, copied: str | None, recorded: dict[str, Any], run_id: str) -> int:
    """Report the completed human loop."""
    verdict = "agrees with" if recorded["agrees"] else "differs from"
    where = f" Copied to {copied}." if copied else " Nothing added to the training data."
    return notifications.notify(
        "human_loop.completed", f"labelloop: human loop {name} answered {recorded['human_label']}",
        f"Human loop {name} was answered {recorded['human_label']!r}, which {verdict} the model's "
        f"{recorded['model_label']!r}.{where}", label=recorded["human_label"], status="Completed",
        run_id=run_id, dedupe_key=f"{run_id}:answered")


@DBOS.workflow(name=APPLY_HUMAN_ANSWER)
def apply_human_answer(name: str) -> dict[str, Any]:
    """Apply a loop's first answer."""
    copied_object = copy_to_training_data(name)
    copied = copied_object["key"] if copied_object else None
    if copied_object:  # the copy is new training data: its own "object created" run, started from here
        fire_object_created(ObjectInfo(**copied_object), "human loop")
    output = write_loop_output(name)
    recorded = record_answer_on_detection(name)
    notify_answer(name, copied, recorded, DBOS.workflow_id)
    return {"loop": name, "copied_key": copied, "output_key": output, **recorded}
