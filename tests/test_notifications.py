"""Notifications reach the in-app feed, a real SMTP server on loopback and a real HTTP webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from conftest import Server, free_port, wait_until

NOTIFIED_FIELDS = ("event_type", "subject", "status", "run_id", "link")


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


class Receiver:
    """A real HTTP server in a thread that keeps the JSON bodies POSTed to it and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.headers.append(dict(self.headers))
                receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if receiver.status < 400 else b"receiver is broken")

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def inbox() -> Iterator[tuple[list[tuple[list[str], EmailMessage]], int]]:
    """A real SMTP server on loopback: (the messages it received, its port)."""
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler.messages, port
    controller.stop()


@pytest.fixture
def receivers() -> Iterator[Callable[[int], Receiver]]:
    started: list[Receiver] = []

    def make(status: int = 200) -> Receiver:
        started.append(Receiver(status))
        return started[-1]

    yield make
    for receiver in started:
        receiver.close()


def notifying_server(make_server: Callable[..., Server], smtp_port: int, *webhooks: Receiver) -> Server:
    return make_server(LABELLOOP_SMTP_HOST="127.0.0.1", LABELLOOP_SMTP_PORT=str(smtp_port),
                       LABELLOOP_NOTIFY_EMAIL="ops@example.test,ml@example.test",
                       LABELLOOP_WEBHOOK_URLS=",".join(hook.url for hook in webhooks))


def change(server: Server, name: str, value: str) -> dict[str, Any]:
    """Change a parameter and wait for the run that applies it."""
    with server.client() as api:
        response = api.put(f"/parameters/{name}", json={"value": value})
    assert response.status_code == 200, response.text
    assert response.json()["changed"] is True
    run = server.wait_run(response.json()["run_id"])
    assert run["status"] == "SUCCESS", run
    return run


def feed(server: Server) -> list[dict[str, Any]]:
    with server.client() as api:
        response = api.get("/notifications")
    assert response.status_code == 200, response.text
    return response.json()


def test_parameter_change_notifies_feed_email_and_webhook(make_server, inbox, receivers) -> None:
    mails, smtp_port = inbox
    hook = receivers(200)
    server = notifying_server(make_server, smtp_port, hook)

    run = change(server, "Minimum-Untrained-Images", "25")

    notes = wait_until(lambda: feed(server), message="a notification in the feed")
    assert len(notes) == 1
    note = notes[0]
    assert note["event_type"] == "parameter.changed"
    assert note["run_id"] == run["id"]
    assert "Minimum-Untrained-Images" in note["subject"] and "25" in note["subject"]
    assert "from 10 to 25" in note["message"] and "admin" in note["message"]
    assert note["link"] == f"{server.url}/runs/{run['id']}", "the link must point at the server that sent it"

    wait_until(lambda: mails and hook.bodies, message="the email and the webhook")
    assert len(mails) == 1, [m.get("Subject") for _, m in mails]
    recipients, mail = mails[0]
    assert sorted(recipients) == ["ml@example.test", "ops@example.test"]
    assert mail["Subject"] == note["subject"]
    assert mail["From"] == "labelloop@localhost"
    text = mail.get_content()
    assert note["message"] in text and note["link"] in text

    assert len(hook.bodies) == 1
    posted = hook.bodies[0]
    assert {k: posted[k] for k in NOTIFIED_FIELDS} == {k: note[k] for k in NOTIFIED_FIELDS}
    assert posted["id"] == note["id"] and posted["message"] == note["message"]
    assert hook.headers[0]["Content-Type"].startswith("application/json")

    assert note["deliveries"]["feed"] == "stored"
    assert note["deliveries"]["email"] == "sent to 2 address(es)"
    assert note["deliveries"][f"webhook {hook.url}"] == "HTTP 200"


def test_toggling_automatic_training_gives_three_notifications(make_server, inbox, receivers) -> None:
    """The seed's walkthrough: false then true = two parameter changes and one training check."""
    mails, smtp_port = inbox
    hook = receivers(200)
    server = notifying_server(make_server, smtp_port, hook)

    change(server, "Enable-Automatic-Training", "false")
    switched_on = change(server, "Enable-Automatic-Training", "true")
    check_run = server.wait_run(switched_on["output"]["training_check_run"])
    assert check_run["status"] == "SUCCESS" and check_run["branch"] == "Training"

    notes = wait_until(lambda: (found := feed(server)) and len(found) >= 3 and found, message="three notifications")
    assert [n["event_type"] for n in reversed(notes)] == ["parameter.changed", "parameter.changed",
                                                         "training.checked"]
    oldest, newest_change, check = reversed(notes)
    assert "= false" in oldest["subject"] and "= true" in newest_change["subject"]
    assert newest_change["run_id"] == switched_on["id"]
    assert check["run_id"] == check_run["id"] and check["status"] == "TRAINING_CHECKED"

    wait_until(lambda: len(mails) >= 3 and len(hook.bodies) >= 3, message="three emails and three webhook calls")
    assert sorted(m["Subject"] for _, m in mails) == sorted(n["subject"] for n in notes)
    assert sorted(b["run_id"] for b in hook.bodies) == sorted(n["run_id"] for n in notes)
    assert len(mails) == 3 and len(hook.bodies) == 3


def test_failing_webhook_does_not_stop_the_run_or_the_other_channels(make_server, inbox, receivers) -> None:
    mails, smtp_port = inbox
    broken, working = receivers(500), receivers(200)
    server = notifying_server(make_server, smtp_port, broken, working)

    run = change(server, "Minimum-F1-Score", "0.9")

    assert [s["error"] for s in run["steps"]] == [None] * len(run["steps"])
    note = wait_until(lambda: feed(server), message="a notification")[0]
    assert note["run_id"] == run["id"]
    assert len(broken.bodies) == 1, "the broken receiver was called once"
    assert len(working.bodies) == 1 and working.bodies[0]["run_id"] == run["id"]
    assert len(mails) == 1 and mails[0][1]["Subject"] == note["subject"]
    assert note["deliveries"]["email"] == "sent to 2 address(es)"
    assert note["deliveries"][f"webhook {working.url}"] == "HTTP 200"
    failure = note["deliveries"][f"webhook {broken.url}"]
    assert failure.startswith("failed") and "500" in failure

    # The server keeps notifying after the failure.
    change(server, "Minimum-F1-Score", "0.85")
    wait_until(lambda: len(feed(server)) == 2 and len(mails) == 2, message="the second notification")
