"""A new user's first hour against a real server: landing per role, uploads that say what happened to each
file (non-images refused by content, unchanged re-uploads), re-detection, the training check's outcome, the
live training progress, honest F1 figures, and CLI tables that keep ids whole."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import LABELLOOP, Server, server_env, wait_until
from images import box_logo, smile_logo, unseen, upload_training_set

pytestmark = pytest.mark.timeout(600)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n"


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with v1 trained on 5 + 5 logos, serving."""
    server = Server(home=tmp_path_factory.mktemp("first-hour") / "home", env=server_env()).start()
    try:
        with server.client() as api:
            upload_training_set(api, 5)
            run = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
            assert run["status"] == "SUCCESS" and run["output"]["version"] == "v1", run
            wait_until(lambda: api.get("/models/v1").json()["status"] == "RUNNING", 120, 0.25, "v1 RUNNING")
        yield server
    finally:
        server.stop()


def browser_client(server: Server, username: str, password: str) -> httpx.Client:
    """A cookie-keeping client signed in through the sign-in form."""
    client = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/sign-in").text).group(1)
    signed_in = client.post("/sign-in", data={"username": username, "password": password, "csrf_token": token})
    assert signed_in.status_code == 303, signed_in.text[:300]
    return client


def user(server: Server, name: str, role: str) -> str:
    """A user of ``role`` with a password of their own (no temporary one); returns the password."""
    with server.client() as api:
        created = api.post("/users", json={"username": name, "role": role, "password": f"{name}-pass-1"})
        assert created.status_code == 201, created.text
        with server.client(server.token(name, f"{name}-pass-1")) as own:
            own.post("/auth/password", json={"current_password": f"{name}-pass-1", "new_password": f"{name}-pass-2"})
    return f"{name}-pass-2"


def cli(server: Server, tmp_path: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**server_env(), "LABELLOOP_SERVER": server.url, "LABELLOOP_TOKEN": server.token(),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": str(columns), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([*LABELLOOP, *args], env=env, capture_output=True, text=True, timeout=240, check=False)


def detected(api: httpx.Client, keys: list[str]) -> dict[str, dict[str, Any]]:
    def done() -> dict[str, dict[str, Any]] | None:
        events = {}
        for event in sorted(api.get("/detections", params={"limit": 1000}).json(), key=lambda e: e["id"]):
            if event["previous_event_id"] is None:
                events[event["object_key"]] = event
        return events if all(events.get(k, {}).get("status") == "DETECTED" for k in keys) else None

    return wait_until(done, 120, 0.25, f"detections of {keys}")


# ── landing ──────────────────────────────────────────────────────────────────


def test_root_sends_each_visitor_home_and_consumers_get_their_api_page(first: Server) -> None:
    anonymous = httpx.get(f"{first.url}/")
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/sign-in"
    icon = httpx.get(f"{first.url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\0\0\1\0"  # an ICO file
    homes = {"fh-worker": ("worker", "/review"), "fh-consumer": ("consumer", "/account/api"),
             "fh-operator": ("operator", "/dashboard")}
    for name, (role, home) in homes.items():
        with closing(browser_client(first, name, user(first, name, role))) as browser:
            assert browser.get("/").headers["location"] == home, role
    with closing(browser_client(first, "fh-consumer", "fh-consumer-pass-2")) as consumer:
        page = consumer.get("/account/api")
        assert page.status_code == 200
        assert f"{first.url}/api/v1/detect" in page.text and "-F file=@photo.jpg" in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        created = consumer.post("/account/api/tokens", data={"csrf_token": csrf, "name": "script", "days": "30"})
        assert created.status_code == 201
        token = re.search(r'value="(llp_[^"]+)"', created.text).group(1)
    with first.client(token) as api:  # the token from the page is the consumer's own
        assert api.get("/me").json()["username"] == "fh-consumer"
        answer = api.post("/detect", files={"file": ("x.png", smile_logo(30))})
        assert answer.status_code == 200 and answer.json()["labels"][0]["name"] == "amazon_logo"


# ── uploads say what happened ─────────────────────────────────────────────────


def test_non_images_are_refused_by_content_in_both_event_folders(first: Server) -> None:
    with first.client() as api:
        for key in ("images_labeled_by_folder/aws_logo/renamed.png", "images_for_detection/renamed.png"):
            refused = api.put(f"/objects/{key}", content=PDF)
            assert refused.status_code == 415 and "PDF" in refused.json()["detail"], refused.text
        text = api.put("/objects/images_for_detection/notes.jpg", content=b"just some words")
        assert text.status_code == 415 and "not a recognised image" in text.json()["detail"]
        stored = {o["key"] for o in api.get("/objects", params={"prefix": "images_"}).json()}
        assert not {"images_labeled_by_folder/aws_logo/renamed.png", "images_for_detection/renamed.png"} & stored
        # Elsewhere in the bucket any file may go.
        assert api.put("/objects/manifests/notes.pdf", content=PDF).status_code == 201
        # Nothing was counted as training data: still the 10 images v1 trained on.
        assert api.get("/models/v1").json()["image_count"] == 10


def test_the_same_bytes_again_change_nothing_and_say_how_to_detect_again(first: Server) -> None:
    with first.client() as api:
        key = "images_for_detection/again/same.png"
        created = api.put(f"/objects/{key}", content=box_logo(31))
        assert created.status_code == 201 and not created.json()["unchanged"] and created.json()["run_id"]
        again = api.put(f"/objects/{key}", content=box_logo(31))
        assert again.status_code == 200, again.text
        body = again.json()
        assert body["unchanged"] is True and body["run_id"] == created.json()["run_id"]
        assert "nothing changed" in body["message"] and "re-detect" in body["message"]


def test_redetect_makes_new_events_that_point_to_the_earlier_ones(first: Server) -> None:
    keys = ["images_for_detection/redo/a.png", "images_for_detection/redo/b.png"]
    with first.client() as api:
        for key, data in zip(keys, (smile_logo(32), unseen(32)), strict=True):
            stored = api.put(f"/objects/{key}", content=data)
            assert stored.status_code == 201
            first.wait_run(stored.json()["run_id"], timeout=120)  # detected, its human loop opened or not
        earlier = detected(api, keys)
        refused = api.post("/detections/redetect", json={"keys": ["images_labeled_by_folder/aws_logo/"]})
        assert refused.status_code == 400 and "images_for_detection" in refused.json()["detail"]
        started = api.post("/detections/redetect", json={"keys": ["images_for_detection/redo/"]})
        assert started.status_code == 202, started.text
        assert started.json()["images"] == 2
        run = first.wait_run(started.json()["run_id"])
        assert run["status"] == "SUCCESS" and run["output"]["model_version"] == "v1" and run["output"]["queued"] == 2
        for child in run["output"]["runs"]:
            assert first.wait_run(child)["status"] == "SUCCESS"
        events = api.get("/detections", params={"limit": 1000}).json()
        again = {e["object_key"]: e for e in events if e["previous_event_id"] is not None and e["object_key"] in keys}
        assert sorted(again) == keys
        for key in keys:
            assert again[key]["previous_event_id"] == earlier[key]["id"]
            assert again[key]["status"] == "DETECTED" and again[key]["model_version"] == "v1"
            assert again[key]["human_loop_name"] == earlier[key]["human_loop_name"], "no second review of an image"

        # The Detection branch holds every detection run (uploads, re-detections); each says so.
        detection = api.get("/runs", params={"branch": "Detection", "limit": 500}).json()
        names = {r["name"] for r in detection}
        assert {"object_created", "redetect_images", "detect_image_again"} <= names
        assert {r["branch"] for r in detection} == {"Detection"}
        assert {"Detect uploaded image", "Re-detect images", "Re-detect image"} <= {r["title"] for r in detection}
        training = api.get("/runs", params={"branch": "Training data", "limit": 500}).json()
        assert training and {r["branch"] for r in training} == {"Training data"}
        assert {r["title"] for r in training} == {"Training image added"}


# ── the CLI ──────────────────────────────────────────────────────────────────


def test_cli_upload_lists_each_file_and_tables_keep_ids_whole(first: Server, tmp_path: Path) -> None:
    folder = tmp_path / "cli-detect"
    folder.mkdir()
    (folder / "logo.png").write_bytes(smile_logo(33))
    (folder / "report.png").write_bytes(PDF)
    result = cli(first, tmp_path, "upload", str(folder), "--to", "images_for_detection/")
    assert result.returncode == 1  # one file refused
    out = " ".join(result.stdout.split())
    assert "images_for_detection/cli-detect/logo.png: stored · amazon_logo" in out, result.stdout
    assert "report.png" in result.stderr and "415" in result.stderr and "PDF" in result.stderr
    again = cli(first, tmp_path, "upload", str(folder / "logo.png"), "--to", "images_for_detection/cli-detect/")
    assert "unchanged" in again.stdout and "labelloop redetect" in again.stdout

    runs = cli(first, tmp_path, "runs", "list", "--limit", "20", columns=60)
    assert runs.returncode == 0, runs.stderr
    with first.client() as api:
        ids = [r["id"] for r in api.get("/runs", params={"limit": 20}).json()]
    assert all(run_id in runs.stdout for run_id in ids), runs.stdout  # not one id cut, even at 60 columns
    params = cli(first, tmp_path, "params", "list", columns=60)
    assert "Automatic-Human-Sampling-Frequency" in params.stdout and "…" not in params.stdout

    loops_help = cli(first, tmp_path, "loops", "--help", columns=120)
    assert all(command in loops_help.stdout for command in ("list", "answer", "stop", "template"))
    every = cli(first, tmp_path, "loops", "list", "--status", "all", "--json")
    assert every.returncode == 0, every.stderr
    bogus = cli(first, tmp_path, "loops", "list", "--status", "bogus")
    assert bogus.returncode == 1 and "all" in bogus.stderr
    redo = cli(first, tmp_path, "redetect", "images_for_detection/cli-detect/logo.png")
    assert redo.returncode == 0, redo.stderr
    assert "Re-detected 1 image(s) with v1" in redo.stdout and "amazon_logo" in redo.stdout


def test_training_check_wait_prints_the_outcome_and_the_dashboard_shows_progress(first: Server,
                                                                                  tmp_path: Path) -> None:
    nothing = cli(first, tmp_path, "training", "check", "--wait")
    assert nothing.returncode == 0, nothing.stderr
    assert "No training:" in nothing.stdout and "needed" in nothing.stdout

    with first.client() as api:
        upload_training_set(api, 5, offset=5)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        with closing(browser_client(first, "admin", "admin-password-for-tests")) as browser:
            while not stop.is_set():
                found = browser.get("/dashboard/training-progress").json()
                if found["training"]:
                    seen.append(found)
                stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        trained = cli(first, tmp_path, "training", "check", "--wait")
    finally:
        stop.set()
        watcher.join()
    assert trained.returncode == 0, trained.stderr
    words = " ".join(trained.stdout.split())
    assert "Trained v2: F1" in words and "test image(s), 95 % interval" in words, words
    assert seen, "the training's progress was readable while it trained"
    assert {s["version"] for s in seen} == {"v2"}
    assert all(s["total"] == 20 for s in seen if s["phase"] != "writing the manifest"), seen
    assert {s["phase"] for s in seen} & {"starting", "embedding", "fitting", "evaluating", "training on all images"}
    model = first.client().get("/models/v2").json()
    evaluation = model["evaluation"]
    low, high = evaluation["f1_interval"]
    assert low <= model["f1"] <= high and "Wilson" in evaluation["interval_method"]
    assert model["test_images"] == sum(m["support"] for m in evaluation["per_label"])


def test_serve_ends_its_start_up_with_one_banner(tmp_path: Path) -> None:
    env = {k: v for k, v in server_env().items() if k != "LABELLOOP_ADMIN_PASSWORD"}
    server = Server(home=tmp_path / "home", env=env).start(timeout=180)
    try:
        wait_until(lambda: "Stop      Ctrl+C" in server.log_path.read_text(), 30, 0.2, "the banner")
        log = server.log_path.read_text()
        lines = log.splitlines()
        start = next(i for i, line in enumerate(lines) if "labelloop" in line and "is running." in line)
        banner = lines[start - 1:start + 8]
        assert banner[0].startswith("─") and f"Open      http://127.0.0.1:{server.port}/" in banner[2]
        password = re.search(r"user admin, temporary password (\S+)", "\n".join(banner)).group(1)
        assert server.token("admin", password)  # the admin's temporary password, shown once, works
    finally:
        server.stop()
    assert f"Data      {server.home}" in log and f"Bucket    {server.home / 'bucket'}" in log
    # Migrations and the workflow engine's start-up chatter stayed at debug level.
    before = "\n".join(lines[:start])
    assert "Applying DBOS" not in before and "database migrated" not in before and "Uvicorn running" not in log
