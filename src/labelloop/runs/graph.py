"""The state machines of the loop's branches, as graphs, and the path one recorded run took through its machine.

Each branch of the seed's Step Functions state machine is a :class:`Machine`: states (a start, task states that
are the workflow's recorded steps, choice states where the workflow's code branches, and succeed/fail end
states) and the transitions between them, laid out on a grid (row, column). :func:`trace` reads a run as
:func:`labelloop.runs.service.get_run` returns it (DBOS's own records) and says, for every state, whether the
run passed it and how: ``success``, ``error``, ``skipped`` (passed without doing anything), ``running`` (the
next step of a run still in flight), or ``None`` (not on this run's path). :func:`render_svg` draws the
machine with that path as SVG, each state a link to ``#state-<id>``, where the page shows the step's input,
output, error and timing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from markupsafe import Markup, escape

START, TASK, CHOICE, SUCCEED, FAIL = "start", "task", "choice", "succeed", "fail"
OUTCOMES = ("success", "error", "skipped", "running")


@dataclass(frozen=True)
class State:
    """One state of a machine."""

    id: str
    title: str
    kind: str = TASK
    row: int = 0
    col: int = 0
    note: str = ""
    # Task states: the names of the recorded steps that are this state (default: the id).
    steps: tuple[str, ...] = ()
    # Task states: passed without effect when every recorded output satisfies this.
    skipped_if: Callable[[Any], bool] | None = None
    # End states: reached when the run succeeded and its output satisfies this (always, if None).
    reached_if: Callable[[dict[str, Any]], bool] | None = None
    # Choice states: the decision in words, read from the run.
    explain: Callable[[dict[str, Any]], str | None] | None = None
    # Choice states: the id of the state chosen, read from the run's output (None: not known yet).
    decide: Callable[[dict[str, Any]], str | None] | None = None

    @property
    def step_names(self) -> tuple[str, ...]:
        return self.steps or ((self.id,) if self.kind == TASK else ())


@dataclass(frozen=True)
class Transition:
    """An edge; a choice's transitions are listed in the order the choice tries them."""

    source: str
    target: str
    label: str = ""


@dataclass(frozen=True)
class Machine:
    """A branch's state machine and the workflows whose runs it draws."""

    name: str
    workflows: tuple[str, ...]
    states: tuple[State, ...]
    transitions: tuple[Transition, ...]
    description: str = ""

    def state(self, state_id: str) -> State:
        return next(s for s in self.states if s.id == state_id)


@dataclass
class StatePass:
    """How a run passed one state."""

    state: State
    outcome: str | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    explanation: str | None = None


@dataclass
class Trace:
    """The path a run took through its machine."""

    machine: Machine
    states: dict[str, StatePass]
    taken: set[tuple[str, str]]
    unplaced_steps: list[dict[str, Any]]

    @property
    def path(self) -> list[str]:
        """The ids of the states passed, in grid order."""
        passed = [p.state for p in self.states.values() if p.outcome is not None]
        return [s.id for s in sorted(passed, key=lambda s: (s.row, s.col))]


def _get(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# ── the machines ─────────────────────────────────────────────────────────────


def _pick(flag: bool | None, yes: str, no: str) -> str | None:
    return None if flag is None else yes if flag else no


def _train_reason(run: dict[str, Any]) -> str | None:
    reason = _get(run["output"], "reason")
    return f"Decided: {reason}." if reason else None


def _trained_reason(run: dict[str, Any]) -> str | None:
    training = _get(run["output"], "training")
    if not isinstance(training, dict):
        return None
    if training.get("trained"):
        return f"Trained {training.get('version')}: F1 {training.get('f1')}."
    return f"Training failed: {training.get('reason')}."


def _gate_reason(run: dict[str, Any]) -> str | None:
    gate = _get(run["output"], "gate")
    if not isinstance(gate, dict):
        return None
    verdict = "passed" if gate.get("passed") else "failed"
    return f"F1 {gate.get('f1')} against Minimum-F1-Score {gate.get('minimum_f1')}: {verdict}."


def _route_reason(run: dict[str, Any]) -> str | None:
    branch = _get(run["output"], "branch")
    return f"Routed to: {branch}." if branch else None


def _training_started(run: dict[str, Any]) -> str | None:
    if _get(run["output"], "training_check_run"):
        return "Enable-Automatic-Training was switched to true: a training check runs at once."
    if run["output"] is not None:
        return "No training check: the change does not switch Enable-Automatic-Training to true."
    return None


TRAINING = Machine(
    "Training", ("training_check", "scheduled_training_check"),
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
              decide=lambda out: _pick(_get(out, "training", "trained"), "evaluate_model", "training_failed")),
        State("training_failed", "TRAINING_FAILED", FAIL, 6, 1,
              reached_if=lambda out: _get(out, "training", "trained") is False),
        State("evaluate_model", "Evaluate model", row=7, note="Writes evaluation/<version>.json."),
        State("check_f1_gate", "Check F1 gate", row=8),
        State("f1_passed", "F1 ≥ Minimum-F1-Score?", CHOICE, 9, explain=_gate_reason,
              decide=lambda out: _pick(_get(out, "gate", "passed"), "start_new_version", "not_deployed")),
        State("not_deployed", "Kept, not deployed", FAIL, 9, 1,
              reached_if=lambda out: _get(out, "gate", "passed") is False),
        State("start_new_version", "Start new version", row=10, note="Blue side: load and warm it."),
        State("switch_endpoint", "Switch endpoint", row=11),
        State("stop_previous_version", "Stop previous version", row=12,
              skipped_if=lambda out: _get(out, "stopped") is None),
        State("find_waiting_detections", "Find waiting detections", row=13),
        State("detect_waiting_image", "Detect waiting images", row=14,
              note="One detection run per image that arrived while no model served."),
        State("record_trained_images", "Record trained images", row=15),
        State("running", "Status: RUNNING", SUCCEED, 16, reached_if=lambda out: "deployment" in out),
    ),
    transitions=(
        Transition("start", "check_new_training"), Transition("check_new_training", "notify_check"),
        Transition("notify_check", "should_train"),
        Transition("should_train", "create_manifest", "yes"), Transition("should_train", "no_training", "no"),
        Transition("create_manifest", "train_model"), Transition("train_model", "trained"),
        Transition("trained", "evaluate_model", "yes"), Transition("trained", "training_failed", "no"),
        Transition("evaluate_model", "check_f1_gate"), Transition("check_f1_gate", "f1_passed"),
        Transition("f1_passed", "start_new_version", "yes"), Transition("f1_passed", "not_deployed", "no"),
        Transition("start_new_version", "switch_endpoint"), Transition("switch_endpoint", "stop_previous_version"),
        Transition("stop_previous_version", "find_waiting_detections"),
        Transition("find_waiting_detections", "detect_waiting_image"),
        Transition("detect_waiting_image", "record_trained_images"),
        Transition("record_trained_images", "running"),
    ),
)

PARAMETER_STORE = Machine(
    "Parameter Store", ("parameter_change",),
    description="Apply an accepted parameter change: schedules, notification, maybe a training check.",
    states=(
        State("start", "Parameter changed", START, 0, note="A validated, versioned change."),
        State("read_parameters", "Read parameters", row=1),
        State("apply_schedules", "Apply schedules", row=2, note="Create, re-time, pause or resume schedules.",
              skipped_if=lambda out: out == []),
        State("notify_change", "Notify: parameter changed", row=3),
        State("training_on", "Training switched on?", CHOICE, 4, explain=_training_started,
              decide=lambda out: _pick(bool(out.get("training_check_run")) if out else None, "training_check",
                                       "applied")),
        State("training_check", "Start training check", row=5, col=1, note="A training check run, at once."),
        State("applied", "Applied", SUCCEED, 6),
    ),
    transitions=(
        Transition("start", "read_parameters"), Transition("read_parameters", "apply_schedules"),
        Transition("apply_schedules", "notify_change"), Transition("notify_change", "training_on"),
        Transition("training_on", "training_check", "yes"), Transition("training_on", "applied", "no"),
        Transition("training_check", "applied"),
    ),
)

_DETECTION_STATES = (
    State("detect_image", "Detect image", note="Top label and confidence from the serving version."),
    State("open_human_loop", "Open human loop", skipped_if=lambda out: out is None,
          note="Below Minimum-Label-Detection-Confidence with Enable-A2I-Workflow on."),
    State("notify_detection", "Notify: detection result"),
)


def _rows(states: tuple[State, ...], first: int) -> tuple[State, ...]:
    return tuple(replace(state, row=first + i) for i, state in enumerate(states))


OBJECT_CREATED = Machine(
    "Object Created", ("object_created",),
    description="A new object under images_for_detection/ or images_labeled_by_folder/.",
    states=(
        State("start", "Object created", START, 0, note="An upload, S3 event or drop-folder file."),
        State("route_object", "Route object", row=1),
        State("is_detection", "For detection?", CHOICE, 2, explain=_route_reason,
              decide=lambda out: _pick(out.get("branch") == "detection" if out.get("branch") else None,
                                       "record_detection_event", "training_data")),
        State("training_data", "Training data", SUCCEED, 2, 1,
              reached_if=lambda out: out.get("branch") == "training data",
              note="Counted by the next training check."),
        State("record_detection_event", "Record detection event", row=3),
        *_rows(_DETECTION_STATES, 4),
        State("detected", "Detection done", SUCCEED, 7, reached_if=lambda out: out.get("branch") == "detection"),
    ),
    transitions=(
        Transition("start", "route_object"), Transition("route_object", "is_detection"),
        Transition("is_detection", "record_detection_event", "yes"),
        Transition("is_detection", "training_data", "no"),
        Transition("record_detection_event", "detect_image"), Transition("detect_image", "open_human_loop"),
        Transition("open_human_loop", "notify_detection"), Transition("notify_detection", "detected"),
    ),
)

DETECTION = Machine(
    "Detection", ("detect_waiting_image",),
    description="Detect an image that arrived while no model version served.",
    states=(
        State("start", "Model now serving", START, 0),
        *_rows(_DETECTION_STATES, 1),
        State("detected", "Detection done", SUCCEED, 4),
    ),
    transitions=(
        Transition("start", "detect_image"), Transition("detect_image", "open_human_loop"),
        Transition("open_human_loop", "notify_detection"), Transition("notify_detection", "detected"),
    ),
)

DEPLOYMENT = Machine(
    "Deployment", ("deploy_model_version",),
    description="Deploy or roll back to a trained version, blue-green.",
    states=(
        State("start", "Deploy requested", START, 0),
        State("start_new_version", "Start new version", row=1, note="Blue side: load and warm it."),
        State("switch_endpoint", "Switch endpoint", row=2),
        State("stop_previous_version", "Stop previous version", row=3,
              skipped_if=lambda out: _get(out, "stopped") is None),
        State("find_waiting_detections", "Find waiting detections", row=4),
        State("detect_waiting_image", "Detect waiting images", row=5),
        State("running", "Status: RUNNING", SUCCEED, 6),
    ),
    transitions=(
        Transition("start", "start_new_version"), Transition("start_new_version", "switch_endpoint"),
        Transition("switch_endpoint", "stop_previous_version"),
        Transition("stop_previous_version", "find_waiting_detections"),
        Transition("find_waiting_detections", "detect_waiting_image"),
        Transition("detect_waiting_image", "running"),
    ),
)

STOP = Machine(
    "Deployment", ("stop_model_version",),
    description="Stop serving a version.",
    states=(
        State("start", "Stop requested", START, 0),
        State("stop_previous_version", "Stop version", row=1),
        State("stopped", "Status: STOPPED", SUCCEED, 2),
    ),
    transitions=(Transition("start", "stop_previous_version"), Transition("stop_previous_version", "stopped")),
)

HUMAN_LOOP = Machine(
    "Human Loop", ("apply_human_answer",),
    description="Apply a reviewer's answer: training data, A2I output, detection event, notification.",
    states=(
        State("start", "Human loop answered", START, 0),
        State("copy_to_training_data", "Copy to training data", row=1, skipped_if=lambda out: out is None,
              note="Not for None of the Above or sampled loops."),
        State("object_created", "Start object-created run", row=2, note="The copy is new training data."),
        State("write_loop_output", "Write A2I output", row=3, note="a2i-human-loop-data/…/output.json"),
        State("record_answer_on_detection", "Record answer on detection", row=4),
        State("notify_answer", "Notify: loop completed", row=5),
        State("completed", "Completed", SUCCEED, 6),
    ),
    transitions=(
        Transition("start", "copy_to_training_data"), Transition("copy_to_training_data", "object_created"),
        Transition("object_created", "write_loop_output"),
        Transition("write_loop_output", "record_answer_on_detection"),
        Transition("record_answer_on_detection", "notify_answer"), Transition("notify_answer", "completed"),
    ),
)

HUMAN_SAMPLING = Machine(
    "Human Sampling", ("human_sampling", "scheduled_human_sampling"),
    description="Mark every Human-Sampling-Interval-th detection and open its human loop.",
    states=(
        State("start", "Human sampling", START, 0, note="On the Automatic-Human-Sampling-Frequency schedule or "
              "on request."),
        State("sample_detections", "Sample detections", row=1),
        State("notify_sampling", "Notify: sampled", row=2, skipped_if=lambda out: out is None),
        State("sampled", "Done", SUCCEED, 3),
    ),
    transitions=(Transition("start", "sample_detections"), Transition("sample_detections", "notify_sampling"),
                 Transition("notify_sampling", "sampled")),
)

MACHINES: tuple[Machine, ...] = (TRAINING, PARAMETER_STORE, OBJECT_CREATED, DETECTION, DEPLOYMENT, STOP,
                                 HUMAN_LOOP, HUMAN_SAMPLING)
BY_WORKFLOW: dict[str, Machine] = {name: machine for machine in MACHINES for name in machine.workflows}


def machine_for(workflow: str) -> Machine | None:
    """The machine that draws runs of ``workflow``."""
    return BY_WORKFLOW.get(workflow)


# ── the path of one run ──────────────────────────────────────────────────────


def trace(machine: Machine, run: dict[str, Any]) -> Trace:
    """Which states ``run`` passed and how, and which transitions it took."""
    recorded: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for step in run.get("steps", []):
        recorded[step["name"]].append(step)
    output = run.get("output") if isinstance(run.get("output"), dict) else {}
    succeeded = run.get("status") == "SUCCESS"
    passes: dict[str, StatePass] = {}
    placed: set[str] = set()
    for state in machine.states:
        found = [step for name in state.step_names for step in recorded.get(name, [])]
        placed.update(state.step_names)
        outcome = None
        if state.kind == START:
            outcome = "success"
        elif state.kind == TASK and found:
            if any(step["error"] is not None for step in found):
                outcome = "error"
            elif state.skipped_if is not None and all(state.skipped_if(step["output"]) for step in found):
                outcome = "skipped"
            else:
                outcome = "success"
        elif state.kind in (SUCCEED, FAIL) and succeeded and (state.reached_if is None or state.reached_if(output)):
            outcome = "success" if state.kind == SUCCEED else "error"
        explanation = state.explain(run) if state.explain else None
        passes[state.id] = StatePass(state, outcome, found, explanation)

    successors: dict[str, list[str]] = defaultdict(list)
    predecessors: dict[str, list[str]] = defaultdict(list)
    for edge in machine.transitions:
        successors[edge.source].append(edge.target)
        predecessors[edge.target].append(edge.source)

    def descendants(state_id: str) -> set[str]:
        seen: set[str] = set()
        todo = list(successors[state_id])
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(successors[current])
        return seen

    # A choice lies on the path when the run reached it and its decision is known: from the run's output, or
    # (a run still in flight) the first way out that leads to a state the run passed. A task with no recorded
    # step was skipped when the run reached it and went on past it.
    chosen: dict[str, str] = {}

    def leads_on(state_id: str) -> bool:
        return passes[state_id].outcome is not None or any(passes[d].outcome is not None
                                                            for d in descendants(state_id))

    def reached(state_id: str) -> bool:
        return any(passes[p].outcome is not None and (passes[p].state.kind != CHOICE or chosen.get(p) == state_id)
                   for p in predecessors[state_id])

    changed = True
    while changed:
        changed = False
        for state in sorted(machine.states, key=lambda s: (s.row, s.col)):
            current = passes[state.id]
            if state.kind == CHOICE and current.outcome is None and reached(state.id):
                decided = state.decide(output) if state.decide else None
                if decided is None:
                    decided = next((t for t in successors[state.id] if leads_on(t)), None)
                if decided is not None:
                    current.outcome, chosen[state.id] = "success", decided
                    changed = True
            elif (state.kind == TASK and current.outcome is None and reached(state.id)
                  and any(passes[d].outcome is not None for d in descendants(state.id))):
                current.outcome = "skipped"
                changed = True

    if run.get("status") in ("PENDING", "ENQUEUED"):
        for state in machine.states:
            if passes[state.id].outcome in ("success", "skipped") and state.kind in (START, TASK):
                following = [passes[s] for s in successors[state.id]]
                if following and all(p.outcome is None for p in following):
                    for nxt in following:
                        if nxt.state.kind == TASK:
                            nxt.outcome = "running"

    taken: set[tuple[str, str]] = set()
    for state in machine.states:
        if passes[state.id].outcome is None:
            continue
        targets = [t for t in successors[state.id] if passes[t].outcome is not None]
        if state.kind == CHOICE:
            targets = [t for t in targets if t == chosen.get(state.id)]
        taken.update((state.id, target) for target in targets)
    unplaced = [step for step in run.get("steps", []) if step["name"] not in placed]
    return Trace(machine, passes, taken, unplaced)


# ── drawing ──────────────────────────────────────────────────────────────────

COLUMN, ROW = 250, 68
BOX_W, BOX_H = 206, 42
MARGIN = 14
COLOURS = {  # fill, stroke, text
    "success": ("#e6f4ea", "#176b2c", "#0f3d1c"),
    "error": ("#fdecea", "#a4262c", "#6e1a1e"),
    "skipped": ("#fff4e0", "#8a5a00", "#5c3c00"),
    "running": ("#e7eef5", "#1f3b57", "#1f3b57"),
    None: ("#f6f8fa", "#c3c9cf", "#8c959f"),
}
OUTCOME_WORDS = {"success": "succeeded", "error": "failed", "skipped": "skipped", "running": "running",
                 None: "not on this run's path"}


def _centre(state: State) -> tuple[float, float]:
    return MARGIN + state.col * COLUMN + BOX_W / 2, MARGIN + state.row * ROW + BOX_H / 2


def _shape(state: State, fill: str, stroke: str, dashed: bool, width: float) -> str:
    cx, cy = _centre(state)
    x, y = cx - BOX_W / 2, cy - BOX_H / 2
    extra = f' stroke-width="{width}"' + (' stroke-dasharray="5 3"' if dashed else "")
    if state.kind == CHOICE:
        notch = 16
        points = (f"{x},{cy} {x + notch},{y} {x + BOX_W - notch},{y} {x + BOX_W},{cy} "
                  f"{x + BOX_W - notch},{y + BOX_H} {x + notch},{y + BOX_H}")
        return f'<polygon points="{points}" fill="{fill}" stroke="{stroke}"{extra}/>'
    radius = BOX_H / 2 if state.kind in (START, SUCCEED, FAIL) else 6
    return (f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="{radius}" fill="{fill}" '
            f'stroke="{stroke}"{extra}/>')


def _subtitle(passed: StatePass) -> str:
    if passed.outcome is None:
        return ""
    if passed.outcome == "running":
        return "running…"
    if passed.steps:
        parts = [f"{len(passed.steps)}×"] if len(passed.steps) > 1 else []
        durations = [s["duration_ms"] for s in passed.steps if s["duration_ms"] is not None]
        if durations:
            seconds = sum(durations) / 1000
            parts.append(f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s")
        if passed.outcome in ("error", "skipped"):
            parts.append(passed.outcome)
        return " · ".join(parts)
    return {"skipped": "skipped", "error": "fail state"}.get(passed.outcome, "")


def _edge(machine: Machine, edge: Transition, taken: bool, occupied: set[tuple[int, int]]) -> str:
    source, target = machine.state(edge.source), machine.state(edge.target)
    (sx, sy), (tx, ty) = _centre(source), _centre(target)
    half_w, half_h = BOX_W / 2, BOX_H / 2
    if source.row == target.row:
        direction = 1 if tx > sx else -1
        points = [(sx + direction * half_w, sy), (tx - direction * half_w, ty)]
        label_at = (sx + direction * (half_w + 8), sy - 6, "start" if direction > 0 else "end")
    elif source.col == target.col:
        between = any((row, source.col) in occupied for row in range(source.row + 1, target.row))
        if between:  # go round on the right
            out = sx + half_w + (COLUMN - BOX_W) / 2
            points = [(sx + half_w, sy), (out, sy), (out, ty), (tx + half_w, ty)]
            label_at = (sx + half_w + 4, sy - 6, "start")
        else:
            points = [(sx, sy + half_h), (tx, ty - half_h)]
            label_at = (sx + 7, sy + half_h + 14, "start")
    elif source.kind == CHOICE:  # out of the choice's side, then down into the target
        direction = 1 if tx > sx else -1
        points = [(sx + direction * half_w, sy), (tx, sy), (tx, ty - half_h)]
        label_at = (sx + direction * (half_w + 8), sy - 6, "start" if direction > 0 else "end")
    else:  # down out of the state, then across into the target's side
        direction = 1 if tx > sx else -1
        points = [(sx, sy + half_h), (sx, ty), (tx - direction * half_w, ty)]
        label_at = (sx + 7, sy + half_h + 14, "start")
    colour, width = ("#1d2327", 2.2) if taken else ("#b7bec6", 1.3)
    dash = "" if taken else ' stroke-dasharray="4 3"'
    marker = "arrow-taken" if taken else "arrow"
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts = [f'<polyline class="transition{" taken" if taken else ""}" points="{path}" fill="none" '
             f'stroke="{colour}" stroke-width="{width}"{dash} marker-end="url(#{marker})" '
             f'data-from="{escape(edge.source)}" data-to="{escape(edge.target)}"/>']
    if edge.label:
        x, y, anchor = label_at
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="11" '
                     f'fill="{"#1d2327" if taken else "#8c959f"}">{escape(edge.label)}</text>')
    return "".join(parts)


def render_svg(result: Trace, *, link: Callable[[str], str] = lambda state_id: f"#state-{state_id}") -> Markup:
    """The machine as SVG with ``result``'s path: passed states coloured by outcome, the rest grey."""
    machine = result.machine
    columns = max(s.col for s in machine.states) + 1
    rows = max(s.row for s in machine.states) + 1
    width = MARGIN * 2 + (columns - 1) * COLUMN + BOX_W
    height = MARGIN * 2 + (rows - 1) * ROW + BOX_H
    occupied = {(s.row, s.col) for s in machine.states}
    parts = [
        f'<svg class="state-machine" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="group" aria-label="{escape(machine.name)} state machine" xmlns="http://www.w3.org/2000/svg" '
        f'font-size="13" font-family="system-ui, sans-serif">',
        '<defs>',
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" markerHeight="9" '
        'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#b7bec6"/></marker>',
        '<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" '
        'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#1d2327"/></marker>',
        '</defs>',
    ]
    # Transitions not taken first, so the taken path is drawn over them.
    for taken in (False, True):
        for edge in machine.transitions:
            if ((edge.source, edge.target) in result.taken) == taken:
                parts.append(_edge(machine, edge, taken, occupied))
    for state in machine.states:
        passed = result.states[state.id]
        fill, stroke, text = COLOURS[passed.outcome]
        cx, cy = _centre(state)
        subtitle = _subtitle(passed)
        title_y = cy + (-2 if subtitle else 5)
        label = f"{state.title}: {OUTCOME_WORDS[passed.outcome]}"
        weight = ' font-weight="600"' if passed.outcome else ""
        parts.append(
            f'<a href="{escape(link(state.id))}" class="state outcome-{passed.outcome or "not-run"}" '
            f'data-state="{escape(state.id)}" data-outcome="{passed.outcome or "not-run"}" '
            f'aria-label="{escape(label)}"><title>{escape(label)}</title>'
            + _shape(state, fill, stroke, passed.outcome in ("skipped", "running"),
                     2.2 if passed.outcome else 1.2)
            + f'<text x="{cx}" y="{title_y}" text-anchor="middle" fill="{text}"{weight}>{escape(state.title)}</text>'
            + (f'<text x="{cx}" y="{cy + 14}" text-anchor="middle" font-size="11" fill="{text}">'
               f'{escape(subtitle)}</text>' if subtitle else "")
            + "</a>")
    parts.append("</svg>")
    return Markup("".join(parts))
