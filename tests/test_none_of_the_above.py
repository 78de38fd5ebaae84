"""Learn-From-None-Of-The-Above through the server: a None of the Above answer on a Detection loop keeps its
image under images_none_of_the_above/ (never in images_labeled_by_folder/), a correction moves that copy, the
next version trains it as the hidden class, and the hidden class shows nowhere in the API. Off: nothing changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from conftest import Server, server_env
from images import unseen
from test_review_answers import applied, keys_under, serve_two_labels
from test_web_portal import detection_loops, set_parameter

pytestmark = pytest.mark.timeout(600)
NOTA = "None of the Above"
HIDDEN = "<none of the above>"
OPTION = "Learn-From-None-Of-The-Above"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a model serving on two labels and every detection sent to review (no undo window)."""
    server = Server(home=tmp_path_factory.mktemp("nota") / "home", env=server_env(LABELLOOP_UNDO_SECONDS="0")).start()
    try:
        with server.client() as api:
            serve_two_labels(server, api)
            set_parameter(server, api, "Minimum-Untrained-Images", "1")
        yield server
    finally:
        server.stop()


def answer_none_of_the_above(server: Server, images: dict[str, bytes]) -> list[dict]:
    """Detection loops for `images`, each answered None of the Above by the operator; the applied loops."""
    with server.client() as api:
        loops = detection_loops(api, images)
        for name in loops:
            assert api.post(f"/human-loops/{name}/answer", json={"label": NOTA}).status_code == 200
        return [applied(api, name) for name in loops]


def test_none_of_the_above_answers_train_a_hidden_class_only_with_the_option(server: Server) -> None:
    api = server.client()
    assert api.get(f"/parameters/{OPTION}").json()["value"] == "true", "on by default"
    set_parameter(server, api, OPTION, "false")
    [off] = answer_none_of_the_above(server, {"images_for_detection/nota-off.png": unseen(1)})
    assert off["copied_key"] is None and off["none_of_the_above_key"] is None
    assert keys_under(api, "images_none_of_the_above/") == set()

    set_parameter(server, api, OPTION, "true")
    loops = answer_none_of_the_above(server, {f"images_for_detection/nota-{i}.png": unseen(10 + i) for i in range(3)})
    assert all(loop["copied_key"] is None for loop in loops), "None of the Above adds nothing to the label folders"
    copies = {loop["none_of_the_above_key"] for loop in loops}
    assert all(key.startswith("images_none_of_the_above/humanLoopName-") for key in copies), copies
    assert keys_under(api, "images_none_of_the_above/") == copies
    assert not [k for k in keys_under(api, "images_labeled_by_folder/") if "humanLoopName-" in k]
    for loop in loops:
        copy = api.get(f"/objects/{loop['none_of_the_above_key']}").content
        assert copy == api.get(f"/objects/{loop['object_key']}").content

    moved = loops[0]["name"]  # a correction moves the one copy to the label's folder, and back
    for label, folder, field in (("aws_logo", "images_labeled_by_folder/aws_logo/", "copied_key"),
                                 (NOTA, "images_none_of_the_above/", "none_of_the_above_key")):
        server.wait_run(api.post(f"/human-loops/{moved}/correct", json={"label": label}).json()["run_id"])
        key = applied(api, moved)[field]
        assert key.startswith(folder)
        everywhere = keys_under(api, "images_labeled_by_folder/") | keys_under(api, "images_none_of_the_above/")
        assert [k for k in everywhere if f"humanLoopName-{moved}-" in k] == [key]
    assert keys_under(api, "images_none_of_the_above/") == {applied(api, loop["name"])["none_of_the_above_key"]
                                                          for loop in loops}

    run = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
    assert run["status"] == "SUCCESS", run
    [latest] = [m for m in api.get("/models").json() if m["version"] == "v2"]
    assert latest["labels"] == ["amazon_logo", "aws_logo"], latest
    manifest = json.loads(api.get(f"/objects/{latest['manifest_key']}").content)
    hidden = {e["key"]: e for e in manifest["images"] if e["label"] == HIDDEN}
    assert set(hidden) == keys_under(api, "images_none_of_the_above/") and len(hidden) == 3
    assert {e["split"] for e in hidden.values()} == {"train"}, "the hidden class trains, never tests"
    shown = json.dumps([api.get("/models/v2").json(), api.get("/models").json(), api.get("/task-template").json(),
                        api.get("/detections", params={"limit": 1000}).json()])
    assert HIDDEN not in shown and "none_of_the_above/" not in json.dumps(api.get("/task-template").json())

    set_parameter(server, api, OPTION, "false")  # off: the copies stay, unused
    check = server.wait_run(api.post("/training/check").json()["run_id"])
    assert check["output"]["none_of_the_above_images"] == 0 and check["output"]["train"] is False, check["output"]
    api.close()
