"""The seed's walkthrough, end to end, through the REST API of a server started as a user starts it."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from conftest import Server, wait_until
from images import blend, box_logo, smile_logo, unseen

pytestmark = pytest.mark.timeout(600)


def put(api: httpx.Client, key: str, data: bytes) -> dict:
    response = api.put(f"/objects/{key}", content=data)
    assert response.status_code == 201, response.text
    return response.json()


def detections_for(api: httpx.Client, keys: list[str]) -> list[dict]:
    """The detection events of ``keys`` once each is DETECTED and its run (which opens any human loop after the
    detection is recorded) has finished."""
    def done() -> list[dict] | None:
        events = {e["object_key"]: e for e in api.get("/detections", params={"limit": 1000}).json()}
        found = [events.get(key) for key in keys]
        if not all(e and e["status"] == "DETECTED" for e in found):
            return None
        if not all(api.get(f"/runs/{e['run_id']}").json()["status"] == "SUCCESS" for e in found):
            return None
        events = {e["object_key"]: e for e in api.get("/detections", params={"limit": 1000}).json()}
        return [events[key] for key in keys]

    return wait_until(done, 120, 0.25, f"detections of {len(keys)} images")


def wait_for_serving(server: Server, api: httpx.Client, version: str) -> dict:
    def serving() -> dict | None:
        model = api.get(f"/models/{version}")
        return model.json() if model.status_code == 200 and model.json()["status"] == "RUNNING" else None

    return wait_until(serving, 300, 0.5, f"model {version} RUNNING")


def test_seed_walkthrough(server: Server) -> None:
    api = server.client()
    # 1. Prepare the initial training images: two folders, ten images.
    for i in range(5):
        put(api, f"images_labeled_by_folder/amazon_logo/amazon_{i}.png", smile_logo(i))
        put(api, f"images_labeled_by_folder/aws_logo/aws_{i}.png", box_logo(i))

    # 2. Toggle Enable-Automatic-Training false then true: a training check runs at once and trains v1.
    off = api.put("/parameters/Enable-Automatic-Training", json={"value": "false"}).json()
    server.wait_run(off["run_id"])
    on = api.put("/parameters/Enable-Automatic-Training", json={"value": "true"}).json()
    check_id = server.wait_run(on["run_id"])["output"]["training_check_run"]
    check = server.wait_run(check_id, timeout=300)
    assert check["status"] == "SUCCESS", check
    steps = [s["name"] for s in check["steps"]]
    for expected in ("check_new_training", "create_manifest", "train_model", "evaluate_model", "check_f1_gate",
                     "start_new_version", "switch_endpoint", "stop_previous_version", "record_trained_images"):
        assert expected in steps, (expected, steps)
    v1 = wait_for_serving(server, api, "v1")
    assert v1["f1"] >= 0.8 and v1["image_count"] == 10
    assert sorted(v1["labels"]) == ["amazon_logo", "aws_logo"]
    assert {m["label"] for m in v1["evaluation"]["per_label"]} == {"amazon_logo", "aws_logo"}
    listed = {o["key"] for o in api.get("/objects", params={"prefix": ""}).json()}
    assert {"manifests/v1.json", "evaluation/v1.json"} <= listed
    feed = api.get("/notifications", params={"limit": 100}).json()
    assert any(n["subject"].endswith("Status: RUNNING") and n["model_version"] == "v1" for n in feed)
    state = api.get("/parameters/For-System-Use-Only").json()["value"]
    assert '"previous_trained_images": 10' in state

    # 3. A training image sent for detection comes back with confidence ≥ 70.
    put(api, "images_for_detection/known.png", smile_logo(0))
    [known] = detections_for(api, ["images_for_detection/known.png"])
    assert known["label"] == "amazon_logo" and known["confidence"] >= 70
    assert known["model_version"] == "v1"
    # Silent-error control is on by default: a new version's confident detections are audited at first, as
    # extra "Human Sampling" loops; no "Detection" loop opens above the threshold.
    assert known["routing_rule"] in ("audit", "auto-accepted") and known["review_reason"], known
    if known["human_loop_name"] is not None:
        assert api.get(f"/human-loops/{known['human_loop_name']}").json()["source"] == "Human Sampling"

    # 4. Inference images, some of an unseen kind: the uncertain ones get human loops.
    images = ([unseen(i) for i in range(4)] + [blend(i) for i in range(4)] + [smile_logo(100 + i) for i in range(2)]
              + [box_logo(100 + i) for i in range(2)])
    inference = {f"images_for_detection/inference_{i}.png": data for i, data in enumerate(images)}
    for key, data in inference.items():
        put(api, key, data)
    events = detections_for(api, list(inference))
    open_loops = api.get("/human-loops", params={"status": "InProgress"}).json()
    loops = {loop["object_key"]: loop for loop in open_loops if loop["source"] == "Detection"}
    audits = {loop["object_key"] for loop in open_loops if loop["source"] == "Human Sampling"}
    for event in events:  # below the threshold exactly as the seed; audits only above it
        assert (event["object_key"] in loops) == (event["confidence"] < 70), event
        assert (event["routing_rule"] == "below-confidence") == (event["confidence"] < 70), event
        assert (event["object_key"] in audits) == (event["routing_rule"] == "audit"), event
    assert len(loops) >= 3, [(e["object_key"], e["confidence"]) for e in events]

    # 5. Answer them: labels (one new, configured in the task template) and None of the Above.
    template = api.put("/task-template", json={"extra_labels": ["other_logo"]}).json()
    assert template["label_choices"] == ["amazon_logo", "aws_logo", "other_logo"]
    names = [loops[key]["name"] for key in sorted(loops)]
    answers = {names[0]: "other_logo", names[1]: "None of the Above"}
    answers.update({name: "amazon_logo" for name in names[2:]})
    runs = {}
    for name, label in answers.items():
        response = api.post(f"/human-loops/{name}/answer", json={"label": label})
        assert response.status_code == 200, response.text
        runs[name] = response.json()["run_id"]
    again = api.post(f"/human-loops/{names[0]}/answer", json={"label": "aws_logo"})
    assert again.status_code == 409
    bad = api.post("/human-loops/" + names[0] + "/answer", json={"label": "../etc"})
    assert bad.status_code in (409, 422)
    for run_id in runs.values():
        assert server.wait_run(run_id)["status"] == "SUCCESS"
    for name, label in answers.items():
        loop = api.get(f"/human-loops/{name}").json()
        assert loop["status"] == "Completed" and loop["answer_label"] == label
        assert loop["output_key"].startswith("a2i-human-loop-data/")
        output = api.get(f"/objects/{loop['output_key']}").json()
        assert output["humanLoopName"] == name
        assert output["humanAnswers"][0]["answerContent"]["crowd-image-classifier"]["label"] == label
        original = loop["object_key"].rsplit("/", 1)[-1]
        if label == "None of the Above":  # no label copy; Learn-From-None-Of-The-Above (on) keeps a hidden-class one
            assert loop["copied_key"] is None
            assert loop["none_of_the_above_key"].startswith(f"images_none_of_the_above/humanLoopName-{name}-")
        else:
            assert loop["copied_key"].startswith(f"images_labeled_by_folder/{label}/humanLoopName-{name}-")
            assert loop["copied_key"].endswith(f"-{original}")
            assert api.get(f"/objects/{loop['copied_key']}").content == inference[loop["object_key"]]
    labeled = [o["key"] for o in api.get("/objects", params={"prefix": "images_labeled_by_folder/"}).json()]
    assert len(labeled) == 10 + len(names) - 1
    answered = {e["object_key"]: e for e in api.get("/detections", params={"answered": True}).json()}
    assert {answered[loops[k]["object_key"]]["human_label"] for k in loops} == set(answers.values())

    # 6. Ten more labeled images: the next check trains v2, which serves; v1 stops.
    for i in range(5):
        put(api, f"images_labeled_by_folder/amazon_logo/more_{i}.png", smile_logo(200 + i))
        put(api, f"images_labeled_by_folder/aws_logo/more_{i}.png", box_logo(200 + i))
    check = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
    assert check["output"]["train"] is True, check["output"]
    v2 = wait_for_serving(server, api, check["output"]["version"])
    assert v2["version"] == "v2" and v2["image_count"] == len(labeled) + 10
    assert api.get("/models/v1").json()["status"] == "STOPPED"
    # Nothing new: the next check does not train.
    idle = server.wait_run(api.post("/training/check").json()["run_id"])
    assert idle["output"]["train"] is False

    # 7. With silent-error control off (the seed's exact behaviour), sampling with interval 3 over 9 new
    # detections opens exactly 3 loops, not added to training.
    api.put("/parameters/Maximum-Silent-Error-Rate", json={"value": "0"})
    api.put("/parameters/Human-Sampling-Interval", json={"value": "3"})
    api.put("/parameters/Minimum-Label-Detection-Confidence", json={"value": "0"})
    keys = [f"images_for_detection/sample_{i}.png" for i in range(9)]
    for i, key in enumerate(keys):
        put(api, key, (smile_logo if i % 2 else box_logo)(300 + i))
    detections_for(api, keys)
    run = server.wait_run(api.post("/sampling/run").json()["run_id"])
    assert len(run["output"]["sampled"]) == 3 and len(run["output"]["opened"]) == 3
    again = server.wait_run(api.post("/sampling/run").json()["run_id"])
    assert again["output"]["sampled"] == []
    sampling = [loop for loop in api.get("/human-loops", params={"source": "Human Sampling"}).json()
                if loop["object_key"] in keys]
    assert len(sampling) == 3
    before = len(api.get("/objects", params={"prefix": "images_labeled_by_folder/"}).json())
    applying = [api.post(f"/human-loops/{loop['name']}/answer", json={"label": "amazon_logo"}).json()["run_id"]
                for loop in sampling]
    for run_id in applying:  # sent first, then waited for: their undo windows pass together
        assert server.wait_run(run_id)["status"] == "SUCCESS"
    after = len(api.get("/objects", params={"prefix": "images_labeled_by_folder/"}).json())
    assert after == before
    summary = api.get("/sampling/summary").json()
    assert summary["answers"] == 3 and 0 <= summary["agreement_rate"] <= 1


STAMPS = Path("/usr/share/tuxpaint/stamps")  # real photographs (Debian tuxpaint-stamps-default, `make test-images`)


def real_photos(folder: str, count: int) -> dict[str, bytes]:
    """The first ``count`` photo stamps of a Tux Paint folder (its cartoon drawings left out), by file name."""
    if not STAMPS.is_dir():
        if os.environ.get("LABELLOOP_REQUIRE_REAL_IMAGES") == "1":
            pytest.fail(f"{STAMPS} is missing: run `make test-images`")
        pytest.skip(f"{STAMPS} is missing: run `make test-images`")
    paths = sorted(p for p in (STAMPS / folder).rglob("*.png") if "cartoon" not in p.parts)[:count]
    return {p.name: p.read_bytes() for p in paths}


def test_training_images_come_back_confident_on_real_photos(server: Server) -> None:
    """The seed's step 3 on real photographs with the default parameters: 5 + 5 photos train v1, and each
    training image uploaded for detection comes back with its own label at ≥ 70 (no Detection loop)."""
    api = server.client()
    training = {}
    for folder, label in (("animals/birds", "bird"), ("animals/mammals", "mammal")):
        for name, data in real_photos(folder, 5).items():
            put(api, f"images_labeled_by_folder/{label}/{name}", data)
            training[f"images_for_detection/{label}-{name}"] = (label, data)
    check = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
    assert check["status"] == "SUCCESS", check
    wait_for_serving(server, api, "v1")
    for key, (_, data) in training.items():
        put(api, key, data)
    for event in detections_for(api, list(training)):
        assert event["label"] == training[event["object_key"]][0], event
        assert event["confidence"] >= 70 and event["routing_rule"] != "below-confidence", event
