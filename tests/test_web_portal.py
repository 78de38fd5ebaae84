"""The web pages in a real headless Chromium: an admin creates a worker, the worker changes the temporary
password and labels tasks with the keyboard, and the answers land in the bucket; leases and the task image.

Every page the browser visits is saved under ``test-output/screenshots/`` and checked for sideways overflow,
at 1280×800 and at phone width (390×844).
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from PIL import Image
from playwright.sync_api import Browser, Page

from conftest import ADMIN_PASSWORD, Server, free_port, server_env, wait_until
from images import box_logo, encode, smile_logo
from labelloop.review.service import copy_key
from web import DESKTOP, PHONE, shot

pytestmark = pytest.mark.timeout(300)

NOTA = "None of the Above"


# ── fixtures: SMTP inbox, a server with a model serving, a browser ───────────


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler, port = Inbox(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory, inbox: tuple[Inbox, int]) -> Iterator[Server]:
    """A server with SMTP configured and a model serving (trained on two labels)."""
    env = server_env(LABELLOOP_SMTP_HOST="127.0.0.1", LABELLOOP_SMTP_PORT=str(inbox[1]),
                     LABELLOOP_UNDO_SECONDS="15")  # time for a browser under load to press "u"
    server = Server(home=tmp_path_factory.mktemp("portal") / "home", env=env).start()
    try:
        with server.client() as api:
            for i in range(5):
                assert api.put(f"/objects/images_labeled_by_folder/amazon_logo/a{i}.png",
                               content=smile_logo(i)).status_code == 201
                assert api.put(f"/objects/images_labeled_by_folder/aws_logo/b{i}.png",
                               content=box_logo(i)).status_code == 201
            run = server.wait_run(api.post("/training/check").json()["run_id"], timeout=240)
            assert run["status"] == "SUCCESS", run
            wait_until(lambda: any(m["status"] == "RUNNING" for m in api.get("/models").json()), 120, 0.25,
                       "a model RUNNING")
            api.put("/task-template", json={"extra_labels": ["other_logo"]}).raise_for_status()
            set_parameter(server, api, "Minimum-Label-Detection-Confidence", "100")  # every detection gets a loop
        yield server
    finally:
        server.stop()


# ── helpers ──────────────────────────────────────────────────────────────────


def uncertain(seed: int) -> bytes:
    """Half one class, half the other: the model is unsure (confidence < 100), so the image gets a loop."""
    left = Image.open(io.BytesIO(smile_logo(seed))).convert("RGB")
    left.paste(Image.open(io.BytesIO(box_logo(seed))).convert("RGB").crop((80, 0, 160, 160)), (80, 0))
    return encode(left)


def stop_open_loops(api: httpx.Client) -> None:
    """Stop loops other tests left open, so each test sees only its own tasks."""
    for loop in api.get("/human-loops", params={"status": "InProgress"}).json():
        api.post(f"/human-loops/{loop['name']}/stop")


def set_parameter(server: Server, api: httpx.Client, name: str, value: str) -> None:
    response = api.put(f"/parameters/{name}", json={"value": value})
    assert response.status_code == 200, response.text
    if response.json()["run_id"] is not None:  # None: the value was already set, nothing runs
        server.wait_run(response.json()["run_id"])


def detection_loops(api: httpx.Client, images: dict[str, bytes]) -> dict[str, str]:
    """Upload images for detection (every one gets a loop: the confidence threshold is 100); loop name → key."""
    for key, data in images.items():
        assert api.put(f"/objects/{key}", content=data).status_code == 201

    def opened() -> dict[str, str] | None:
        events = {e["object_key"]: e for e in api.get("/detections", params={"limit": 1000}).json()}
        found = [events.get(key) for key in images]
        if all(e and e["human_loop_name"] for e in found):
            return {e["human_loop_name"]: e["object_key"] for e in found}
        return None

    return wait_until(opened, 60, 0.2, f"human loops for {list(images)}")


def sampling_loop(server: Server, api: httpx.Client, key: str) -> str:
    """A "Human Sampling" loop for a confident detection of a new image."""
    set_parameter(server, api, "Minimum-Label-Detection-Confidence", "0")
    set_parameter(server, api, "Human-Sampling-Interval", "1")
    assert api.put(f"/objects/{key}", content=smile_logo(77)).status_code == 201
    wait_until(lambda: any(e["object_key"] == key and e["status"] == "DETECTED"
                           for e in api.get("/detections", params={"limit": 1000}).json()), 60, 0.2, "detection")
    server.wait_run(api.post("/sampling/run").json()["run_id"])
    [loop] = [loop for loop in api.get("/human-loops", params={"source": "Human Sampling"}).json()
              if loop["object_key"] == key]
    set_parameter(server, api, "Minimum-Label-Detection-Confidence", "100")
    return loop["name"]


def sign_in(page: Page, username: str, password: str) -> None:
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("button[type=submit]:has-text('Sign in')")


# ── the walkthrough in a browser ─────────────────────────────────────────────


def test_admin_creates_worker_who_labels_tasks_with_the_keyboard(portal: Server, browser: Browser,
                                                                  inbox: tuple[Inbox, int]) -> None:
    api = portal.client()
    stop_open_loops(api)
    sampled = sampling_loop(portal, api, "images_for_detection/web-sampled.png")
    wanted = {"images_for_detection/web-1.png": "amazon_logo", "images_for_detection/web-2.png": "aws_logo",
              "images_for_detection/web-3.png": "other_logo"}
    loops = detection_loops(api, {key: uncertain(4 + i) for i, key in enumerate(wanted)})
    answers = {name: wanted[key] for name, key in loops.items()} | {sampled: NOTA}

    # The admin signs in, creates a team and a worker in it, and reads the portal's sign-in URL.
    admin_context = browser.new_context(viewport=DESKTOP)
    admin = admin_context.new_page()
    admin.goto(f"{portal.url}/workforce")
    assert admin.url.startswith(f"{portal.url}/sign-in?next=/workforce")
    shot(admin, "01-sign-in")
    sign_in(admin, "admin", ADMIN_PASSWORD)
    assert admin.url == f"{portal.url}/workforce"
    portal_url = admin.input_value("#portal-url")
    assert portal_url == f"{portal.url}/review"
    shot(admin, "02-workforce")
    admin.click("nav.tabs >> text=Teams")
    admin.fill("#team-name", "Reviewers")
    admin.fill("#team-description", "People who label images")
    with admin.expect_navigation():
        admin.click("button:has-text('Create team')")
    assert admin.locator("section h2", has_text="Reviewers").count() == 1
    admin.click("nav.tabs >> text=Users")
    admin.fill("#new-username", "wanda")
    admin.fill("#new-email", "wanda@example.com")
    admin.select_option("#new-role", "worker")
    admin.select_option("#new-team", "Reviewers")
    with admin.expect_navigation():
        admin.click("button:has-text('Create user')")
    temporary = admin.inner_text("#secret-value").strip()
    assert len(temporary) >= 10
    assert "emailed to wanda@example.com" in admin.inner_text("main")
    shot(admin, "03-user-created")
    [(_recipients, email)] = [m for m in inbox[0].messages if "wanda@example.com" in m[0]]
    assert temporary in email.get_content() and portal_url in email.get_content()
    admin.goto(f"{portal.url}/workforce")
    row = admin.locator("tr", has_text="wanda")
    assert "Reviewers" in row.inner_text() and "temporary password" in row.inner_text()
    shot(admin, "04-workforce-with-user")
    admin.goto(f"{portal.url}/workforce/teams")
    assert "wanda" in admin.locator("section", has_text="Reviewers").inner_text()
    shot(admin, "05-teams")

    # The worker opens the portal URL, signs in with the temporary password and must change it.
    worker_context = browser.new_context(viewport=DESKTOP)
    worker = worker_context.new_page()
    worker.goto(portal_url)
    assert "/sign-in" in worker.url
    sign_in(worker, "wanda", temporary)
    assert worker.url.startswith(f"{portal.url}/account/password")
    shot(worker, "06-choose-password")
    worker.goto(f"{portal.url}/review/work")
    assert worker.url.startswith(f"{portal.url}/account/password"), "a temporary password must be changed first"
    worker.fill("#current_password", temporary)
    worker.fill("#new_password", "wanda-own-password")
    worker.fill("#confirm_password", "wanda-own-password")
    with worker.expect_navigation():
        worker.click("button:has-text('Save password')")
    assert worker.url.startswith(f"{portal.url}/review")
    assert "password is changed" in worker.inner_text("main")
    assert worker.locator("#tasks-left strong").inner_text() == str(len(answers))
    assert worker.locator("a[href^='/workforce']").count() == 0
    shot(worker, "07-portal")

    # Start working: one task at a time, answered with the keyboard; the count goes down.
    with worker.expect_navigation():
        worker.click("#start-working")
    seen = []
    for index in range(len(answers)):
        name = worker.get_attribute(".task", "data-task")
        assert name in answers and name not in seen, name
        seen.append(name)
        assert worker.locator("#tasks-left strong").inner_text() == str(len(answers) - index)
        worker.wait_for_function("() => document.getElementById('task-image').naturalWidth > 0")
        if name == sampled:
            assert worker.locator(".guess").count() == 0, "sampling tasks must not show the model's guess"
        else:
            assert "Model's guess" in worker.inner_text(".answer-panel")
        choices = worker.locator("button.choice").all_inner_texts()
        assert [re.sub(r"\s+", " ", c).strip() for c in choices] == [
            "1 amazon_logo", "2 aws_logo", "3 other_logo", f"0 {NOTA}"]
        button = worker.locator(f"button.choice[value='{answers[name]}']")
        key = button.get_attribute("data-key")
        if index == 2:
            worker.set_viewport_size(PHONE)
            shot(worker, "09-task-phone")
        worker.keyboard.press(key)
        assert "selected" in (button.get_attribute("class") or "")
        if index == 0:
            worker.keyboard.press("+")
            assert worker.inner_text("#zoom-level") == "150%"
            shot(worker, "08-task-zoomed")
            worker.keyboard.press("-")
            worker.click("summary:has-text('Full instructions')")
            assert worker.locator(".full-instructions .prose").is_visible()
            shot(worker, "08-task")
        with worker.expect_navigation():
            worker.keyboard.press("Enter")
        assert f"Saved: {answers[name]}" in worker.inner_text("main")
        if index == 0:  # "u" takes the answer back: the same task again, then answered again
            with worker.expect_navigation():
                worker.keyboard.press("u")
            assert worker.get_attribute(".task", "data-task") == name
            assert "Answer taken back" in worker.inner_text("main")
            worker.keyboard.press(key)
            with worker.expect_navigation():
                worker.keyboard.press("Enter")
            assert f"Saved: {answers[name]}" in worker.inner_text("main")
    worker.set_viewport_size(DESKTOP)
    assert worker.inner_text("h1") == "No tasks left"
    shot(worker, "10-no-tasks-left")

    # A worker cannot open the admin pages: 403, and no link to them.
    response = worker.goto(f"{portal.url}/workforce")
    assert response.status == 403
    assert worker.locator("a[href^='/workforce']").count() == 0
    shot(worker, "11-forbidden")
    assert worker.goto(f"{portal.url}/workforce/users/admin").status == 403

    # A form sent without its CSRF token is refused and changes nothing.
    worker.goto(f"{portal.url}/account")
    shot(worker, "12-account")
    worker.evaluate("() => document.querySelector('form[action=\"/sign-out\"] input[name=csrf_token]').remove()")
    with worker.expect_navigation():
        worker.click("button:has-text('Sign out')")
    assert worker.inner_text("h1") == "Not allowed"
    assert "security token" in worker.inner_text("main")
    shot(worker, "13-csrf-refused")
    refused = worker.request.post(f"{portal.url}/account/password", form={
        "current_password": "wanda-own-password", "new_password": "x" * 12, "confirm_password": "x" * 12})
    assert refused.status == 403
    assert worker.goto(f"{portal.url}/review").status == 200, "the session survives the refused forms"

    # The same pages at phone width.
    phone_context = browser.new_context(viewport=PHONE)
    phone = phone_context.new_page()
    phone.goto(f"{portal.url}/sign-in")
    shot(phone, "20-phone-sign-in")
    sign_in(phone, "admin", ADMIN_PASSWORD)
    shot(phone, "21-phone-workforce")
    phone.goto(f"{portal.url}/workforce/users/wanda")
    phone.fill("#token-name", "wanda's script")
    with phone.expect_navigation():
        phone.click("button:has-text('Create token')")
    token = phone.inner_text("#secret-value").strip()
    assert token.startswith("llp_")
    shot(phone, "22-phone-token-created")
    phone.goto(f"{portal.url}/workforce/users/wanda")
    shot(phone, "22-phone-user")
    assert httpx.get(f"{portal.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with phone.expect_navigation():
        phone.click("button[aria-label=\"Revoke token wanda's script\"]")
    assert httpx.get(f"{portal.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert "The token is revoked." in phone.inner_text("main")
    phone.goto(f"{portal.url}/workforce/teams")
    shot(phone, "23-phone-teams")
    phone.goto(f"{portal.url}/review")
    shot(phone, "24-phone-portal")
    admin.goto(f"{portal.url}/workforce/users/wanda")
    shot(admin, "14-user")
    for context in (admin_context, worker_context, phone_context):
        context.close()

    # The answers are recorded, and each labeled image is in the bucket under its label's folder (named
    # humanLoopName-<loop>-<uuid>-<original name>); None of the Above adds nothing.
    labeled = "images_labeled_by_folder/"

    def copied() -> set[str] | None:
        keys = {o["key"] for o in api.get("/objects", params={"prefix": labeled}).json()}
        wanted_keys = {copy_key(name, loops[name], label) for name, label in answers.items() if label != NOTA}
        return keys if wanted_keys <= keys else None

    keys = wait_until(copied, 60, 0.2, "labeled copies in the bucket")
    for name, label in answers.items():
        loop = api.get(f"/human-loops/{name}").json()
        assert loop["status"] == "Completed" and loop["answer_label"] == label and loop["answered_by"] == "wanda"
        mine = [key for key in keys if key.rsplit("/", 1)[-1].startswith(f"humanLoopName-{name}-")]
        if label == NOTA:
            assert mine == []
            continue
        [key] = mine
        assert key.startswith(f"{labeled}{label}/") and key.endswith("-" + loops[name].rsplit("/", 1)[-1])
        assert api.get(f"/objects/{key}").content == api.get(f"/objects/{loops[name]}").content


# ── leases and the task image, over plain HTTP ───────────────────────────────


def web_client(server: Server, username: str, password: str) -> httpx.Client:
    """A cookie-keeping client signed in through the sign-in form (changing a temporary password on the way)."""
    client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=True)
    page = client.get("/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    signed = client.post("/sign-in", data={"username": username, "password": password, "csrf_token": csrf})
    assert signed.status_code == 200, signed.text
    if signed.url.path == "/account/password":
        token = re.search(r'name="csrf_token" value="([^"]+)"', signed.text).group(1)
        changed = client.post("/account/password", data={
            "csrf_token": token, "current_password": password, "new_password": password + "-own",
            "confirm_password": password + "-own"})
        assert changed.status_code == 200 and changed.url.path == "/review", changed.text
    return client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def take_task(client: httpx.Client) -> httpx.Response:
    """*Start working*: lease a task (POST) and follow to the page showing it."""
    return client.post("/review/work", data={"csrf_token": csrf_of(client.get("/review").text)})


def test_two_workers_never_get_the_same_task_and_only_the_holder_sees_its_image(portal: Server) -> None:
    api = portal.client()
    stop_open_loops(api)
    for name in ("lease1", "lease2"):
        assert api.post("/users", json={"username": name, "role": "worker",
                                         "password": "lease-password"}).status_code == 201
    loops = detection_loops(api, {f"images_for_detection/lease-{i}.png": uncertain(7 + i) for i in range(2)})
    one, two = web_client(portal, "lease1", "lease-password"), web_client(portal, "lease2", "lease-password")
    assert "data-task" not in one.get("/review/work").text, "a GET never leases a task"
    first, second = take_task(one), take_task(two)
    task1 = re.search(r'data-task="([^"]+)"', first.text).group(1)
    task2 = re.search(r'data-task="([^"]+)"', second.text).group(1)
    assert {task1, task2} == set(loops) and task1 != task2
    assert re.search(r'data-task="([^"]+)"', take_task(one).text).group(1) == task1, "a lease is kept"

    image = one.get(f"/review/tasks/{task1}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert image.content == api.get(f"/objects/{loops[task1]}").content
    assert two.get(f"/review/tasks/{task1}/image").status_code == 403
    assert httpx.get(f"{portal.url}/review/tasks/{task1}/image").status_code in (303, 307)

    # Answering someone else's held task is refused; your own goes through and the next one comes.
    stolen = two.post(f"/review/tasks/{task1}", data={"csrf_token": csrf_of(second.text), "label": "aws_logo"})
    assert "another reviewer" in stolen.text
    assert api.get(f"/human-loops/{task1}").json()["status"] == "InProgress"
    answered = one.post(f"/review/tasks/{task1}", data={"csrf_token": csrf_of(first.text), "label": "amazon_logo"})
    assert answered.url.path == "/review/work" and "Saved: <strong>amazon_logo</strong>" in answered.text
    assert "No tasks left" in answered.text, "the only other task is held by the second worker"
    # Stop working gives the held task back, and the first worker gets it.
    two.post("/review/stop", data={"csrf_token": csrf_of(second.text)})
    assert re.search(r'data-task="([^"]+)"', take_task(one).text).group(1) == task2
    for client in (one, two):
        client.close()
