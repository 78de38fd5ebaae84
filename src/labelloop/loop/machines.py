"""The state machines of the loop's branches, as data for the run graph: one :class:`Machine` per branch of
``routing``'s workflows, each task state naming the recorded step (or child run) it stands for.

Kept beside the workflows on purpose: when a step is renamed or added in ``routing.py``, this is the file to
change with it; ``tests/test_console_graph.py`` fails when a task state names no registered step or workflow.
Tails two branches share (deploying a version, detecting an image) are built once and placed in both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from labelloop.loop import routing
from labelloop.runs.graph import CHOICE, FAIL, START, SUCCEED, Machine, State, Transition, get

# ── what choice states say about a run ───────────────────────────────────────


def _pick(flag: bool | None, yes: str, no: str) -> str | None:
    return None if flag is None else yes if flag else no


def _train_reason(run: dict[str, Any]) -> str | None:
    reason = get(run["output"], "reason")
    return f"Decided: {reason}." if reason else None


def _trained_reason(run: dict[str, Any]) -> str | None:
    training = get(run["output"], "training")
    if not isinstance(training, dict):
        return None
    if training.get("trained"):
        return f"Trained {training.get('version')}: F1 {training.get('f1')}."
    return f"Training failed: {training.get('reason')}."


def _gate_reason(run: dict[str, Any]) -> str | None:
    gate = get(run["output"], "gate")
    if not isinstance(gate, dict):
        return None
    verdict = "passed" if gate.get("passed") else "failed"
    return f"F1 {gate.get('f1')} against Minimum-F1-Score {gate.get('minimum_f1')}: {verdict}."


def _route_reason(run: dict[str, Any]) -> str | None:
    branch = get(run["output"], "branch")
    return f"Routed to: {branch}." if branch else None


def _training_started(run: dict[str, Any]) -> str | None:
    if get(run["output"], "training_check_run"):
        return "Enable-Automatic-Training was switched to true: a training check runs at once."
    if run["output"] is not None:
        return "No training check: the change does not switch Enable-Automatic-Training to true."
    return None


# ── shared tails ─────────────────────────────────────────────────────────────


def _rows(states: tuple[State, ...], first: int) -> tuple[State, ...]:
    """``states`` one per row from row ``first`` down."""
    return tuple(replace(state, row=first + i) for i, state in enumerate(states))


def _chain(*ids: str) -> tuple[Transition, ...]:
    """Transitions from each state to the next."""
    return tuple(Transition(a, b) for a, b in pairwise(ids))


# Deploying a version, blue-green, then detecting the images that waited for one (routing._deploy).
DEPLOY_STATES = (
    State("start_new_version", "Start new version", note="Blue side: load and warm it."),
    State("switch_endpoint", "Switch endpoint"),
    State("stop_previous_version", "Stop previous version", skipped_if=lambda out: get(out, "stopped") is None),
    State("find_waiting_detections", "Find waiting detections"),
    State(routing.DETECT_WAITING_IMAGE, "Detect waiting images",
          note="The images that arrived while no model served, detected in batches (one detection run each; "
               "deploys recorded before batches: one run per image).",
          steps=(routing.DETECT_WAITING_IMAGE, routing.OBJECT_CREATED)),
)
DEPLOY_IDS = tuple(state.id for state in DEPLOY_STATES)

# Detecting one image: one recorded step (routing.detect_and_notify, or routing.detect_uploaded_image for an
# upload, which also logs the event) whose output holds each part; the per-part step names are those of runs
# recorded before the parts were merged into one step.
# routing.detect_uploaded_images detects a batch of uploads in one step (its output: one summary per image).
DETECTING_STEPS = ("detect_and_notify", "detect_uploaded_image", "detect_uploaded_images")


def _no_loop(out: Any) -> bool:
    if isinstance(out, dict) and isinstance(out.get("detections"), list):
        return all(item.get("human_loop") is None for item in out["detections"])
    return out is None or (isinstance(out, dict) and "detection" in out and out.get("human_loop") is None)


DETECTION_STATES = (
    State("detect_image", "Detect image", note="Top label and confidence from the serving version.",
          steps=("detect_image", *DETECTING_STEPS)),
    State("open_human_loop", "Open human loop", skipped_if=_no_loop, steps=("open_human_loop", *DETECTING_STEPS),
          note="Below Minimum-Label-Detection-Confidence with Enable-A2I-Workflow on."),
    State("notify_detection", "Notify: detection result", steps=("notify_detection", *DETECTING_STEPS)),
)
DETECTION_IDS = tuple(state.id for state in DETECTION_STATES)

# ── the machines ─────────────────────────────────────────────────────────────

TRAINING = Machine(
    "Training", (routing.TRAINING_CHECK, routing.SCHEDULED_TRAINING_CHECK),
    description="Check for new training, train, evaluate, gate on F1, deploy blue-green.",
    states=(
        State("start", "Training check", START, 0, note="On the Automatic-Training-Poll-Frequency schedule, "
              "on request, or when Enable-Automatic-Training is switched to true."),
        State("check_new_training", "Check new training", row=1,
              note="Automatic training on, and at least Minimum-Untrained-Images new labeled images."),
        State("notify_check", "Notify: training checked", row=2),
        State("should_train", "Enough new images?", CHOICE, 3, explain=_train_reason,
              decide=lambda out: _pick(out.get("train"), "create_manifest", "no_training")),
        State("no_training", "No training", SUCCEED, 3, 1, reached_if=lambda out: out.get("train") is False),
        State("create_manifest", "Create manifest", row=4, note="Writes manifests/<version>.json."),
        State("train_model", "Train model", row=5),
        State("trained", "Trained?", CHOICE, 6, explain=_trained_reason,
              decide=lambda out: _pick(get(out, "training", "trained"), "evaluate_model", "training_failed")),
        State("training_failed", "TRAINING_FAILED", FAIL, 6, 1,
              reached_if=lambda out: get(out, "training", "trained") is False),
        State("evaluate_model", "Evaluate model", row=7, note="Writes evaluation/<version>.json."),
        State("check_f1_gate", "Check F1 gate", row=8),
        State("f1_passed", "F1 ≥ Minimum-F1-Score?", CHOICE, 9, explain=_gate_reason,
              decide=lambda out: _pick(get(out, "gate", "passed"), "start_new_version", "not_deployed")),
        State("not_deployed", "Kept, not deployed", FAIL, 9, 1,
              reached_if=lambda out: get(out, "gate", "passed") is False),
        *_rows(DEPLOY_STATES, 10),
        State("record_trained_images", "Record trained images", row=15),
        State("running", "Status: RUNNING", SUCCEED, 16, reached_if=lambda out: "deployment" in out),
    ),
    transitions=(
        *_chain("start", "check_new_training", "notify_check", "should_train"),
        Transition("should_train", "create_manifest", "yes"), Transition("should_train", "no_training", "no"),
        *_chain("create_manifest", "train_model", "trained"),
        Transition("trained", "evaluate_model", "yes"), Transition("trained", "training_failed", "no"),
        *_chain("evaluate_model", "check_f1_gate", "f1_passed"),
        Transition("f1_passed", "start_new_version", "yes"), Transition("f1_passed", "not_deployed", "no"),
        *_chain(*DEPLOY_IDS, "record_trained_images", "running"),
    ),
)

PARAMETER_STORE = Machine(
    "Parameter Store", (routing.PARAMETER_CHANGE,),
    description="Apply an accepted parameter change: schedules, notification, maybe a training check.",
    states=(
        State("start", "Parameter changed", START, 0, note="A validated, versioned change."),
        State("read_parameters", "Read parameters", row=1),
        State("apply_schedules", "Apply schedules", row=2, note="Create, re-time, pause or resume schedules.",
              skipped_if=lambda out: out == []),
        State("notify_change", "Notify: parameter changed", row=3),
        State("training_on", "Training switched on?", CHOICE, 4, explain=_training_started,
              decide=lambda out: _pick(bool(out.get("training_check_run")) if out else None,
                                       routing.TRAINING_CHECK, "applied")),
        State(routing.TRAINING_CHECK, "Start training check", row=5, col=1, note="A training check run, at once."),
        State("applied", "Applied", SUCCEED, 6),
    ),
    transitions=(
        *_chain("start", "read_parameters", "apply_schedules", "notify_change", "training_on"),
        Transition("training_on", routing.TRAINING_CHECK, "yes"), Transition("training_on", "applied", "no"),
        Transition(routing.TRAINING_CHECK, "applied"),
    ),
)

OBJECT_CREATED = Machine(
    "Object Created", (routing.OBJECT_CREATED,),
    description="A new object under images_for_detection/ or images_labeled_by_folder/.",
    states=(
        State("start", "Object created", START, 0, note="An upload, S3 event or drop-folder file."),
        State("route_object", "Route object", row=1,
              steps=("route_object", "detect_uploaded_image", "detect_uploaded_images"),
              note="An image for detection is routed by its key, in the step that detects it."),
        State("is_detection", "For detection?", CHOICE, 2, explain=_route_reason,
              decide=lambda out: _pick(out.get("branch") == "detection" if out.get("branch") else None,
                                       "record_detection_event", "training_data")),
        State("training_data", "Training data", SUCCEED, 2, 1,
              reached_if=lambda out: out.get("branch") == "training data",
              note="Counted by the next training check."),
        State("record_detection_event", "Record detection event", row=3,
              steps=("record_detection_event", "detect_uploaded_image", "detect_uploaded_images"),
              note="Logged as each upload arrived; one run detects the uploads that arrived together."),
        *_rows(DETECTION_STATES, 4),
        State("detected", "Detection done", SUCCEED, 7, reached_if=lambda out: out.get("branch") == "detection"),
    ),
    transitions=(
        *_chain("start", "route_object", "is_detection"),
        Transition("is_detection", "record_detection_event", "yes"),
        Transition("is_detection", "training_data", "no"),
        *_chain("record_detection_event", *DETECTION_IDS, "detected"),
    ),
)

DETECTION = Machine(
    "Detection", (routing.DETECT_WAITING_IMAGE,),
    description="Detect an image that arrived while no model version served.",
    states=(
        State("start", "Model now serving", START, 0),
        *_rows(DETECTION_STATES, 1),
        State("detected", "Detection done", SUCCEED, 4),
    ),
    transitions=_chain("start", *DETECTION_IDS, "detected"),
)

REDETECTION = Machine(
    "Detection", (routing.REDETECT_IMAGES,),
    description="Detect stored images again with the serving version (an operator's request).",
    states=(
        State("start", "Re-detect requested", START, 0, note="From the storage page, the CLI or the API."),
        State("plan_redetection", "Find each image's latest detection", row=1,
              note="Nothing is planned while no version serves."),
        State(routing.DETECT_IMAGE_AGAIN, "Detect each image again", row=2,
              note="One run per image: a new detection event pointing to the previous one.",
              skipped_if=lambda out: not get(out, "previous_event_ids")),
        State("queued", "Queued", SUCCEED, 3),
    ),
    transitions=_chain("start", "plan_redetection", routing.DETECT_IMAGE_AGAIN, "queued"),
)

DETECTION_AGAIN = Machine(
    "Detection", (routing.DETECT_IMAGE_AGAIN,),
    description="Detect one stored image again: a new detection event that points to the previous one.",
    states=(
        State("start", "Re-detect image", START, 0),
        State("record_redetection_event", "Record new detection event", row=1,
              note="It points to the previous event; a human answer already given carries over."),
        *_rows(DETECTION_STATES, 2),
        State("detected", "Detection done", SUCCEED, 5),
    ),
    transitions=_chain("start", "record_redetection_event", *DETECTION_IDS, "detected"),
)

DEPLOYMENT = Machine(
    "Deployment", (routing.DEPLOY_VERSION,),
    description="Deploy or roll back to a trained version, blue-green.",
    states=(
        State("start", "Deploy requested", START, 0),
        *_rows(DEPLOY_STATES, 1),
        State("running", "Status: RUNNING", SUCCEED, 6),
    ),
    transitions=_chain("start", *DEPLOY_IDS, "running"),
)

STOP = Machine(
    "Deployment", (routing.STOP_VERSION,),
    description="Stop serving a version.",
    states=(
        State("start", "Stop requested", START, 0),
        State("stop_previous_version", "Stop version", row=1),
        State("stopped", "Status: STOPPED", SUCCEED, 2),
    ),
    transitions=_chain("start", "stop_previous_version", "stopped"),
)

HUMAN_LOOP = Machine(
    "Human Loop", (routing.APPLY_HUMAN_ANSWER,),
    description="Apply a reviewer's answer: training data, A2I output, detection event, notification.",
    states=(
        State("start", "Human loop answered", START, 0),
        State("copy_to_training_data", "Copy to training data", row=1, skipped_if=lambda out: out is None,
              note="Not for None of the Above or sampled loops."),
        State(routing.OBJECT_CREATED, "Start object-created run", row=2, note="The copy is new training data."),
        State("write_loop_output", "Write A2I output", row=3, note="a2i-human-loop-data/…/output.json"),
        State("record_answer_on_detection", "Record answer on detection", row=4),
        State("notify_answer", "Notify: loop completed", row=5),
        State("completed", "Completed", SUCCEED, 6),
    ),
    transitions=_chain("start", "copy_to_training_data", routing.OBJECT_CREATED, "write_loop_output",
                       "record_answer_on_detection", "notify_answer", "completed"),
)

ANSWER_SWEEP = Machine(
    "Human Loop", (routing.ANSWER_SWEEP,),
    description="The sweep: queue the apply run of every answer recorded but not applied (or whose run failed), "
                "and detect again every image left waiting while a version serves, so neither waits for a "
                "restart. A sweep that queued nothing is kept only until the next one.",
    states=(
        State("start", "Answer sweep", START, 0, note="Every LABELLOOP_ANSWER_SWEEP_MINUTES; also at every start."),
        State("answers_to_apply", "Find answers not applied", row=1,
              note="Their apply runs are queued under the loop's run id (a retry's after a failure)."),
        State("detections_to_retry", "Find detections left waiting", row=2,
              note="Waiting for a model although one serves: detected again (at most 3 runs per version)."),
        State("forget_idle_sweeps", "Forget earlier idle sweeps", row=3,
              note="Earlier sweeps that queued nothing leave the run list."),
        State("swept", "Done", SUCCEED, 4),
    ),
    transitions=_chain("start", "answers_to_apply", "detections_to_retry", "forget_idle_sweeps", "swept"),
)

HUMAN_SAMPLING = Machine(
    "Human Sampling", (routing.HUMAN_SAMPLING, routing.SCHEDULED_HUMAN_SAMPLING),
    description="Mark every Human-Sampling-Interval-th detection and open its human loop.",
    states=(
        State("start", "Human sampling", START, 0, note="On the Automatic-Human-Sampling-Frequency schedule or "
              "on request."),
        State("sample_detections", "Sample detections", row=1),
        State("notify_sampling", "Notify: sampled", row=2, skipped_if=lambda out: out is None),
        State("sampled", "Done", SUCCEED, 3),
    ),
    transitions=_chain("start", "sample_detections", "notify_sampling", "sampled"),
)

RUN_PRUNING = Machine(
    "Run Retention", (routing.RUN_PRUNING,),
    description="Once a day: delete the finished runs older than LABELLOOP_RUN_RETENTION_DAYS (default 90), "
                "except the runs that trained a model version. Pending and queued runs are never pruned.",
    states=(
        State("start", "Run pruning", START, 0, note="Daily at midnight UTC; paused when the retention is 0."),
        State("prune_old_runs", "Prune old finished runs", row=1,
              note="Oldest first, 500 runs per transaction, through DBOS's delete_workflows."),
        State("pruned", "Done", SUCCEED, 2),
    ),
    transitions=_chain("start", "prune_old_runs", "pruned"),
)

MACHINES: tuple[Machine, ...] = (TRAINING, PARAMETER_STORE, OBJECT_CREATED, DETECTION, REDETECTION, DETECTION_AGAIN,
                                 DEPLOYMENT, STOP, HUMAN_LOOP, ANSWER_SWEEP, HUMAN_SAMPLING,
                                 RUN_PRUNING)
BY_WORKFLOW: dict[str, Machine] = {name: machine for machine in MACHINES for name in machine.workflows}
# The machine (by name) that draws each workflow's runs.
BRANCHES: dict[str, str] = {name: machine.name for name, machine in BY_WORKFLOW.items()}

# ── branches: what the run list calls each run, and how it filters them ──────

DETECTION_BRANCH = "Detection"
TRAINING_DATA_BRANCH = "Training data"
# "Object Created" is one workflow serving two branches: an image for detection or a training image. Its run
# id prefix (routing.object_created_run_id) tells which; "Object Created" itself stays a filter for both.
OBJECT_CREATED_BRANCHES = {routing.DETECTION_RUN_PREFIX: DETECTION_BRANCH,
                           routing.TRAINING_DATA_RUN_PREFIX: TRAINING_DATA_BRANCH}


@dataclass(frozen=True)
class BranchFilter:
    """The runs of a branch: these workflows, and (where one workflow serves two branches) these run ids."""

    workflows: tuple[str, ...]
    id_prefixes: tuple[str, ...] | None = None


BRANCH_FILTERS: dict[str, BranchFilter] = {
    "Training": BranchFilter((routing.TRAINING_CHECK, routing.SCHEDULED_TRAINING_CHECK)),
    "Parameter Store": BranchFilter((routing.PARAMETER_CHANGE,)),
    DETECTION_BRANCH: BranchFilter(
        (routing.OBJECT_CREATED, routing.DETECT_WAITING_IMAGE, routing.REDETECT_IMAGES, routing.DETECT_IMAGE_AGAIN),
        (routing.DETECTION_RUN_PREFIX, routing.WAITING_RUN_PREFIX, routing.REDETECT_RUN_PREFIX,
         routing.AGAIN_RUN_PREFIX)),
    TRAINING_DATA_BRANCH: BranchFilter((routing.OBJECT_CREATED,), (routing.TRAINING_DATA_RUN_PREFIX,)),
    "Deployment": BranchFilter((routing.DEPLOY_VERSION, routing.STOP_VERSION)),
    "Human Loop": BranchFilter((routing.APPLY_HUMAN_ANSWER,)),
    "Human Sampling": BranchFilter((routing.HUMAN_SAMPLING, routing.SCHEDULED_HUMAN_SAMPLING)),
    "Run Retention": BranchFilter((routing.RUN_PRUNING,)),
}
# Accepted as a filter (earlier versions listed it), not offered: every "object created" run, either branch.
LEGACY_FILTERS = {"Object Created": BranchFilter((routing.OBJECT_CREATED,))}

# What a run is called in the lists and on its page: the user's words, not the workflow's function name.
RUN_TITLES = {
    routing.TRAINING_CHECK: "Training check", routing.SCHEDULED_TRAINING_CHECK: "Scheduled training check",
    routing.PARAMETER_CHANGE: "Parameter change", routing.DEPLOY_VERSION: "Deploy model version",
    routing.STOP_VERSION: "Stop model version", routing.DETECT_WAITING_IMAGE: "Detect image that waited for a model",
    routing.REDETECT_IMAGES: "Re-detect images", routing.DETECT_IMAGE_AGAIN: "Re-detect image",
    routing.APPLY_HUMAN_ANSWER: "Apply reviewer's answer", routing.HUMAN_SAMPLING: "Human sampling",
    routing.SCHEDULED_HUMAN_SAMPLING: "Scheduled human sampling", routing.OBJECT_CREATED: "Object created",
    routing.RUN_PRUNING: "Prune old runs",
}
OBJECT_CREATED_TITLES = {DETECTION_BRANCH: "Detect uploaded image", TRAINING_DATA_BRANCH: "Training image added"}


def machine_for(workflow: str) -> Machine | None:
    """The machine that draws runs of ``workflow``."""
    return BY_WORKFLOW.get(workflow)


def branch_names() -> list[str]:
    """The branches, sorted, as the run list offers them."""
    return sorted(BRANCH_FILTERS)


def branch_filter(branch: str) -> BranchFilter:
    """How to find a branch's runs; ``ValueError`` naming the branches when there is none of that name."""
    found = BRANCH_FILTERS.get(branch) or LEGACY_FILTERS.get(branch)
    if found is None:
        raise ValueError(f"unknown branch {branch!r}; branches: {', '.join(branch_names())}")
    return found


def workflows_of(branch: str) -> list[str]:
    """The workflows of a branch; ``ValueError`` naming the branches when there is none of that name."""
    return list(branch_filter(branch).workflows)


def branch_of(run: dict[str, Any]) -> str:
    """The branch a run belongs to (for an "object created" run, by its id: detection or training data)."""
    if run["name"] == routing.OBJECT_CREATED:
        for prefix, branch in OBJECT_CREATED_BRANCHES.items():
            if str(run.get("id", "")).startswith(prefix):
                return branch
        return "Object Created"
    for branch, found in BRANCH_FILTERS.items():
        if run["name"] in found.workflows:
            return branch
    return run["name"]


def run_title(run: dict[str, Any]) -> str:
    """A run's name in the user's words."""
    branch = branch_of(run)
    if run["name"] == routing.OBJECT_CREATED and branch in OBJECT_CREATED_TITLES:
        return OBJECT_CREATED_TITLES[branch]
    return RUN_TITLES.get(run["name"], run["name"].replace("_", " ").capitalize())


def with_branch(run: dict[str, Any]) -> dict[str, Any]:
    """A run record with the branch it belongs to, its title and the object keys it covered."""
    return {**run, "branch": branch_of(run), "title": run_title(run), "object_keys": object_keys(run)}


def object_keys(run: dict[str, Any]) -> list[str] | None:
    """The images an "object created" run covered: each upload of a batch for detection, or its one object
    (None for the runs of other workflows, or when the run's input is not loaded)."""
    given = run.get("input")
    if run.get("name") != routing.OBJECT_CREATED or not isinstance(given, dict) or not given.get("args"):
        return None
    event = given["args"][0]
    if not isinstance(event, dict):
        return None
    if "uploads" in event:
        return [upload["key"] for upload in event["uploads"]]
    return [event["key"]] if "key" in event else None
