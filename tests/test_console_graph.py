"""The console's pure parts, without a server: the path a run took through its state machine, the SVG drawing of
it, the SVG charts, and the detection log's filter parsing."""

from __future__ import annotations

import re
import xml.dom.minidom
from typing import Any

import pytest

from labelloop import engine
from labelloop.detection.pages import parse_filters
from labelloop.loop import machines
from labelloop.loop.machines import BRANCHES
from labelloop.runs import drawing, graph
from labelloop.web import plots

pytestmark = pytest.mark.same_on_every_database  # pure functions, no database

TRAINING_STEPS = ["check_new_training", "notify_check", "create_manifest", "train_model", "evaluate_model",
                  "check_f1_gate", "start_new_version", "switch_endpoint", "stop_previous_version",
                  "find_waiting_detections", "record_trained_images"]


def step(number: int, name: str, output: Any = None, error: Any = None, child: str | None = None) -> dict[str, Any]:
    at = f"2026-01-01T00:00:{number:02d}+00:00"
    return {"step_id": number, "name": name, "input": {}, "output": output, "error": error, "started_at": at,
            "completed_at": at, "duration_ms": 250, "child_run_id": child}


def run(name: str, steps: list[dict[str, Any]], output: Any = None, status: str = "SUCCESS") -> dict[str, Any]:
    return {"id": "run-1", "name": name, "status": status, "output": output, "steps": steps, "input": None}


def outcomes(result: graph.Trace) -> dict[str, str | None]:
    return {state_id: passed.outcome for state_id, passed in result.states.items()}


def test_every_workflow_of_every_branch_has_a_machine_whose_states_are_laid_out_apart() -> None:
    assert set(machines.BY_WORKFLOW) == set(BRANCHES)
    for machine in machines.MACHINES:
        assert machine.name in set(BRANCHES.values())
        cells = [(s.row, s.col) for s in machine.states]
        assert len(cells) == len(set(cells)), machine.name
        ids = {s.id for s in machine.states}
        assert all(t.source in ids and t.target in ids for t in machine.transitions)
        # Every state is reachable from the start.
        reachable, todo = {"start"}, ["start"]
        while todo:
            current = todo.pop()
            for t in machine.transitions:
                if t.source == current and t.target not in reachable:
                    reachable.add(t.target)
                    todo.append(t.target)
        assert reachable == ids, machine.name


def test_every_task_state_names_a_registered_step_or_workflow() -> None:
    """Renaming a step or a workflow without its state breaks this test, not the run page."""
    registered = set(engine.STEPS) | set(engine.WORKFLOWS)
    assert set(BRANCHES) == set(engine.WORKFLOWS), "every workflow has a machine, every machine a workflow"
    for machine in machines.MACHINES:
        for state in machine.states:
            if state.kind == graph.TASK:
                assert set(state.step_names) <= registered, (machine.name, state.id)
    renamed = graph.State("no_such_step", "Renamed")
    assert not set(renamed.step_names) <= registered


def test_training_run_that_deployed_passes_every_main_state() -> None:
    outputs = {"stop_previous_version": {"stopped": None}, "find_waiting_detections": {"detection_ids": []}}
    steps = [step(i + 1, name, outputs.get(name, {"ok": True})) for i, name in enumerate(TRAINING_STEPS)]
    result = graph.trace(machines.TRAINING, run("training_check", steps, {
        "train": True, "training": {"trained": True}, "gate": {"passed": True}, "deployment": {}}))
    states = outcomes(result)
    assert states["stop_previous_version"] == "skipped", "nothing served before"
    assert states["detect_waiting_image"] == "skipped", "no step: nothing was waiting"
    assert {states[s] for s in ("no_training", "training_failed", "not_deployed")} == {None}
    assert states["running"] == "success"
    assert ("should_train", "create_manifest") in result.taken and ("should_train", "no_training") not in result.taken
    assert result.path[0] == "start" and result.path[-1] == "running"
    assert result.unplaced_steps == []


def test_training_check_without_enough_images_ends_at_no_training() -> None:
    steps = [step(1, "check_new_training", {"train": False}), step(2, "notify_check", 3)]
    result = graph.trace(machines.TRAINING, run("scheduled_training_check", steps,
                                             {"train": False, "reason": "2 new labeled image(s); 10 needed"}))
    states = outcomes(result)
    assert states["should_train"] == "success" and states["no_training"] == "success"
    assert states["create_manifest"] is None and states["running"] is None
    assert result.taken == {("start", "check_new_training"), ("check_new_training", "notify_check"),
                            ("notify_check", "should_train"), ("should_train", "no_training")}
    assert result.states["should_train"].explanation == "Decided: 2 new labeled image(s); 10 needed."


def test_f1_gate_failure_ends_at_the_fail_state() -> None:
    names = TRAINING_STEPS[:6]
    steps = [step(i + 1, name, {"ok": True}) for i, name in enumerate(names)]
    result = graph.trace(machines.TRAINING, run("training_check", steps, {
        "train": True, "training": {"trained": True}, "gate": {"passed": False, "f1": 0.5, "minimum_f1": 0.8}}))
    states = outcomes(result)
    assert states["f1_passed"] == "success" and states["not_deployed"] == "error"
    assert states["start_new_version"] is None
    assert ("f1_passed", "not_deployed") in result.taken
    assert "0.5" in result.states["f1_passed"].explanation


def test_a_failed_step_is_red_and_nothing_after_it_is_on_the_path() -> None:
    steps = [step(1, "check_new_training", {"train": True}), step(2, "notify_check", 1),
             step(3, "create_manifest", {"version": "v2"}), step(4, "train_model", None, error="MemoryError: boom")]
    result = graph.trace(machines.TRAINING, run("training_check", steps, None, status="ERROR"))
    states = outcomes(result)
    assert states["train_model"] == "error"
    assert states["trained"] is None and states["evaluate_model"] is None
    assert not any(states[s] for s in ("no_training", "training_failed", "not_deployed", "running"))
    svg = str(drawing.render_svg(result))
    assert 'data-state="train_model" data-outcome="error"' in svg


def test_a_run_in_flight_shows_its_next_task_running() -> None:
    steps = [step(1, "check_new_training", {"train": True}), step(2, "notify_check", 1),
             step(3, "create_manifest", {"version": "v2"})]
    states = outcomes(graph.trace(machines.TRAINING, run("training_check", steps, None, status="PENDING")))
    assert states["should_train"] == "success", "decided from the path, the output is not written yet"
    assert states["train_model"] == "running"
    assert states["trained"] is None


def test_parameter_change_with_and_without_a_training_check() -> None:
    base = [step(1, "read_parameters", {}), step(2, "apply_schedules", [{"schedule": "training-check"}]),
            step(3, "notify_change", 5)]
    quiet = graph.trace(machines.PARAMETER_STORE, run("parameter_change", base, {"parameter": "X", "schedules": []}))
    assert outcomes(quiet)["training_check"] is None
    assert ("training_on", "applied") in quiet.taken and ("training_on", "training_check") not in quiet.taken
    started = graph.trace(machines.PARAMETER_STORE, run(
        "parameter_change", [*base, step(4, "training_check", None, child="p-v3-check")],
        {"parameter": "Enable-Automatic-Training", "training_check_run": "p-v3-check"}))
    assert outcomes(started)["training_check"] == "success"
    assert {("training_on", "training_check"), ("training_check", "applied")} <= started.taken
    assert ("training_on", "applied") not in started.taken


def test_object_created_for_training_data_and_for_detection() -> None:
    data = graph.trace(machines.OBJECT_CREATED, run("object_created", [step(1, "route_object", {"branch": "x"})],
                                                 {"branch": "training data", "label": "cat"}))
    assert outcomes(data)["training_data"] == "success" and outcomes(data)["record_detection_event"] is None
    steps = [step(1, "route_object", {}), step(2, "record_detection_event", {}), step(3, "detect_image", {}),
             step(4, "open_human_loop", None), step(5, "notify_detection", 7)]
    detected = graph.trace(machines.OBJECT_CREATED, run("object_created", steps, {"branch": "detection"}))
    states = outcomes(detected)
    assert states["open_human_loop"] == "skipped", "confident: no loop"
    assert states["detected"] == "success" and states["training_data"] is None


def test_a_detection_recorded_as_one_step_passes_each_of_its_parts() -> None:
    """Uploads are detected in one recorded step (routing.detect_uploaded_image): the graph still shows the
    route, the event, the detection, the loop (opened or skipped) and the notification."""
    done = {"event": {"id": 4}, "detection": {"id": 4}, "notification": 7}
    for loop, expected in ((None, "skipped"), ({"name": "detection-4-ab"}, "success")):
        steps = [step(1, "detect_uploaded_image", {**done, "human_loop": loop})]
        states = outcomes(graph.trace(machines.OBJECT_CREATED, run("object_created", steps,
                                                                   {"branch": "detection"})))
        assert states["open_human_loop"] == expected
        assert all(states[s] == "success" for s in ("route_object", "record_detection_event", "detect_image",
                                                    "notify_detection", "detected"))
        assert states["training_data"] is None
    waiting = [step(1, "detect_and_notify", {**done, "human_loop": None})]
    states = outcomes(graph.trace(machines.DETECTION, run("detect_waiting_image", waiting, {})))
    assert states["detect_image"] == "success" and states["open_human_loop"] == "skipped"


def test_none_of_the_above_skips_the_copy_and_its_run() -> None:
    steps = [step(1, "copy_to_training_data", None), step(2, "write_loop_output", "a2i/x.json"),
             step(3, "record_answer_on_detection", {}), step(4, "notify_answer", 9)]
    states = outcomes(graph.trace(machines.HUMAN_LOOP, run("apply_human_answer", steps, {})))
    assert states["copy_to_training_data"] == "skipped" and states["object_created"] == "skipped"
    assert states["completed"] == "success"


def test_a_batch_step_standing_for_several_states_shows_its_time_once() -> None:
    """A batch detection is one recorded step behind five states: its time shows on the first, the others say
    "same step" (they showed 0.25 s each, as if the run had taken five times as long)."""
    output = {"branch": "detection", "detections": [{"detection_id": 1, "human_loop": "loop-1"}]}
    result = graph.trace(machines.OBJECT_CREATED, run("object_created", [
        step(1, "detect_uploaded_images", output)], output))
    svg = str(drawing.render_svg(result))
    assert svg.count("0.25 s") == 1
    assert svg.count(">same step<") == 4
    assert outcomes(result)["open_human_loop"] == "success"


def test_svg_is_well_formed_links_every_state_and_escapes_text() -> None:
    result = graph.trace(machines.HUMAN_SAMPLING, run("human_sampling", [
        step(1, "sample_detections", {"sampled": []}), step(2, "notify_sampling", None),
        step(3, "<script>odd</script>", {})], {}))
    svg = str(drawing.render_svg(result))
    xml.dom.minidom.parseString(svg)
    for state in machines.HUMAN_SAMPLING.states:
        assert f'href="#state-{state.id}"' in svg
    assert "<script>" not in svg
    assert [s["name"] for s in result.unplaced_steps] == ["<script>odd</script>"]
    assert re.search(r'data-state="notify_sampling" data-outcome="skipped"', svg)


def test_charts_are_well_formed_escaped_and_say_when_empty() -> None:
    bars = str(plots.bar_chart([("<b>cat</b>", 3), ("dog", 12)], label="Images <per> label"))
    xml.dom.minidom.parseString(bars)
    assert "<b>" not in bars and "&lt;b&gt;cat&lt;/b&gt;" in bars and ">12<" in bars
    line = str(plots.line_chart(["v1", "v2", "v3"], [("F1", [0.7, None, 0.9])], label="F1", y_min=0, y_max=1,
                                reference=(0.8, "Minimum-F1-Score 0.8")))
    xml.dom.minidom.parseString(line)
    assert line.count("<circle") == 2 and "Minimum-F1-Score 0.8" in line
    histogram = str(plots.histogram([1, 2, 55, 99.5, 100], label="Confidence", bins=10))
    xml.dom.minidom.parseString(histogram)
    titles = re.findall(r"<title>([^<]*)</title>", histogram)
    assert "0–10: 2" in titles and "50–60: 1" in titles and "90–100: 2" in titles
    stacked = str(plots.stacked_bars(["01-01", "01-02"], [("a", [1, 0]), ("b", [2, 3])], label="Per day"))
    xml.dom.minidom.parseString(stacked)
    assert "01-02 · b: 3" in stacked
    for empty in (plots.bar_chart([], label="x"), plots.histogram([], label="x"),
                  plots.line_chart([], [], label="x"), plots.stacked_bars(["d"], [("a", [0])], label="x")):
        assert "No data yet." in str(empty)


@pytest.mark.parametrize(("low", "high", "integer", "expected"), [
    (0, 1, False, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0, 3, True, [0, 1, 2, 3]),
    (0, 100, False, [0, 20, 40, 60, 80, 100]),
])
def test_nice_ticks(low: float, high: float, integer: bool, expected: list[float]) -> None:
    assert plots.nice_ticks(low, high, integer=integer) == pytest.approx(expected)


def test_detection_filters_from_the_form() -> None:
    filters, given, errors = parse_filters({"label": "cat", "min_confidence": "20", "max_confidence": "80",
                                            "sampled": "yes", "answer": "answered", "since": "2026-01-02",
                                            "until": "2026-01-03", "status": "DETECTED", "rule": "audit"})
    assert errors == {} and given["answer"] == "answered" and filters["routing_rule"] == "audit"
    assert filters["label"] == "cat" and filters["min_confidence"] == 20 and filters["max_confidence"] == 80
    assert filters["sampled"] is True and filters["answered"] is True and filters["status"] == "DETECTED"
    assert filters["since"].isoformat() == "2026-01-02T00:00:00+00:00"
    assert filters["until"].isoformat().startswith("2026-01-03T23:59:59")
    filters, _, errors = parse_filters({"min_confidence": "abc", "max_confidence": "150", "answer": "dog",
                                        "since": "yesterday", "sampled": "no", "rule": "whoever"})
    assert set(errors) == {"min_confidence", "max_confidence", "since", "rule"}
    assert filters == {"human_label": "dog", "sampled": False}
    _, _, errors = parse_filters({"min_confidence": "90", "max_confidence": "10"})
    assert "below" in errors["max_confidence"]
