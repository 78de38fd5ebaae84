"""The Parameter Store steps of the loop (composed into the parameter-change workflow in
``labelloop/loop/routing.py``)."""

from __future__ import annotations

from typing import Any

from labelloop import db, engine
from labelloop.notifications import service as notifications
from labelloop.parameters import service


@engine.step()
def read_parameters() -> dict[str, Any]:
    """The parameters in force when the change is applied."""
    with db.session() as session:
        return service.values(session=session)


@engine.step()
def notify_change(change: dict[str, Any], applied: list[dict[str, Any]], run_id: str) -> int:
    """Tell everyone who subscribed that a parameter changed."""
    how = "; ".join(f"{a['schedule']}: {', '.join(a['actions'])}" for a in applied)
    message = (f"Parameter {change['name']} changed from {change['old_value']} to {change['new_value']} "
               f"by {change['changed_by']} (version {change['version']})." + (f" Schedules: {how}." if how else ""))
    return notifications.notify("parameter.changed", f"labelloop: {change['name']} = {change['new_value']}",
                                message, status="APPLIED", run_id=run_id,
                                dedupe_key=f"{run_id}:notify")
