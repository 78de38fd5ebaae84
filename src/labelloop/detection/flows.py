"""Detection branch steps for objects created under ``images_for_detection/``."""

from __future__ import annotations

from typing import Any

from labelloop import engine


@engine.step()
def detect_object(event: dict[str, Any]) -> dict[str, Any]:
    """Run detection on a new image with the serving model version."""
    return {"detection": "pending", "reason": "no model version is serving yet", "key": event["key"]}
