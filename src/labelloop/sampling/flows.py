"""The human sampling steps of the loop (composed into workflows in ``labelloop/loop/routing.py``)."""

from __future__ import annotations

from typing import Any

from labelloop import engine
from labelloop.notifications import service as notifications
from labelloop.sampling import service


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
