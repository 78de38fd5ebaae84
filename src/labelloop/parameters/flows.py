"""The "Parameter Store" branch: apply an accepted change to the schedules, notify, maybe check training."""

from __future__ import annotations

from typing import Any

from dbos import DBOS

from labelloop import db, engine
from labelloop.notifications import service as notifications
from labelloop.parameters import service

PARAMETER_CHANGE = "parameter_change"
TRAINING_SCHEDULE = "training-check"
SAMPLING_SCHEDULE = "human-sampling"

TRAINING_PARAMETERS = {service.ENABLE_AUTOMATIC_TRAINING, service.TRAINING_POLL_FREQUENCY}
SAMPLING_PARAMETERS = {service.ENABLE_AUTOMATIC_HUMAN_SAMPLING, service.HUMAN_SAMPLING_FREQUENCY}


def start_change_run(change: dict[str, Any]) -> str:
    """Queue the run that applies an accepted parameter change; returns its run id."""
    return engine.enqueue(engine.PARAMETERS_QUEUE, parameter_change, change,
                          workflow_id=f"parameter-{change['name']}-v{change['version']}")


@engine.step()
def read_parameters() -> dict[str, Any]:
    """The parameters in force when the change is applied."""
    with db.session() as session:
        return service.values(session)


@engine.step()
def apply_schedules(values: dict[str, Any], names: list[str] | None = None) -> list[dict[str, Any]]:
    """Make the training and sampling schedules match ``values`` (only those ``names`` touch, if given)."""
    from labelloop.modeling.flows import scheduled_training_check
    from labelloop.sampling.flows import scheduled_human_sampling

    applied = []
    if names is None or TRAINING_PARAMETERS.intersection(names):
        applied.append(engine.apply_schedule(
            TRAINING_SCHEDULE, scheduled_training_check, values[service.TRAINING_POLL_FREQUENCY],
            values[service.ENABLE_AUTOMATIC_TRAINING], engine.TRAINING_QUEUE))
    if names is None or SAMPLING_PARAMETERS.intersection(names):
        applied.append(engine.apply_schedule(
            SAMPLING_SCHEDULE, scheduled_human_sampling, values[service.HUMAN_SAMPLING_FREQUENCY],
            values[service.ENABLE_AUTOMATIC_HUMAN_SAMPLING], engine.SAMPLING_QUEUE))
    return applied


@engine.step()
def notify_change(change: dict[str, Any], applied: list[dict[str, Any]], run_id: str) -> int:
    """Tell everyone who subscribed that a parameter changed."""
    how = "; ".join(f"{a['schedule']}: {', '.join(a['actions'])}" for a in applied)
    message = (f"Parameter {change['name']} changed from {change['old_value']} to {change['new_value']} "
               f"by {change['changed_by']} (version {change['version']})." + (f" Schedules: {how}." if how else ""))
    return notifications.notify("parameter.changed", f"labelloop: {change['name']} = {change['new_value']}",
                                message, status="APPLIED", run_id=run_id,
                                dedupe_key=f"{run_id}:notify")


@DBOS.workflow(name=PARAMETER_CHANGE)
def parameter_change(change: dict[str, Any]) -> dict[str, Any]:
    """Apply one accepted parameter change: re-time, pause or resume schedules; notify; check training."""
    values = read_parameters()
    applied = apply_schedules(values, [change["name"]])
    notify_change(change, applied, DBOS.workflow_id)
    result: dict[str, Any] = {"parameter": change["name"], "schedules": applied}
    if change["name"] == service.ENABLE_AUTOMATIC_TRAINING and change["new_value"] == "true":
        from labelloop.modeling.flows import start_training_check

        result["training_check_run"] = start_training_check("Enable-Automatic-Training switched to true",
                                                            run_key=f"{DBOS.workflow_id}-check")
    return result
