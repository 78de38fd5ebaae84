"""The path one recorded run took through its branch's state machine.

A :class:`Machine` is a branch of the loop drawn as the seed's Step Functions state machine: states (a start,
task states that are the workflow's recorded steps, choice states where the workflow's code branches, and
succeed/fail end states) and the transitions between them, laid out on a grid (row, column); the machines
themselves are data beside the workflows, in ``labelloop/loop/machines.py``. :func:`trace` reads a run as
:func:`labelloop.runs.service.get_run` returns it (DBOS's own records) and says, for every state, whether the
run passed it and how: ``success``, ``error``, ``skipped`` (passed without doing anything), ``running`` (the
next step of a run still in flight), or ``None`` (not on this run's path). ``drawing.py`` draws it as SVG.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


def get(value: Any, *keys: str) -> Any:
    """``value[keys[0]][keys[1]]…``, or None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


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
