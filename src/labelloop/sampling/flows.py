"""The human sampling branch, run on the Automatic-Human-Sampling-Frequency schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dbos import DBOS

from labelloop import engine

SCHEDULED_HUMAN_SAMPLING = "scheduled_human_sampling"


@engine.step()
def sample_detections(scheduled_time: str) -> dict[str, Any]:
    """Mark every Human-Sampling-Interval-th detection since sampling was enabled (arrives with detection)."""
    return {"sampled": 0, "reason": "no detections are recorded yet", "scheduled_time": scheduled_time}


@DBOS.workflow(name=SCHEDULED_HUMAN_SAMPLING)
def scheduled_human_sampling(scheduled_time: datetime, context: Any) -> dict[str, Any]:
    """Human sampling on its schedule."""
    return sample_detections(scheduled_time.isoformat())
