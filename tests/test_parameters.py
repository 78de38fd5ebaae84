"""The Parameter Store: validation, versioning, the run that applies a change, and its schedules."""

from __future__ import annotations

import pytest

from conftest import Server
from labelloop.engine import cron_for_minutes
from labelloop.parameters import service


@pytest.mark.parametrize(("name", "raw", "stored"), [
    ("Enable-Automatic-Training", "TRUE", "true"),
    ("Enable-Automatic-Training", " false ", "false"),
    ("Automatic-Training-Poll-Frequency", "1", "1"),
    ("Minimum-Untrained-Images", "+25", "25"),
    ("Minimum-F1-Score", "0.80", "0.8"),
    ("Minimum-F1-Score", "1", "1.0"),
    ("Minimum-Label-Detection-Confidence", "100", "100.0"),
    ("Minimum-Label-Detection-Confidence", ".5", "0.5"),
    ("Human-Sampling-Interval", "1000", "1000"),
])
def test_good_values_are_normalised(name: str, raw: str, stored: str) -> None:
    assert service.validate(name, raw) == stored


@pytest.mark.parametrize(("name", "raw"), [
    ("Human-Sampling-Interval", "1,000"),
    ("Human-Sampling-Interval", "abc"),
    ("Human-Sampling-Interval", "0"),
    ("Human-Sampling-Interval", "1.5"),
    ("Human-Sampling-Interval", "-3"),
    ("Human-Sampling-Interval", ""),
    ("Minimum-F1-Score", "1.5"),
    ("Minimum-F1-Score", "-0.1"),
    ("Minimum-F1-Score", "nan"),
    ("Minimum-F1-Score", "inf"),
    ("Minimum-F1-Score", "0,8"),
    ("Minimum-Label-Detection-Confidence", "100.01"),
    ("Enable-A2I-Workflow", "yes"),
    ("Enable-A2I-Workflow", "1"),
    ("Automatic-Training-Poll-Frequency", "1e3"),
    ("Minimum-Inference-Units", "0"),
])
def test_bad_values_are_refused_with_what_is_allowed(name: str, raw: str) -> None:
    with pytest.raises(service.ParameterError) as caught:
        service.validate(name, raw)
    message = str(caught.value)
    assert name in message
    assert service.DEFINITIONS[name].allowed in message


def test_unknown_parameter_lists_the_known_ones() -> None:
    with pytest.raises(service.UnknownParameter, match="Minimum-F1-Score"):
        service.validate("Minimum-F1", "0.5")


@pytest.mark.parametrize(("minutes", "cron", "period"), [
    (1, "0 * * * * *", 1),
    (5, "0 */5 * * * *", 5),
    (7, "0 */6 * * * *", 6),
    (60, "0 0 * * * *", 60),
    (600, "0 0 */8 * * *", 480),
    (720, "0 0 */12 * * *", 720),
    (1440, "0 0 0 * * *", 1440),
    (2880, "0 0 0 */2 * *", 2880),
])
def test_schedule_periods_become_cron(minutes: int, cron: str, period: int) -> None:
    assert cron_for_minutes(minutes) == (cron, period)


def test_defaults_are_the_seeds(shared_server: Server) -> None:
    with shared_server.client() as api:
        found = {p["name"]: p for p in api.get("/parameters").json()}
    assert set(found) == set(service.DEFINITIONS)
    assert found["Minimum-Untrained-Images"]["value"] == "10"
    assert found["Minimum-F1-Score"]["value"] == "0.8"
    assert found["Minimum-Label-Detection-Confidence"]["value"] == "70.0"
    assert found["Human-Sampling-Interval"]["value"] == "1000"
    assert found["Automatic-Training-Poll-Frequency"]["allowed"] == "a whole number ≥ 1"
    assert found["For-System-Use-Only"]["type"] == "json"


def test_bad_value_gets_422_and_changes_nothing(shared_server: Server) -> None:
    with shared_server.client() as api:
        before = api.get("/parameters/Human-Sampling-Interval").json()
        response = api.put("/parameters/Human-Sampling-Interval", json={"value": "1,000"})
        assert response.status_code == 422
        assert "whole number ≥ 1" in response.json()["detail"]
        assert api.get("/parameters/Human-Sampling-Interval").json() == before
        assert api.put("/parameters/No-Such-Thing", json={"value": "1"}).status_code == 404
        response = api.put("/parameters/For-System-Use-Only", json={"value": "{}"})
        assert response.status_code == 422
        assert "system only" in response.json()["detail"]


def test_change_is_versioned_applied_by_a_run_and_re_times_the_schedule(shared_server: Server) -> None:
    with shared_server.client() as api:
        response = api.put("/parameters/Automatic-Training-Poll-Frequency", json={"value": "60"})
        assert response.status_code == 200
        body = response.json()
        assert body["changed"] is True
        assert body["parameter"]["value"] == "60"
        run = shared_server.wait_run(body["run_id"])
        assert run["status"] == "SUCCESS", run
        assert run["branch"] == "Parameter Store"
        steps = [step["name"] for step in run["steps"]]
        assert steps[0] == "read_parameters"
        assert "apply_schedules" in steps and "notify_change" in steps
        applied = next(s for s in run["steps"] if s["name"] == "apply_schedules")
        assert applied["input"]["names"] == ["Automatic-Training-Poll-Frequency"]
        assert applied["output"][0]["cron"] == "0 0 * * * *"
        assert any("re-timed" in action for action in applied["output"][0]["actions"])
        schedules = {s["name"]: s for s in api.get("/schedules").json()}
        assert schedules["training-check"]["cron"] == "0 0 * * * *"
        history = api.get("/parameters/Automatic-Training-Poll-Frequency/history").json()
        assert history[0]["old_value"] == "720" and history[0]["new_value"] == "60"
        assert history[0]["changed_by"] == "admin"
        assert history[0]["version"] == body["parameter"]["version"] == 2
        # The same value again is not a change and starts nothing.
        again = api.put("/parameters/Automatic-Training-Poll-Frequency", json={"value": "60"}).json()
        assert again == {**again, "changed": False, "run_id": None}


def test_disabling_sampling_pauses_its_schedule_and_enabling_resumes_it(shared_server: Server) -> None:
    with shared_server.client() as api:
        for value, status in (("false", "PAUSED"), ("true", "ACTIVE")):
            run_id = api.put("/parameters/Enable-Automatic-Human-Sampling", json={"value": value}).json()["run_id"]
            assert shared_server.wait_run(run_id)["status"] == "SUCCESS"
            schedules = {s["name"]: s for s in api.get("/schedules").json()}
            assert schedules["human-sampling"]["status"] == status


def test_enabling_automatic_training_checks_training_at_once(shared_server: Server) -> None:
    with shared_server.client() as api:
        first = api.put("/parameters/Enable-Automatic-Training", json={"value": "false"}).json()
        shared_server.wait_run(first["run_id"])
        second = api.put("/parameters/Enable-Automatic-Training", json={"value": "true"}).json()
        run = shared_server.wait_run(second["run_id"])
        assert run["status"] == "SUCCESS"
        check_id = run["output"]["training_check_run"]
        check = shared_server.wait_run(check_id)
        assert check["branch"] == "Training"
        decision = check["steps"][0]
        assert decision["name"] == "check_new_training"
        assert decision["output"]["train"] is False
        assert decision["output"]["labeled_images"] == 0
