"""The operator console in a real headless Chromium, against a server with a model serving and detections made:
dashboard, storage (upload a folder and files, see them listed, download, delete), parameters (a bad value and
its message, then a good one and the history), models (metrics, plot, ONNX, stop and deploy), runs (a training
run's graph and the path it took) and detections (filters, plots, CSV export). Roles: workers and consumers get
403; the upload endpoint wants the session and its CSRF header.

Every page visited is saved as ``test-output/screenshots/console-*.png`` and checked for sideways overflow at
1280×800 (and the main pages again at phone width).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from conftest import ADMIN_PASSWORD, Server, created_objects, server_env, wait_until
from images import blend, box_logo, smile_logo, unseen, upload_training_set
from web import DESKTOP, PHONE
from web import shot as save_shot

pytestmark = pytest.mark.timeout(420)

CONSOLE_PAGES = ("/dashboard", "/storage", "/parameters", "/models", "/runs", "/detections")


# ── fixtures ─────────────────────────────────────────────────────────────────


def detections_of(api: httpx.Client, keys: list[str]) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        events = {e["object_key"]: e for e in api.get("/detections", params={"limit": 1000}).json()}
        found = [events.get(key) for key in keys]
        return found if all(e and e["status"] == "DETECTED" for e in found) else None

    return wait_until(done, 120, 0.25, f"detections of {len(keys)} images")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with two versions trained (v2 serving), detections (some low-confidence with loops), and
    answered sampled loops."""
    server = Server(home=tmp_path_factory.mktemp("console") / "home", env=server_env()).start()
    try:
        with server.client() as api:
            for version, offset in (("v1", 0), ("v2", 5)):
                upload_training_set(api, 5, offset=offset)
                run = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
                assert run["status"] == "SUCCESS" and run["output"]["version"] == version, run
                wait_until(lambda v=version: api.get(f"/models/{v}").json()["status"] == "RUNNING", 120, 0.25,
                           f"{version} RUNNING")
            # Sample every 2nd detection from now on, then detect eight images.
            changed = api.put("/parameters/Human-Sampling-Interval", json={"value": "2"}).json()
            server.wait_run(changed["run_id"])
            images = [smile_logo(50), box_logo(50), blend(1), unseen(1), smile_logo(51), box_logo(51), blend(2),
                      unseen(2)]
            keys = [f"images_for_detection/console-{i}.png" for i in range(len(images))]
            for key, data in zip(keys, images, strict=True):
                assert api.put(f"/objects/{key}", content=data).status_code == 201
            detections_of(api, keys)
            sampled = server.wait_run(api.post("/sampling/run").json()["run_id"])
            assert sampled["status"] == "SUCCESS" and sampled["output"]["sampled"], sampled
            # A reviewer answers the sampled loops: one agrees with the model, the others do not.
            loops = api.get("/human-loops", params={"status": "InProgress", "source": "Human Sampling"}).json()
            applying = []
            for i, loop in enumerate(loops):
                label = loop["model_label"] if i == 0 else "None of the Above"
                answer = api.post(f"/human-loops/{loop['name']}/answer", json={"label": label})
                assert answer.status_code == 200, answer.text
                applying.append(answer.json()["run_id"])
            for run_id in applying:  # sent first, then waited for: their undo windows pass together
                server.wait_run(run_id)
            for name, role in (("wendy", "worker"), ("connie", "consumer"), ("otto", "operator")):
                created = api.post("/users", json={"username": name, "role": role, "password": f"{name}-password-1"})
                assert created.status_code == 201, created.text
        yield server
    finally:
        server.stop()


def sign_in(page: Page, server: Server, username: str, password: str, new_password: str | None = None) -> None:
    page.goto(f"{server.url}/sign-in")
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    if page.url.split("?")[0].endswith("/account/password"):
        page.fill("#current_password", password)
        page.fill("#new_password", new_password or password + "-own")
        page.fill("#confirm_password", new_password or password + "-own")
        with page.expect_navigation():
            page.click("button[type=submit]")


@pytest.fixture(scope="module")
def operator_context(console: Server, browser: Browser) -> Iterator[BrowserContext]:
    """A signed-in admin's browser (dialogs are accepted, as a person confirming would)."""
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    sign_in(page, console, "admin", ADMIN_PASSWORD)
    page.close()
    yield context
    context.close()


@pytest.fixture
def page(operator_context: BrowserContext) -> Iterator[Page]:
    page = operator_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    page.close()
    assert not errors, f"script errors on the page: {errors}"


def shot(page: Page, name: str) -> None:
    """A console screenshot (``console-NAME.png``), with the overflow check."""
    save_shot(page, f"console-{name}")


def images_loaded(page: Page, selector: str) -> bool:
    return page.evaluate(f"""() => [...document.querySelectorAll({selector!r})]
        .every(img => img.complete && img.naturalWidth > 0)""")


# ── pages ────────────────────────────────────────────────────────────────────


def test_dashboard_shows_the_loop_at_a_glance(console: Server, page: Page) -> None:
    api = console.client()
    page.goto(f"{console.url}/dashboard")
    assert page.inner_text("#serving-version") == "v2"
    v2 = api.get("/models/v2").json()
    assert page.inner_text("#serving-f1") == f"{v2['f1']:.3f}"
    # 20 images trained; none added since: 0 of Minimum-Untrained-Images.
    assert page.inner_text("#untrained-count").split()[:3] == ["0", "/", "10"]
    assert "0 new labeled image(s)" in page.inner_text("#training-decision")
    open_loops = len(api.get("/human-loops", params={"status": "InProgress"}).json())
    assert page.inner_text("#open-loops") == str(open_loops)
    schedules = page.inner_text("section[aria-labelledby=schedules-title]")
    assert "Training check" in schedules and "Human sampling" in schedules and "next 20" in schedules
    chart = page.locator("section[aria-labelledby=labels-title] svg.plot")
    assert chart.count() == 1 and "amazon_logo" in chart.inner_html() and "aws_logo" in chart.inner_html()
    assert page.locator(".run-list li").count() >= 5
    latest = api.get("/notifications", params={"limit": 1}).json()[0]
    assert latest["subject"].removeprefix("labelloop: ") in page.inner_text("#notifications li:first-child")
    shot(page, "01-dashboard")


def test_upload_a_folder_through_the_page_and_see_it_listed(console: Server, page: Page, tmp_path: Path) -> None:
    folder = tmp_path / "other_logo"
    folder.mkdir()
    for i in range(4):
        (folder / f"other_{i}.png").write_bytes(unseen(100 + i))
    (folder / ".DS_Store").write_bytes(b"finder junk")  # hidden files are left out

    page.goto(f"{console.url}/storage")
    names = page.locator("#folders a.folder").all_inner_texts()
    assert names == ["a2i-human-loop-data/", "evaluation/", "images_for_detection/", "images_labeled_by_folder/",
                     "manifests/"]
    shot(page, "02-storage-bucket")
    with page.expect_navigation():
        page.click("#folders a:has-text('images_labeled_by_folder/')")
    assert "Drop label folders here" in page.inner_text("#drop-zone")
    shot(page, "03-storage-labeled")

    # "Choose a folder…": the folder keeps its name, which becomes the label.
    with page.expect_navigation(url=re.compile(r"uploaded=4"), timeout=60000):
        page.set_input_files("#pick-folder", str(folder))
    assert page.inner_text("#upload-notice") == "4 files uploaded."
    row = page.locator("#folders tr", has=page.locator("a:has-text('other_logo/')"))
    assert row.locator("td").nth(1).inner_text() == "4"
    shot(page, "04-storage-folder-uploaded")
    with page.expect_navigation():
        page.click("#folders a:has-text('other_logo/')")
    assert page.inner_text("#folder-label") == "other_logo"
    assert page.locator("#objects .object").count() == 4
    wait_until(lambda: images_loaded(page, "#objects img"), 20, 0.2, "thumbnails")
    shot(page, "05-storage-label-folder")
    with console.client() as api:
        keys = {o["key"] for o in api.get("/objects", params={"prefix": "images_labeled_by_folder/other_logo/"}).json()}
        assert keys == {f"images_labeled_by_folder/other_logo/other_{i}.png" for i in range(4)}
        # Each upload fired its "object created" run, as an API upload does.
        runs = api.get("/runs", params={"branch": "Object Created", "limit": 200}).json()
        inputs = {c["key"]: c for r in runs for c in created_objects(r)}
        assert keys <= set(inputs)
        assert {inputs[key]["source"] for key in keys} == {"web"}

    # Download one; delete another (the page asks first).
    with page.expect_download() as download:
        page.locator(".object", has_text="other_0.png").locator("a:has-text('Download')").click()
    assert Path(download.value.path()).read_bytes() == unseen(100)
    assert download.value.suggested_filename == "other_0.png"
    with page.expect_navigation():
        page.click("button[aria-label='Delete other_3.png']")
    assert "Deleted other_3.png." in page.inner_text("main")
    assert page.locator("#objects .object").count() == 3


def test_drop_files_for_detection_and_loose_files_are_refused_at_the_label_root(console: Server, page: Page) -> None:
    page.goto(f"{console.url}/storage?prefix=images_for_detection/")
    files = [("dropped-a.png", smile_logo(70)), ("dropped-b.png", box_logo(70))]
    transfer = page.evaluate_handle("""(files) => {
        const transfer = new DataTransfer();
        for (const [name, bytes] of files) {
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
        }
        return transfer;
    }""", [[name, list(data)] for name, data in files])
    with page.expect_navigation(url=re.compile(r"uploaded=2"), timeout=60000):
        page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    listed = page.locator("#objects .object-name").all_inner_texts()
    assert {"dropped-a.png", "dropped-b.png"} <= set(listed)
    shot(page, "06-storage-dropped")
    with console.client() as api:
        events = detections_of(api, [f"images_for_detection/{name}" for name, _ in files])
        assert [e["label"] for e in events] == ["amazon_logo", "aws_logo"]

    # At images_labeled_by_folder/ itself a file needs a label folder: refused with the reason, nothing stored.
    page.goto(f"{console.url}/storage?prefix=images_labeled_by_folder/")
    transfer = page.evaluate_handle("""() => {
        const transfer = new DataTransfer();
        transfer.items.add(new File(["x"], "loose.png", { type: "image/png" }));
        return transfer;
    }""")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#upload-list li.failed")
    assert "needs a label folder" in page.inner_text("#upload-list")
    assert "0 uploaded, 1 not uploaded" in page.inner_text("#upload-summary")
    shot(page, "07-storage-refused")


def test_page_endpoints_want_the_session_and_its_csrf_token(console: Server) -> None:
    key = "images_for_detection/csrf-test.png"
    anonymous = httpx.put(f"{console.url}/storage/objects/{key}", content=smile_logo(1))
    assert anonymous.status_code == 401
    with signed_in_client(console, "admin", ADMIN_PASSWORD) as client:
        page = client.get("/storage?prefix=images_for_detection/")
        csrf = re.search(r'data-csrf="([^"]+)"', page.text).group(1)
        assert client.put(f"/storage/objects/{key}", content=smile_logo(1)).status_code == 403
        assert client.put(f"/storage/objects/{key}", content=smile_logo(1),
                          headers={"X-CSRF-Token": "wrong"}).status_code == 403
        bad_key = client.put("/storage/objects/images_for_detection/a\\b.png", content=b"x",
                             headers={"X-CSRF-Token": csrf})
        assert bad_key.status_code == 400 and "backslash" in bad_key.json()["detail"]
        stored = client.put(f"/storage/objects/{key}", content=smile_logo(1), headers={"X-CSRF-Token": csrf})
        assert stored.status_code == 201 and stored.json()["key"] == key
        refused = client.put("/storage/objects/images_labeled_by_folder/loose.png", content=smile_logo(1),
                             headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 422 and "label folder" in refused.json()["detail"]
        # Forms without their token are refused and change nothing.
        assert client.post("/storage/delete", data={"key": key}).status_code == 403
        assert client.post("/parameters/Minimum-F1-Score", data={"value": "0.5"}).status_code == 403
        assert client.post("/models/v2/stop", data={}).status_code == 403
        # The system's own parameter cannot be written from the page either.
        system = client.post("/parameters/For-System-Use-Only", data={"csrf_token": csrf, "value": "{}"})
        assert system.status_code == 422 and "written by the system only" in system.text
    with console.client() as api:
        assert api.get(f"/objects/{key}").status_code == 200
        assert api.get("/parameters/Minimum-F1-Score").json()["value"] == "0.8"
        assert api.get("/models/v2").json()["status"] == "RUNNING"


def test_bad_parameter_value_shows_the_message_then_a_good_one_shows_in_the_history(console: Server,
                                                                                     page: Page) -> None:
    api = console.client()
    page.goto(f"{console.url}/parameters")
    row = page.locator("#param-Minimum-Untrained-Images")
    assert "Labeled images that must be added" in row.inner_text()
    assert "a whole number ≥ 1" in row.inner_text()
    shot(page, "08-parameters")

    page.fill("#value-Minimum-Untrained-Images", "1,000")
    with page.expect_navigation():
        row.locator("button:has-text('Save')").click()
    message = page.inner_text("#error-Minimum-Untrained-Images")
    assert "Minimum-Untrained-Images must be a whole number ≥ 1; got '1,000'" in message
    assert page.input_value("#value-Minimum-Untrained-Images") == "1,000", "the bad value stays to be corrected"
    assert page.get_attribute("#value-Minimum-Untrained-Images", "aria-invalid") == "true"
    assert api.get("/parameters/Minimum-Untrained-Images").json()["value"] == "10", "nothing changed"
    shot(page, "09-parameters-bad-value")

    page.fill("#value-Minimum-F1-Score", "1.5")
    with page.expect_navigation():
        page.locator("#param-Minimum-F1-Score button:has-text('Save')").click()
    assert "must be a number from 0 to 1" in page.inner_text("#error-Minimum-F1-Score")

    page.fill("#value-Minimum-Untrained-Images", "12")
    with page.expect_navigation():
        page.locator("#param-Minimum-Untrained-Images button:has-text('Save')").click()
    notice = page.inner_text("#change-notice")
    assert "Minimum-Untrained-Images changed from 10 to 12 (version 2)" in notice
    assert page.locator(".field-error").count() == 0
    recent = page.locator("#history-table tbody tr").first.inner_text()
    assert "Minimum-Untrained-Images" in recent and "10 → 12" in recent and "admin" in recent
    shot(page, "10-parameters-changed")
    assert api.get("/parameters/Minimum-Untrained-Images").json()["value"] == "12"

    # The parameter's own page: its whole history; the change's run applied it.
    page.click("#param-Minimum-Untrained-Images a.param-name")
    rows = page.locator("#history-table tbody tr")
    assert rows.count() == 2
    assert "10 → 12" in rows.nth(0).inner_text() and "— → 10" in rows.nth(1).inner_text()
    shot(page, "11-parameter-history")
    run = console.wait_run("parameter-Minimum-Untrained-Images-v2")
    assert run["status"] == "SUCCESS"
    with page.expect_navigation():
        rows.nth(0).locator("a:has-text('open')").click()
    assert page.inner_text("h1").startswith("Parameter change")  # the run's name in the user's words
    assert page.get_attribute("a.state[data-state='notify_change']", "data-outcome") == "success"
    # Back to the default, so later checks see the loop as configured.
    assert api.put("/parameters/Minimum-Untrained-Images", json={"value": "10"}).status_code == 200


def test_open_a_training_run_graph_and_see_the_path_taken(console: Server, page: Page) -> None:
    page.goto(f"{console.url}/runs")
    page.select_option("#branch", "Training")
    with page.expect_navigation():
        page.click("#run-filters button[type=submit]")
    rows = page.locator("#runs tbody tr")
    assert rows.count() >= 1
    assert set(page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.branch)")) == {"Training"}
    shot(page, "12-runs-training")
    with page.expect_navigation():
        rows.last.locator("a").first.click()  # the first training run: it trained and deployed v1

    graph = page.locator("#graph svg")
    assert graph.is_visible()
    outcomes = dict(page.locator("a.state").evaluate_all(
        "nodes => nodes.map(n => [n.dataset.state, n.dataset.outcome])"))
    taken_path = ["start", "check_new_training", "notify_check", "should_train", "create_manifest", "train_model",
                  "trained", "evaluate_model", "check_f1_gate", "f1_passed", "start_new_version", "switch_endpoint",
                  "find_waiting_detections", "record_trained_images", "running"]
    for state in taken_path:
        assert outcomes[state] == "success", (state, outcomes)
    # Nothing served before v1 and nothing was waiting: passed without doing anything.
    assert outcomes["stop_previous_version"] == "skipped"
    assert outcomes["detect_waiting_image"] == "skipped"
    for state in ("no_training", "training_failed", "not_deployed"):
        assert outcomes[state] == "not-run"
    taken = page.locator("polyline.transition.taken").evaluate_all(
        "lines => lines.map(l => l.dataset.from + '>' + l.dataset.to)")
    assert "should_train>create_manifest" in taken and "should_train>no_training" not in taken
    assert "f1_passed>start_new_version" in taken and "record_trained_images>running" in taken
    assert len(taken) == len(taken_path) + 2 - 1
    shot(page, "13-run-graph")

    # Click a state: its step's input, output and timing show beside the graph.
    page.click("a.state[data-state='train_model']")
    detail = page.locator("#state-train_model")
    assert detail.is_visible()
    text = detail.inner_text()
    assert "train_model" in text and '"version": "v1"' in text and '"trained": true' in text and "Took" in text
    assert page.get_attribute("a.state[data-state='train_model']", "class").endswith("selected")
    assert page.url.endswith("#state-train_model")
    shot(page, "14-run-graph-step")
    page.click("a.state[data-state='should_train']")
    assert "Decided:" in page.inner_text("#state-should_train")
    assert not detail.is_visible()

    # A detection run: the Object Created machine, detection side (the run that detected console-2.png, with
    # the uploads that arrived beside it).
    runs = console.client().get("/runs", params={"branch": "Object Created", "limit": 200}).json()
    run_id = next(r["id"] for r in runs if "images_for_detection/console-2.png" in (r["object_keys"] or []))
    page.goto(f"{console.url}/runs?branch=Object+Created")
    page.locator(f"#runs tbody tr a[href='/runs/{run_id}']").first.click()
    page.wait_for_selector("#graph svg")
    assert "images_for_detection/console-2.png" in page.inner_text("#run-objects")
    outcomes = dict(page.locator("a.state").evaluate_all(
        "nodes => nodes.map(n => [n.dataset.state, n.dataset.outcome])"))
    assert outcomes["detect_image"] == "success" and outcomes["training_data"] == "not-run"
    shot(page, "15-run-graph-detection")


def follow_notice_run(console: Server, page: Page) -> str:
    """The run linked from the page's notice, once it has finished successfully."""
    run_id = page.locator("p.notice a:has-text('Follow the run')").get_attribute("href").rsplit("/", 1)[-1]
    assert console.wait_run(run_id)["status"] == "SUCCESS"
    return run_id


def statuses(api: httpx.Client) -> dict[str, str]:
    return {m["version"]: m["status"] for m in api.get("/models").json()}


def test_models_page_metrics_plot_export_roll_back_stop_and_deploy(console: Server, page: Page) -> None:
    api = console.client()
    page.goto(f"{console.url}/models")
    v1, v2 = page.locator("#versions tr[data-version='v1']"), page.locator("#versions tr[data-version='v2']")
    assert "RUNNING" in v2.inner_text() and "STOPPED" in v1.inner_text()
    assert f"{api.get('/models/v2').json()['f1']:.3f}" in v2.inner_text()
    assert v1.locator("button:has-text('Roll back')").count() == 1 and v2.locator("button:has-text('Stop')").count()
    plot = page.locator("section[aria-labelledby=f1-title] svg.plot")
    assert "Minimum-F1-Score 0.8" in plot.inner_html() and plot.locator("circle").count() == 2
    shot(page, "16-models")

    with page.expect_navigation():  # count() does not wait: the model page must have loaded first
        page.click("#versions a:has-text('v1')")
    per_label = page.locator("#per-label tbody tr")
    assert per_label.count() == 2 and "amazon_logo" in per_label.nth(0).inner_text()
    assert page.locator("#confusion tbody tr").count() == 2
    assert page.locator("#confusion td.diagonal").count() == 2
    shot(page, "17-model-v1")
    with page.expect_download(timeout=120000) as download:
        page.click(".model-actions a:has-text('ONNX')")
    assert download.value.suggested_filename == "labelloop-model-v1.onnx"
    assert Path(download.value.path()).stat().st_size > 1_000_000

    # Roll back to v1 (blue-green: v2 serves until v1 is warm), then deploy v2 again; each a run.
    with page.expect_navigation():
        page.click(".model-actions button:has-text('Roll back')")
    assert "Rolling back to v1" in page.inner_text("main")
    run_id = follow_notice_run(console, page)
    wait_until(lambda: statuses(api) == {"v1": "RUNNING", "v2": "STOPPED"}, 60, 0.25, "v1 back, v2 stopped")
    page.goto(f"{console.url}/runs/{run_id}")
    outcomes = dict(page.locator("a.state").evaluate_all(
        "nodes => nodes.map(n => [n.dataset.state, n.dataset.outcome])"))
    assert outcomes["switch_endpoint"] == "success" and outcomes["stop_previous_version"] == "success"
    shot(page, "18-run-graph-roll-back")
    page.goto(f"{console.url}/models/v2")
    with page.expect_navigation():
        page.click(".model-actions button:has-text('Deploy')")
    assert "Deploying v2" in page.inner_text("main")
    follow_notice_run(console, page)
    wait_until(lambda: statuses(api) == {"v1": "STOPPED", "v2": "RUNNING"}, 60, 0.25, "v2 serving again")

    # Stop: nothing serves; deploy again so the checks after this one have a model.
    page.goto(f"{console.url}/models/v2")
    with page.expect_navigation():
        page.click(".model-actions button:has-text('Stop')")
    assert "Stopping v2" in page.inner_text("main")
    follow_notice_run(console, page)
    page.goto(f"{console.url}/models/v2")
    assert page.inner_text("#model-status") == "STOPPED"
    assert page.locator(".model-actions button:has-text('Stop')").count() == 0
    with page.expect_navigation():
        page.click(".model-actions button:has-text('Deploy')")
    follow_notice_run(console, page)
    assert statuses(api)["v2"] == "RUNNING"


def test_detections_filters_plots_and_csv_export(console: Server, page: Page) -> None:
    api = console.client()
    page.goto(f"{console.url}/detections")
    everything = api.get("/detections", params={"limit": 1000}).json()
    assert page.inner_text("#matched") == str(len(everything))
    plots = page.locator("svg.plot")
    assert plots.count() == 3
    assert plots.nth(0).locator("rect").count() >= 2, "the confidence histogram has bars"
    assert "minimum 70" in plots.nth(0).inner_html()
    assert "amazon_logo" in plots.nth(1).inner_html(), "detections per label per day"
    assert plots.nth(2).locator("circle").count() >= 1, "agreement over time"
    summary = api.get("/sampling/summary").json()
    assert f"{summary['agreements']} of {summary['answers']} sampled answers" in page.inner_text(
        "section[aria-labelledby=agree-title]")
    shot(page, "19-detections")

    # Filter: one label, a confidence range; then the export has exactly those rows.
    page.select_option("#f-label", "amazon_logo")
    page.fill("#f-min", "50")
    page.fill("#f-max", "100")
    with page.expect_navigation():
        page.click("#detection-filters button[type=submit]")
    wanted = api.get("/detections", params={"label": "amazon_logo", "min_confidence": 50, "max_confidence": 100,
                                            "limit": 1000}).json()
    assert wanted and page.locator("#detections tbody tr").count() == len(wanted)
    assert {row.split("\t")[2] for row in page.locator("#detections tbody tr").all_inner_texts()} == {"amazon_logo"}
    shot(page, "20-detections-filtered")
    with page.expect_download() as download:
        page.click("#export-csv")
    assert download.value.suggested_filename == "detections.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [int(r["id"]) for r in rows] == [e["id"] for e in wanted]
    assert {r["label"] for r in rows} == {"amazon_logo"} and all(float(r["confidence"]) >= 50 for r in rows)
    columns = list(rows[0])
    assert columns[:19] == ["id", "request_id", "created_at", "detected_at", "object_key", "etag", "status",
                            "model_version", "label", "confidence", "threshold", "human_review_enabled", "sampled",
                            "human_loop_name", "human_label", "human_worker", "human_answered_at", "routing_rule",
                            "review_reason"]
    # Then the seed's DynamoDB column names, as aliases (its analytics keep working).
    assert {"DetectLabelRequestId", "S3ObjectKey", "DetectedConfidenceLevel", "HumanLabel"} <= set(columns[19:])
    assert all(r["S3ObjectKey"] == r["object_key"] and r["routing_rule"] for r in rows)

    # Sampled and answered: the sampled loops' detections.
    page.goto(f"{console.url}/detections?sampled=yes&answer=answered")
    sampled = api.get("/detections", params={"sampled": True, "answered": True, "limit": 1000}).json()
    assert sampled and page.locator("#detections tbody tr").count() == len(sampled)
    # Each row says which rule routed it and why; the log filters by that rule (the API too, refusing a bad one).
    routed = next(e for e in api.get("/detections", params={"limit": 1000}).json() if e["routing_rule"])
    page.goto(f"{console.url}/detections?rule={routed['routing_rule']}")
    cell = page.inner_text(f"#detections tbody tr[data-id='{routed['id']}'] td.routing")
    assert routed["routing_rule"] in cell and " ".join(routed["review_reason"].split()) in " ".join(cell.split())
    same = api.get("/detections", params={"routing_rule": routed["routing_rule"], "limit": 1000}).json()
    assert {e["routing_rule"] for e in same} == {routed["routing_rule"]}
    assert page.locator("#detections tbody tr").count() == len(same)
    assert api.get("/detections", params={"routing_rule": "whoever"}).status_code == 422
    # A bad confidence is explained next to the field, and ignored.
    page.goto(f"{console.url}/detections?min_confidence=abc")
    assert "A confidence is a number from 0 to 100." in page.inner_text("#detection-filters")
    assert page.inner_text("#matched") == str(len(api.get("/detections", params={"limit": 1000}).json()))


def test_console_pages_at_phone_width(console: Server, operator_context: BrowserContext, browser: Browser) -> None:
    phone = browser.new_context(viewport=PHONE, storage_state=operator_context.storage_state())
    page = phone.new_page()
    try:
        for path in CONSOLE_PAGES:
            assert page.goto(f"{console.url}{path}").status == 200
            shot(page, f"30-phone{path.replace('/', '-')}")
        runs = console.client().get("/runs", params={"branch": "Training", "limit": 100}).json()
        page.goto(f"{console.url}/runs/{runs[-1]['id']}")
        page.click("a.state[data-state='evaluate_model']")
        assert page.locator("#state-evaluate_model").is_visible()
        shot(page, "31-phone-run-graph")
        # The model page: its wide charts keep a readable size and scroll sideways inside their figure.
        assert page.goto(f"{console.url}/models/v2").status == 200
        widths = page.eval_on_selector_all("figure.chart svg.plot.wide", "plots => plots.map(p => p.clientWidth)")
        assert widths and min(widths) >= 480, widths
        shot(page, "32-phone-model")
        # A batch of uploads' run: its objects listed, its one step's time shown once in the graph.
        batch = console.client().get("/runs", params={"branch": "Detection", "limit": 100}).json()
        assert page.goto(f"{console.url}/runs/{batch[-1]['id']}").status == 200
        assert "Objects" in page.inner_text("main")
        assert page.locator("svg.state-machine text", has_text="same step").count() >= 1
        shot(page, "33-phone-upload-batch-run")
    finally:
        phone.close()


# ── roles ────────────────────────────────────────────────────────────────────


@contextmanager
def signed_in_client(server: Server, username: str, password: str) -> Iterator[httpx.Client]:
    """A cookie-keeping client signed in through the sign-in form (changing a temporary password on the way)."""
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=True) as client:
        sign_in_client(client, username, password)
        yield client


def sign_in_client(client: httpx.Client, username: str, password: str) -> None:
    page = client.get("/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    signed = client.post("/sign-in", data={"username": username, "password": password, "csrf_token": csrf})
    assert signed.status_code == 200, signed.text
    if signed.url.path == "/account/password":
        token = re.search(r'name="csrf_token" value="([^"]+)"', signed.text).group(1)
        changed = client.post("/account/password", data={
            "csrf_token": token, "current_password": password, "new_password": password + "-own",
            "confirm_password": password + "-own"})
        assert changed.status_code == 200, changed.text


def test_workers_and_consumers_get_403_and_operators_get_in(console: Server) -> None:
    runs = console.client().get("/runs", params={"limit": 1}).json()
    paths = [*CONSOLE_PAGES, "/storage?prefix=images_labeled_by_folder/", "/parameters/Minimum-F1-Score",
             "/models/v1", f"/runs/{runs[0]['id']}", "/detections/export.csv",
             "/storage/thumbnail/images_labeled_by_folder/amazon_logo/amazon_logo_0.png",
             "/storage/download/images_labeled_by_folder/amazon_logo/amazon_logo_0.png"]
    for username in ("wendy", "connie"):
        with signed_in_client(console, username, f"{username}-password-1") as client:
            for path in paths:
                response = client.get(path)
                assert response.status_code == 403, (username, path, response.status_code)
                assert "Your role may not open this page." in response.text
            assert 'href="/dashboard"' not in client.get("/account").text, "no console links for them"
            page = client.get("/account")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            refused = client.post("/parameters/Minimum-F1-Score", data={"csrf_token": csrf, "value": "0.5"})
            assert refused.status_code == 403
            upload = client.put("/storage/objects/images_for_detection/role.png", content=smile_logo(2),
                                headers={"X-CSRF-Token": csrf})
            assert upload.status_code == 403
    assert console.client().get("/parameters/Minimum-F1-Score").json()["value"] == "0.8"
    with signed_in_client(console, "otto", "otto-password-1") as client:
        for path in paths:
            assert client.get(path).status_code == 200, path
        assert 'href="/dashboard"' in client.get("/dashboard").text
    # Not signed in: off to sign in first, and back afterwards.
    response = httpx.get(f"{console.url}/parameters", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/sign-in?next=/parameters"
