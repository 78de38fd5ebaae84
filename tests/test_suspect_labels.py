"""Suspect training labels end to end: listed with the version (API, model page with thumbnails) and sent to
human review as "Label Audit" loops by one operator action (API and page button)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from conftest import ADMIN_PASSWORD, Server, server_env, wait_until
from images import smile_logo, upload_training_set
from test_console_web import images_loaded, sign_in
from web import DESKTOP

pytestmark = pytest.mark.timeout(600)
MISLABELED = [f"images_labeled_by_folder/aws_logo/misfiled_{i}.png" for i in range(2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """v1 trained on 8 images per logo, plus two amazon logos filed under aws_logo/."""
    server = Server(home=tmp_path_factory.mktemp("suspects") / "home", env=server_env()).start()
    with server.client() as api:
        upload_training_set(api, 8)
        for i, key in enumerate(MISLABELED):
            assert api.put(f"/objects/{key}", content=smile_logo(100 + i)).status_code == 201
        run = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
        assert run["status"] == "SUCCESS" and run["output"]["version"] == "v1", run
    yield server
    server.stop()


def test_the_version_lists_its_suspect_labels(trained: Server) -> None:
    with trained.client() as api:
        suspects = api.get("/models/v1/suspect-labels").json()
        evaluation = api.get("/models/v1").json()["evaluation"]
    assert {s["key"] for s in suspects} == set(MISLABELED), suspects
    assert all(s["label"] == "aws_logo" and s["predicted"] == "amazon_logo" and s["confidence"] >= 70
               for s in suspects)
    assert evaluation["suspect_labels"] == suspects
    with trained.client() as api:
        assert api.get("/models/v9/suspect-labels").status_code == 404


def test_the_model_page_shows_them_and_sends_them_to_review(trained: Server, browser: Browser) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, trained, "admin", ADMIN_PASSWORD)
    page.goto(f"{trained.url}/models/v1")
    rows = page.locator("#suspects tbody tr")
    assert rows.count() == 2
    assert "amazon_logo" in rows.first.inner_text() and "aws_logo" in rows.first.inner_text()
    wait_until(lambda: images_loaded(page, "#suspects img"), 20, 0.2, "suspect thumbnails")
    with page.expect_navigation():
        page.click("#send-suspects")
    assert "2 Label Audit loop(s) opened" in page.inner_text("#audit-notice")
    context.close()
    with trained.client() as api:
        loops = api.get("/human-loops", params={"status": "InProgress", "source": "Label Audit"}).json()
        assert sorted(loop["object_key"] for loop in loops) == sorted(MISLABELED)
        assert all(loop["model_label"] == "aws_logo" and loop["detection_id"] is None for loop in loops)
        again = api.post("/models/v1/label-audit")  # the API action: nothing opened twice
    assert again.status_code == 200, again.text
    assert again.json()["opened"] == [] and again.json()["already_open"] == 2
