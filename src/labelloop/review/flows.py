"""The human-loop steps of the loop: open a loop for a detection, and apply an answer (copy to training data,
write the A2I output, record it on the detection, notify); composed into workflows in
``labelloop/loop/routing.py``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from labelloop import engine
from labelloop.detection.service import is_audit, needs_human_review
from labelloop.notifications import service as notifications
from labelloop.review import service
from labelloop.review.models import HumanLoopSource


@engine.step()
def open_human_loop(detection: dict[str, Any]) -> dict[str, Any] | None:
    """Open a human loop when the detection's routing rule sends it to a human: an audit of silent-error
    control as "Human Sampling", any other (below a confidence threshold) as "Detection"."""
    return open_loop_in(detection)


def open_loop_in(detection: dict[str, Any], *, session: Session | None = None) -> dict[str, Any] | None:
    """:func:`open_human_loop` as a plain function; with ``session``, in the caller's transaction (the
    detection's answer and its loop are written together)."""
    source = loop_source(detection)
    return None if source is None else service.create_loop(detection["id"], source, session=session)


def loop_source(detection: dict[str, Any]) -> str | None:
    """The source of the human loop the detection's routing rule asks for (None: no loop): an audit of
    silent-error control is "Human Sampling", any other (below a confidence threshold) "Detection"."""
    if not needs_human_review(detection):
        return None
    return HumanLoopSource.SAMPLING if is_audit(detection) else HumanLoopSource.DETECTION


@engine.step()
def undo_seconds_left(name: str, answer_round: int) -> float:
    """How long the reviewer can still undo this answer (the run waits that long before applying it)."""
    return service.undo_seconds_left(name, answer_round)


@engine.step()
def begin_apply(name: str, answer_round: int) -> bool:
    """From here on the answer is applied and cannot be undone; False when it was undone."""
    return service.begin_apply(name, answer_round)


@engine.step()
def copy_to_training_data(name: str) -> dict[str, Any] | None:
    """Copy the image under its label's folder (not for None of the Above or sampling loops); a Label Audit
    moves the training image; a correction moves the copy."""
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
