"""The human sampling branch, run on the Automatic-Human-Sampling-Frequency schedule (or on demand)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dbos import DBOS

from labelloop import engine
from labelloop.notifications import service as notifications
from labelloop.sampling import service

SCHEDULED_HUMAN_SAMPLING = "scheduled_human_sampling"
HUMAN_SAMPLING = "human_sampling"


def start_sampling(trigger: str) -> str:
    """Queue a sampling run now; returns its run id."""
    return engine.enqueue(engine.SAMPLING_QUEUE, human_sampling, trigger)


@engine.step()
def sample_detections(trigger: str) -> dict[str, Any]:
    """Mark every Human-Sampling-Interval-th detection since sampling was enabled and open its loop."""
    return {"trigger": trigger, **service.sample_detections()}


@engine.step()
def notify_sampling(result: dict[str, Any], run_id: str) -> int | None:
    """Report the loops opened for sampling (nothing to report, nothing sent)."""
    if not result["sampled"]:
        return None
    return notifications.notify("sampling.completed",
                                f"labelloop: human sampling marked {len(result['sampled'])} detection(s)",
                                f"Human sampling marked {len(result['sampled'])} detection(s) and opened "
                                f"{len(result['opened'])} human loop(s) with source 'Human Sampling'.",
                                status="SAMPLED", run_id=run_id, dedupe_key=f"{run_id}:sampled")


def _sample(trigger: str) -> dict[str, Any]:
    result = sample_detections(trigger)
    notify_sampling(result, DBOS.workflow_id)
    return result


@DBOS.workflow(name=HUMAN_SAMPLING)
def human_sampling(trigger: str) -> dict[str, Any]:
    """Human sampling on demand."""
    return _sample(trigger)


@DBOS.workflow(name=SCHEDULED_HUMAN_SAMPLING)
def scheduled_human_sampling(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """Human sampling on its schedule."""
    return _sample(f"schedule at {scheduled_time.isoformat()}")
