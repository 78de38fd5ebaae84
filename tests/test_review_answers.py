"""The human answer path: leases and the model's guess on the API, pinned content, undo and correction,
Label Audit loops, and A2I's output read as A2I's documentation describes it."""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from conftest import ADMIN_PASSWORD, Server, server_env, wait_until
from images import box_logo, smile_logo
from test_web_portal import (
    csrf_of,
    detection_loops,
    sampling_loop,
    stop_open_loops,
    take_task,
    uncertain,
    web_client,
)

pytestmark = pytest.mark.timeout(600)
NOTA = "None of the Above"
UNDO_SECONDS = 4


def serve_two_labels(server: Server, api: httpx.Client) -> None:
    """Train v1 on 5 + 5 generated logos, wait until it serves, and send every detection to review."""
    for i in range(5):
        api.put(f"/objects/images_labeled_by_folder/amazon_logo/a{i}.png", content=smile_logo(i))
        api.put(f"/objects/images_labeled_by_folder/aws_logo/b{i}.png", content=box_logo(i))
    assert server.wait_run(api.post("/training/check").json()["run_id"], timeout=240)["status"] == "SUCCESS"
    wait_until(lambda: any(m["status"] == "RUNNING" for m in api.get("/models").json()), 120, 0.25,
               "a model RUNNING")
    api.put("/parameters/Minimum-Label-Detection-Confidence", json={"value": "100"}).raise_for_status()


@pytest.fixture(scope="module")
def review_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a model serving on two labels, every detection sent to review, a 4 s undo window."""
    server = Server(home=tmp_path_factory.mktemp("review") / "home",
                    env=server_env(LABELLOOP_UNDO_SECONDS=str(UNDO_SECONDS))).start()
    try:
        with server.client() as api:
            serve_two_labels(server, api)
            for name in ("rita", "ravi"):
                assert api.post("/users", json={"username": name, "role": "worker",
                                                "password": "first-password-1"}).status_code == 201
                with server.client(server.token(name, "first-password-1")) as worker:
                    worker.post("/auth/password", json={"current_password": "first-password-1",
                                                        "new_password": "own-password-1"}).raise_for_status()
        yield server
    finally:
        server.stop()


def worker_api(server: Server, username: str) -> httpx.Client:
    """An API client for a worker of the module's server."""
    return server.client(server.token(username, "own-password-1"))


def applied(api: httpx.Client, name: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (loop := api.get(f"/human-loops/{name}").json())["applied_at"] and loop, timeout,
                      0.2, f"the answer to {name} applied")


def keys_under(api: httpx.Client, prefix: str) -> set[str]:
    return {o["key"] for o in api.get("/objects", params={"prefix": prefix}).json()}


def test_the_api_keeps_leases_takes_a_retry_and_hides_the_guess_on_audits(review_server: Server) -> None:
    api = review_server.client()
    rita, ravi = worker_api(review_server, "rita"), worker_api(review_server, "ravi")
    loops = detection_loops(api, {f"images_for_detection/lease-{i}.png": uncertain(30 + i) for i in range(2)})
    portal = web_client(review_server, "rita", "own-password-1")
    held = re.search(r'data-task="([^"]+)"', take_task(portal).text).group(1)
    assert held in loops

    stolen = ravi.post(f"/human-loops/{held}/answer", json={"label": "aws_logo"})
    assert stolen.status_code == 409 and "held by another reviewer" in stolen.json()["detail"], stolen.text
    assert api.get(f"/human-loops/{held}").json()["status"] == "InProgress"

    first = rita.post(f"/human-loops/{held}/answer", json={"label": "amazon_logo"})
    again = rita.post(f"/human-loops/{held}/answer", json={"label": "amazon_logo"})  # a retry: same answer
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["run_id"] == again.json()["run_id"]
    other = ravi.post(f"/human-loops/{held}/answer", json={"label": "aws_logo"})
    assert other.status_code == 409 and "Completed" in other.json()["detail"]
    assert applied(api, held)["answer_label"] == "amazon_logo"

    sampled = sampling_loop(review_server, api, "images_for_detection/sampled-guess.png")
    assert api.get(f"/human-loops/{sampled}").json()["model_label"] is not None, "operators see the guess"
    for shown in (ravi.get(f"/human-loops/{sampled}").json(),
                  *[loop for loop in ravi.get("/human-loops").json() if loop["name"] == sampled]):
        assert shown["model_label"] is None and shown["model_confidence"] is None, shown
    api.post(f"/human-loops/{sampled}/stop")
    for client in (api, rita, ravi, portal):
        client.close()


def test_the_copy_is_the_image_the_reviewer_saw_or_none(review_server: Server) -> None:
    api = review_server.client()
    key = "images_for_detection/swapped.png"
    [(name, _)] = detection_loops(api, {key: uncertain(50)}).items()
    original = api.get(f"/objects/{key}").content
    assert api.put(f"/objects/{key}", content=box_logo(51)).status_code == 201  # replaced under the reviewer

    portal = web_client(review_server, "ravi", "own-password-1")
    page = take_task(portal)
    while (task := re.search(r'data-task="([^"]+)"', page.text).group(1)) != name:  # skip the new image's loop
        page = portal.post(f"/review/tasks/{task}", data={"csrf_token": csrf_of(page.text), "label": NOTA})
    image = portal.get(f"/review/tasks/{name}/image")
    assert image.status_code == 409 and "was replaced" in image.text
    assert api.post(f"/human-loops/{name}/answer", json={"label": "aws_logo"}).status_code == 409, "ravi holds it"
    portal.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(page.text), "label": "aws_logo"})
    loop = applied(api, name)
    assert loop["answered_by"] == "ravi" and loop["copied_key"] is None
    assert "was replaced after its human loop opened" in loop["status_message"]
    assert not [k for k in keys_under(api, "images_labeled_by_folder/") if f"humanLoopName-{name}-" in k]
    assert loop["object_etag"] and original != api.get(f"/objects/{key}").content
    portal.close()
    api.close()


def test_undo_in_the_window_then_correction_moves_the_one_copy(review_server: Server) -> None:
    api = review_server.client()
    for loop in api.get("/human-loops", params={"status": "InProgress"}).json():
        api.post(f"/human-loops/{loop['name']}/stop")
    [(name, key)] = detection_loops(api, {"images_for_detection/undo.png": uncertain(60)}).items()
    portal = web_client(review_server, "rita", "own-password-1")
    page = take_task(portal)
    assert f'data-task="{name}"' in page.text
    answered = portal.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(page.text), "label": "aws_logo"})
    assert 'id="undo-form"' in answered.text and "Saved: <strong>aws_logo</strong>" in answered.text
    undone = portal.post("/review/undo", data={"csrf_token": csrf_of(answered.text)})
    assert "Answer taken back" in undone.text and f'data-task="{name}"' in undone.text, "the task is back"
    loop = api.get(f"/human-loops/{name}").json()
    assert loop["status"] == "InProgress" and loop["answer_round"] == 1 and loop["answer_label"] is None

    answered = portal.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(undone.text), "label": "amazon_logo"})
    loop = applied(api, name)
    assert loop["answer_label"] == "amazon_logo" and loop["copied_key"].startswith(
        "images_labeled_by_folder/amazon_logo/")
    late = portal.post("/review/undo", data={"csrf_token": csrf_of(answered.text)})
    assert "can no longer be undone" in late.text
    assert review_server.wait_run(f"answer-{name}")["output"]["undone"] is True, "the first round's run stopped"

    refused = api.post(f"/human-loops/{name}/correct", json={"label": "amazon_logo"})
    assert refused.status_code == 422 and "already" in refused.json()["detail"]
    for label in ("aws_logo", NOTA, "amazon_logo"):
        corrected = api.post(f"/human-loops/{name}/correct", json={"label": label})
        assert corrected.status_code == 200, corrected.text
        review_server.wait_run(corrected.json()["run_id"])
        loop = applied(api, name)
        copies = [k for k in keys_under(api, "images_labeled_by_folder/") if f"humanLoopName-{name}-" in k]
        assert copies == ([] if label == NOTA else [loop["copied_key"]]), (label, copies)
        if label != NOTA:
            assert copies[0].startswith(f"images_labeled_by_folder/{label}/")
            assert api.get(f"/objects/{copies[0]}").content == api.get(f"/objects/{key}").content
        event = next(e for e in api.get("/detections", params={"limit": 1000}).json()
                     if e["human_loop_name"] == name)
        assert event["human_label"] == label
        output = json.loads(api.get(f"/objects/{loop['output_key']}").content)
        assert output["consolidatedAnswer"]["crowd-image-classifier"]["label"] == label
        assert [a["answerContent"]["crowd-image-classifier"]["label"] for a in output["humanAnswers"]] == [
            "amazon_logo", label], "the reviewer's answer is kept; the correction comes last"
        assert output["humanAnswers"][-1]["workerMetadata"]["answerKind"] == "correction"
    assert "corrected by admin" in loop["status_message"]
    portal.close()
    api.close()


def test_label_audit_answers_move_keep_or_remove_the_image_never_copy_it(review_server: Server) -> None:
    api = review_server.client()
    keys = [f"images_labeled_by_folder/amazon_logo/audit-{i}.png" for i in range(3)]
    for i, key in enumerate(keys):
        assert api.put(f"/objects/{key}", content=smile_logo(70 + i)).status_code == 201
    contents = {key: api.get(f"/objects/{key}").content for key in keys}
    opened = api.post("/human-loops/label-audit", json={"keys": keys})
    assert opened.status_code == 201 and len(opened.json()) == 3
    assert api.post("/human-loops/label-audit", json={"keys": keys}).json() == [], "one open audit per image"
    bad = api.post("/human-loops/label-audit", json={"keys": ["images_for_detection/x.png"]})
    assert bad.status_code == 422 and "not a training image" in bad.json()["detail"]
    loops = {loop["object_key"]: loop["name"] for loop in opened.json()}
    assert all(loop["source"] == "Label Audit" for loop in opened.json())
    with worker_api(review_server, "ravi") as ravi:
        assert ravi.get(f"/human-loops/{loops[keys[0]]}").json()["model_label"] is None, "no guess on audits"
        answers = {keys[0]: "aws_logo", keys[1]: "amazon_logo", keys[2]: NOTA}
        for key, label in answers.items():
            assert ravi.post(f"/human-loops/{loops[key]}/answer", json={"label": label}).status_code == 200
    for key in keys:
        applied(api, loops[key])
    everything = keys_under(api, "")
    where = {key: [k for k in everything if k.endswith(key.rsplit("/", 1)[-1])] for key in keys}
    assert where[keys[0]] == ["images_labeled_by_folder/aws_logo/audit-0.png"], where
    assert where[keys[1]] == [keys[1]], where
    assert where[keys[2]] == ["label-audit-removed/amazon_logo/audit-2.png"], where
    for key, [now] in where.items():
        assert api.get(f"/objects/{now}").content == contents[key]
    output = json.loads(api.get(f"/objects/{applied(api, loops[keys[0]])['output_key']}").content)
    assert output["inputContent"]["detectLabelRequestId"] is None and output["inputContent"]["source"] == "Label Audit"
    api.close()


def test_a2i_output_reads_as_a2i_documents_it(review_server: Server) -> None:
    """A2I: s3://<bucket>/<flow definition name>/YYYY/MM/DD/hh/mm/ss/<human loop name>/output.json, the time the
    loop was created; flowDefinitionArn, humanLoopName, inputContent.taskObject (an s3:// URI), humanAnswers with
    acceptanceTime, submissionTime, timeSpentInSeconds, workerId, workerMetadata and answerContent."""
    api = review_server.client()
    [(name, key)] = detection_loops(api, {"images_for_detection/a2i.png": uncertain(80)}).items()
    with worker_api(review_server, "rita") as rita:
        portal = web_client(review_server, "rita", "own-password-1")
        page = take_task(portal)
        while (task := re.search(r'data-task="([^"]+)"', page.text).group(1)) != name:
            page = portal.post(f"/review/tasks/{task}", data={"csrf_token": csrf_of(page.text), "label": NOTA})
        assert rita.post(f"/human-loops/{name}/answer", json={"label": "aws_logo"}).status_code == 200
        portal.close()
    loop = applied(api, name)
    outputs = [k for k in keys_under(api, "a2i-human-loop-data/") if k.endswith(f"/{name}/output.json")]
    assert outputs == [loop["output_key"]]
    flow, *stamp, loop_name, file_name = outputs[0].removeprefix("a2i-human-loop-data/").split("/")
    assert (flow, loop_name, file_name, len(stamp)) == ("labelloop-review", name, "output.json", 6)
    created = datetime.strptime("/".join(stamp), "%Y/%m/%d/%H/%M/%S").replace(tzinfo=UTC)
    assert abs((created - datetime.fromisoformat(loop["created_at"])).total_seconds()) < 1
    record = json.loads(api.get(f"/objects/{outputs[0]}").content)
    assert record["flowDefinitionArn"].split(":")[:3] == ["arn", "aws", "sagemaker"]
    assert record["flowDefinitionArn"].endswith(f":flow-definition/{flow}")
    assert record["humanLoopName"] == name
    bucket, _, task_key = record["inputContent"]["taskObject"].removeprefix("s3://").partition("/")
    assert record["inputContent"]["taskObject"].startswith("s3://") and (bucket, task_key) == ("labelloop", key)
    event = next(e for e in api.get("/detections", params={"limit": 1000}).json() if e["human_loop_name"] == name)
    assert record["inputContent"]["detectLabelRequestId"] == event["request_id"]
    assert record["inputContent"]["initialValue"] == event["label"]
    [answer] = record["humanAnswers"]
    assert answer["answerContent"] == {"crowd-image-classifier": {"label": "aws_logo"}}
    assert answer["workerId"] == "rita" and answer["workerMetadata"]["identityData"]["sub"] == "rita"
    accepted, submitted = (datetime.fromisoformat(answer[f]) for f in ("acceptanceTime", "submissionTime"))
    assert accepted <= submitted
    assert answer["timeSpentInSeconds"] == pytest.approx((submitted - accepted).total_seconds(), abs=0.01)

    # The detection CSV carries the seed's DynamoDB column names too, so its analytics keep working.
    rows = list(csv.DictReader(io.StringIO(api.get("/detections/export.csv", params={"limit": 1000}).text)))
    [row] = [row for row in rows if row["HumanLoopName"] == name]
    assert (row["DetectLabelRequestId"], row["S3ObjectKey"], row["HumanLabel"], row["CopiedS3ObjectKey"]) == (
        event["request_id"], key, "aws_logo", loop["copied_key"])
    assert float(row["DetectedConfidenceLevel"]) == pytest.approx(event["confidence"])
    api.close()


def new_worker(server: Server, api: httpx.Client, name: str) -> httpx.Client:
    """A worker account with its own password, and an API client for it."""
    assert api.post("/users", json={"username": name, "role": "worker", "password": "first-password-1"}
                    ).status_code == 201
    with server.client(server.token(name, "first-password-1")) as worker:
        worker.post("/auth/password", json={"current_password": "first-password-1",
                                            "new_password": "own-password-1"}).raise_for_status()
    return worker_api(server, name)


def test_several_reviewers_per_task_consolidate_escalate_and_break_ties_by_reliability(
        review_server: Server) -> None:
    api = review_server.client()
    for loop in api.get("/human-loops", params={"status": "InProgress"}).json():
        api.post(f"/human-loops/{loop['name']}/stop")
    for bad, reason in (({"Detection": 10}, "from 1 to 9"), ({"Detection": 0}, "from 1 to 9"),
                        ({"Nope": 2}, "unknown loop source")):
        refused = api.put("/task-template", json={"reviewers_per_task": bad})
        assert refused.status_code == 422 and reason in refused.json()["detail"], refused.text
    template = api.put("/task-template", json={"reviewers_per_task": {"Detection": 3}, "min_agreement": 0.5})
    assert template.json()["reviewers_per_task"] == {"Detection": 3, "Human Sampling": 1, "Label Audit": 1}
    rita, ravi = worker_api(review_server, "rita"), worker_api(review_server, "ravi")
    rosa, rudi = new_worker(review_server, api, "rosa"), new_worker(review_server, api, "rudi")
    loops = list(detection_loops(api, {f"images_for_detection/three-{i}.png": uncertain(90 + i) for i in range(2)}))
    portal = web_client(review_server, "rita", "own-password-1")
    page = take_task(portal)
    agreed = re.search(r'data-task="([^"]+)"', page.text).group(1)
    [split] = set(loops) - {agreed}
    after = portal.post(f"/review/tasks/{agreed}", data={"csrf_token": csrf_of(page.text), "label": "aws_logo"})
    assert f'data-task="{split}"' in after.text, "the next task, never the one just answered"
    loop = api.get(f"/human-loops/{agreed}").json()
    assert loop["status"] == "InProgress" and [a["worker"] for a in loop["answers"]] == ["rita"]
    assert rita.get(f"/human-loops/{agreed}").json()["answers"] is None, "reviewers do not see others' answers"
    twice = rita.post(f"/human-loops/{agreed}/answer", json={"label": "amazon_logo"})
    assert twice.status_code == 409 and "answered human loop" in twice.json()["detail"]
    portal.post("/review/stop", data={"csrf_token": csrf_of(after.text)})
    assert ravi.post(f"/human-loops/{agreed}/answer", json={"label": "aws_logo"}).json()["status"] == "InProgress"
    assert rosa.post(f"/human-loops/{agreed}/answer", json={"label": "amazon_logo"}).json()["status"] == "Completed"
    loop = applied(api, agreed)
    assert loop["answer_label"] == "aws_logo" and len(loop["answers"]) == 3
    assert "consolidated from 3 answers" in loop["status_message"]
    copies = [k for k in keys_under(api, "images_labeled_by_folder/") if f"humanLoopName-{agreed}-" in k]
    assert copies == [loop["copied_key"]] and copies[0].startswith("images_labeled_by_folder/aws_logo/")
    output = json.loads(api.get(f"/objects/{loop['output_key']}").content)
    assert [a["workerId"] for a in output["humanAnswers"]] == ["rita", "ravi", "rosa"]

    # Three different answers: 1 in 3 agree, below one half: a fourth reviewer is asked, and decides.
    for worker, label in ((rita, "aws_logo"), (ravi, "amazon_logo"), (rosa, NOTA)):
        assert worker.post(f"/human-loops/{split}/answer", json={"label": label}).status_code == 200
    loop = api.get(f"/human-loops/{split}").json()
    assert loop["status"] == "InProgress" and loop["required_answers"] == 4 and "escalated" in loop["status_message"]
    assert rudi.post(f"/human-loops/{split}/answer", json={"label": "amazon_logo"}).json()["status"] == "Completed"
    assert applied(api, split)["answer_label"] == "amazon_logo"

    # A tie between two reviewers goes to the one who agreed more often with final labels: rita (1 of 2 so
    # far) over rosa (0 of 2).
    api.put("/task-template", json={"reviewers_per_task": {"Detection": 2}}).raise_for_status()
    [tie] = detection_loops(api, {"images_for_detection/tie.png": uncertain(99)})
    assert rosa.post(f"/human-loops/{tie}/answer", json={"label": "amazon_logo"}).status_code == 200
    assert rita.post(f"/human-loops/{tie}/answer", json={"label": "aws_logo"}).status_code == 200
    assert applied(api, tie)["answer_label"] == "aws_logo"
    api.put("/task-template", json={"reviewers_per_task": {"Detection": 1}, "min_agreement": 0.6})
    for client in (api, rita, ravi, rosa, rudi, portal):
        client.close()


def test_reviewer_metrics_show_who_agrees_and_an_admin_pauses_in_one_click(review_server: Server) -> None:
    api = review_server.client()
    if "rosa" not in {m["reviewer"] for m in api.get("/reviewers/metrics").json()}:
        test_several_reviewers_per_task_consolidate_escalate_and_break_ties_by_reliability(review_server)
    metrics = {m["reviewer"]: m for m in api.get("/reviewers/metrics").json()}
    assert metrics["rosa"]["answered"] >= 3 and metrics["rosa"]["agreement"] < metrics["rita"]["agreement"]
    assert metrics["rita"]["median_seconds"] is not None and metrics["rita"]["days"][0]["answered"] >= 1
    rows = list(csv.DictReader(io.StringIO(api.get("/reviewers/metrics.csv").text)))
    assert {"rita", "rosa"} <= {row["reviewer"] for row in rows} and set(rows[0]) >= {"day", "agreement"}

    admin = web_client(review_server, "admin", ADMIN_PASSWORD)
    page = admin.get("/reviewers")
    assert page.status_code == 200 and "<svg" in page.text
    assert re.search(r'<tr class="warn" data-reviewer="rosa">', page.text), "rosa is below 80 %"
    paused = admin.post("/reviewers/rosa/pause", data={"csrf_token": csrf_of(page.text)})
    assert paused.url.path == "/reviewers" and "<strong>paused</strong>" in paused.text
    [name] = detection_loops(api, {"images_for_detection/paused.png": uncertain(120)})
    with worker_api(review_server, "rosa") as rosa:
        refused = rosa.post(f"/human-loops/{name}/answer", json={"label": "aws_logo"})
        assert refused.status_code == 403 and "paused" in refused.json()["detail"]
        waiting = take_task(web_client(review_server, "rosa", "own-password-1")).text
        assert "data-task" not in waiting and "An admin paused you from review" in waiting
        assert api.post("/reviewers/rosa/resume").json()["paused"] == []
        assert rosa.post(f"/human-loops/{name}/answer", json={"label": "aws_logo"}).status_code == 200
    admin.close()
    api.close()


def test_a_lease_lasts_the_task_time_limit_then_the_task_returns_to_the_queue(review_server: Server) -> None:
    api = review_server.client()
    for loop in api.get("/human-loops", params={"status": "InProgress"}).json():
        api.post(f"/human-loops/{loop['name']}/stop")
    refused = api.put("/task-template", json={"task_time_limit_seconds": 10})
    assert refused.status_code == 422 and "30 to 28800" in refused.json()["detail"]
    assert api.put("/task-template", json={"task_time_limit_seconds": 30}).json()["task_time_limit_seconds"] == 30
    [name] = detection_loops(api, {"images_for_detection/time-limit.png": uncertain(130)})
    rita, ravi = (web_client(review_server, who, "own-password-1") for who in ("rita", "ravi"))
    assert f'data-task="{name}"' in take_task(rita).text
    loop = api.get(f"/human-loops/{name}").json()
    held = datetime.fromisoformat(loop["lease_expires_at"]) - datetime.fromisoformat(loop["leased_at"])
    assert loop["leased_by"] == "rita" and held.total_seconds() == pytest.approx(30, abs=1)
    assert "data-task" not in take_task(ravi).text, "held by rita for 30 s"
    wait_until(lambda: f'data-task="{name}"' in take_task(ravi).text, 60, 2, "the task back in the queue")
    api.put("/task-template", json={"task_time_limit_seconds": 3600}).raise_for_status()
    for client in (api, rita, ravi):
        client.close()


def _task_on(page: httpx.Response) -> str | None:
    found = re.search(r'data-task="([^"]+)"', page.text)
    return found.group(1) if found else None


def _same_page(html: str, name: str) -> str:
    """A task page without what differs from task to task: its name, the count, the last answer, tokens."""
    html = html.replace(name, "NAME")
    for pattern, blank in ((r'<p class="count".*?</p>', ""), (r'<div class="saved notice".*?</div>', ""),
                           (r'(value|nonce|content)="[A-Za-z0-9_\-+/=]{16,}"', r'\1="T"')):
        html = re.sub(pattern, blank, html, flags=re.S)
    return re.sub(r"\s*\n\s*", "\n", html)


def test_gold_tasks_are_mixed_in_look_real_and_only_score_the_reviewer(review_server: Server) -> None:
    api = review_server.client()
    rita = worker_api(review_server, "rita")
    stop_open_loops(api)
    for body, reason in (({"object_key": "images_labeled_by_folder/amazon_logo/nope.png"}, "not stored"),
                         ({"object_key": "images_labeled_by_folder/amazon_logo/a0.png", "label": "cat"},
                          "not one of the task's labels"),
                         ({"object_key": "images_for_detection/undo.png"}, "give its known label")):
        refused = api.post("/gold-tasks", json=body)
        assert refused.status_code == 422 and reason in refused.json()["detail"], refused.text
    golds = {"images_labeled_by_folder/amazon_logo/a0.png": "amazon_logo",
             "images_labeled_by_folder/aws_logo/b0.png": "aws_logo"}
    for key in golds:
        assert api.post("/gold-tasks", json={"object_key": key}).status_code == 201
    assert {g["object_key"]: g["label"] for g in api.get("/gold-tasks").json()} == golds
    api.put("/parameters/Gold-Task-Rate", json={"value": "50"}).raise_for_status()
    try:
        ravi = web_client(review_server, "ravi", "own-password-1")
        assert _task_on(take_task(ravi)) is None, "no gold task while no real task waits"
        ravi.close()
        api.put("/parameters/Human-Sampling-Interval", json={"value": "1000"})  # so sampling_loop changes it
        sampled = sampling_loop(review_server, api, "images_for_detection/gold-mix-sampled.png")
        real = {sampled, *detection_loops(api, {f"images_for_detection/gold-mix-{i}.png": uncertain(140 + i)
                                                for i in range(3)})}
        trained_before = keys_under(api, "images_labeled_by_folder/")
        portal = web_client(review_server, "rita", "own-password-1")
        pages, page = {}, take_task(portal)
        while (name := _task_on(page)) is not None:
            assert name not in pages, "never the same task twice"
            pages[name] = page.text
            loop = api.get(f"/human-loops/{name}").json()
            assert portal.get(f"/review/tasks/{name}/image").headers["content-type"].startswith("image/")
            if loop["source"] != "Gold":
                page = portal.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(page.text), "label": NOTA})
            elif not [n for n in pages if n not in real][:-1]:  # the first gold task: right, through the API
                answered = rita.post(f"/human-loops/{name}/answer", json={"label": golds[loop["object_key"]]})
                shown = answered.json()
                assert shown["source"] == "Human Sampling" and shown["object_key"] is None, shown
                assert shown["run_id"] is None and "gold" not in answered.text.lower()
                page = take_task(portal)
            else:  # the second: wrong, through the portal; undo gives it back, as a real task
                wrong = "aws_logo" if golds[loop["object_key"]] == "amazon_logo" else "amazon_logo"
                page = portal.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(page.text), "label": wrong})
                page = portal.post("/review/undo", data={"csrf_token": csrf_of(page.text)})
                assert "Answer taken back" in page.text and _task_on(page) == name
                page = portal.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(page.text), "label": wrong})
        served_gold = set(pages) - real
        assert set(pages) >= real and len(served_gold) == 2, f"4 real tasks and both gold ones: {list(pages)}"

        for name in served_gold:
            assert name.startswith("sampling-"), "named like an audit loop"
            html = pages[name]
            assert "gold" not in html.lower() and "Model's guess" not in html
            assert not any(key in html or key.rsplit("/", 1)[1] in html for key in golds)
            gold_page, real_page = _same_page(html, name), _same_page(pages[sampled], sampled)
            assert gold_page == real_page, "\n".join(difflib.unified_diff(real_page.splitlines(),
                                                                          gold_page.splitlines(), lineterm=""))
            as_worker = rita.get(f"/human-loops/{name}")
            assert as_worker.json()["source"] == "Human Sampling" and "gold" not in as_worker.text.lower()
            loop = api.get(f"/human-loops/{name}").json()
            assert loop["source"] == "Gold" and loop["status"] == "Completed" and loop["detection_id"] is None
            assert loop["copied_key"] is None and loop["output_key"] is None
        listed = {loop["name"] for loop in rita.get("/human-loops", params={"source": "Human Sampling"}).json()}
        assert served_gold <= listed and rita.get("/human-loops", params={"source": "Gold"}).json() == []
        assert all(loop["object_key"] is None for loop in rita.get("/human-loops").json())

        wait_until(lambda: all(api.get(f"/human-loops/{n}").json()["applied_at"] for n in real), 60, 0.3,
                   "the real answers applied")
        assert keys_under(api, "images_labeled_by_folder/") == trained_before, "gold answers copy nothing"
        assert not [k for k in keys_under(api, "a2i-human-loop-data/") if any(n in k for n in served_gold)]
        [mine] = [m for m in api.get("/reviewers/metrics").json() if m["reviewer"] == "rita"]
        assert (mine["gold_answers"], mine["gold_accuracy"]) == (2, 0.5)
        rows = list(csv.DictReader(io.StringIO(api.get("/reviewers/metrics.csv").text)))
        assert [(r["gold_answers"], r["gold_accuracy"]) for r in rows if r["reviewer"] == "rita"][-1] == ("2", "0.5")
        assert [(g["answers"], g["answered_right"]) for g in api.get("/gold-tasks").json()] in (
            [(1, 1), (1, 0)], [(1, 0), (1, 1)])
        assert _task_on(take_task(portal)) is None, "rita saw both gold tasks: none again"
        portal.close()
        admin = web_client(review_server, "admin", ADMIN_PASSWORD)
        page = admin.get("/reviewers")
        assert 'id="gold-task-list"' in page.text and "Accuracy on gold tasks" in page.text
        assert re.search(r'data-reviewer="rita">.*?<td class="gold-accuracy">50 %</td>', page.text, re.S)
        removed = admin.post("/reviewers/gold/remove", data={"csrf_token": csrf_of(page.text),
                                                              "object_key": "images_labeled_by_folder/aws_logo/b0.png"})
        assert "aws_logo/b0.png" not in removed.text
        admin.close()
    finally:
        api.put("/parameters/Gold-Task-Rate", json={"value": "0"}).raise_for_status()
    for client in (api, rita):
        client.close()


def test_reviewers_below_a_gold_accuracy_are_paused(review_server: Server) -> None:
    api = review_server.client()
    if not any(m.get("gold_answers") for m in api.get("/reviewers/metrics").json()):
        test_gold_tasks_are_mixed_in_look_real_and_only_score_the_reviewer(review_server)
    assert api.post("/reviewers/pause-below", json={"accuracy": 1.5}).status_code == 422
    paused = api.post("/reviewers/pause-below", json={"accuracy": 0.75, "min_gold_answers": 3}).json()
    assert paused["paused"] == [], "rita has 2 gold answers, fewer than 3"
    paused = api.post("/reviewers/pause-below", json={"accuracy": 0.75, "min_gold_answers": 2}).json()
    assert paused["paused"] == ["rita"] and "rita" in paused["paused_reviewers"]
    assert api.post("/reviewers/rita/resume").json()["paused"] == []

    # Minimum-Gold-Accuracy pauses a reviewer as their gold answer comes in: ravi answers his first one wrong.
    stop_open_loops(api)
    for name, value in (("Minimum-Gold-Accuracy", "75"), ("Minimum-Gold-Answers", "1"), ("Gold-Task-Rate", "50")):
        api.put(f"/parameters/{name}", json={"value": value}).raise_for_status()
    try:
        detection_loops(api, {f"images_for_detection/gold-pause-{i}.png": uncertain(150 + i) for i in range(2)})
        ravi = web_client(review_server, "ravi", "own-password-1")
        page = take_task(ravi)
        while (name := _task_on(page)) is not None and api.get(f"/human-loops/{name}").json()["source"] != "Gold":
            page = ravi.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(page.text), "label": NOTA})
        assert name is not None, "a gold task among ravi's first tasks"
        after = ravi.post(f"/review/tasks/{name}", data={"csrf_token": csrf_of(page.text), "label": NOTA})
        assert _task_on(after) is None and "An admin paused you from review" in after.text
        ravi.close()
    finally:
        for name, value in (("Minimum-Gold-Accuracy", "0"), ("Gold-Task-Rate", "0")):
            api.put(f"/parameters/{name}", json={"value": value}).raise_for_status()
        api.post("/reviewers/ravi/resume")
    api.close()
