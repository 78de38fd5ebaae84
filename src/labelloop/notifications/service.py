"""Notifications: one message shape for every branch, stored in the feed and sent to each channel."""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.config import get_settings
from labelloop.notifications import channels
from labelloop.notifications.models import Notification

log = logging.getLogger(__name__)


def run_link(run_id: str | None) -> str | None:
    """The address of a run's page."""
    if not run_id:
        return None
    return f"{get_settings().public_url.rstrip('/')}/runs/{run_id}"


def as_dict(note: Notification) -> dict[str, Any]:
    """A notification as the API, webhooks and pages show it."""
    return {
        "id": note.id, "created_at": note.created_at, "event_type": note.event_type,
        "subject": note.subject, "message": note.message, "object_key": note.object_key,
        "model_version": note.model_version, "label": note.label, "confidence": note.confidence,
        "status": note.status, "run_id": note.run_id, "link": run_link(note.run_id),
        "deliveries": note.deliveries or {},
    }


def _body(fields: dict[str, Any]) -> str:
    lines = [fields["message"], ""]
    for name in ("event_type", "object_key", "model_version", "label", "confidence", "status", "link"):
        if fields.get(name) is not None:
            lines.append(f"{name.replace('_', ' ').capitalize()}: {fields[name]}")
    return "\n".join(lines)


def notify(event_type: str, subject: str, message: str, *, object_key: str | None = None,
           model_version: str | None = None, label: str | None = None, confidence: float | None = None,
           status: str | None = None, run_id: str | None = None, dedupe_key: str | None = None) -> int:
    """Record a notification in the feed and deliver it to every configured channel; returns its id.

    ``dedupe_key`` makes a retried workflow step notify once. A channel that fails is logged and its
    error kept on the notification; the feed entry and the other channels are not affected.
    """
    fields = {"object_key": object_key, "model_version": model_version, "label": label,
              "confidence": confidence, "status": status, "run_id": run_id, "dedupe_key": dedupe_key}
    try:
        with db.session() as session:
            stored = record(event_type, subject, message, session=session, **fields)
    except IntegrityError:  # the same step, retried elsewhere, stored it a moment ago
        with db.session() as session:
            stored = recorded(_existing(dedupe_key, session=session))
    return deliver_recorded(stored)


class Recorded(NamedTuple):
    """A notification written in a transaction: its id, and its fields while it still awaits delivery."""

    id: int
    undelivered: dict[str, Any] | None


def record(event_type: str, subject: str, message: str, *, session: Session, dedupe_key: str | None = None,
           new: bool = False, **fields: Any) -> Recorded:
    """Store a notification in the caller's transaction (once per ``dedupe_key``: an ``IntegrityError`` at the
    commit means another execution stored it a moment ago). ``new``: the caller knows none was stored under
    the key (it wrote what the notification reports in this transaction), so it is not looked up. With no
    channel configured the feed is its only delivery, written with the row; otherwise pass the answer to
    :func:`deliver_recorded` after the commit."""
    note = stage(event_type, subject, message, session=session, dedupe_key=dedupe_key, new=new, **fields)
    if note.id is None:
        session.add(note)
        session.flush()
    return recorded(note)


def stage(event_type: str, subject: str, message: str, *, session: Session, dedupe_key: str | None = None,
          new: bool = False, **fields: Any) -> Notification:
    """:func:`record` without writing: the one stored under ``dedupe_key``, or a new notification not added to
    the session (its id None), which :func:`write_staged` writes with the rest of a batch in one INSERT; then
    :func:`recorded` gives its answer. A batch of detections writes all its rows at its end, so SQLite's write
    lock is taken there, not at its first image."""
    note = None if new else _existing(dedupe_key, session=session)
    if note is None:
        note = Notification(event_type=event_type, subject=subject[:300], message=message, dedupe_key=dedupe_key,
                            created_at=db.utcnow(),
                            deliveries={} if _channels(get_settings()) else {"feed": "stored"}, **fields)
    return note


def write_staged(notes: list[Notification], *, session: Session) -> None:
    """Write the new notifications among ``notes`` (from :func:`stage`) in one executemany INSERT, in their order,
    each given its id (matched by its dedupe key: one statement for the batch, not one per row)."""
    db.insert_all(session, [note for note in notes if note.id is None], ids=True, key="dedupe_key")


def recorded(note: Notification) -> Recorded:
    """What :func:`deliver_recorded` needs of a notification :func:`stage` added, once it is flushed."""
    return Recorded(note.id, None if note.deliveries else as_dict(note))


def deliver_recorded(recorded: Recorded) -> int:
    """Deliver a notification :func:`record` stored, if it awaits delivery, and keep how each channel took it;
    returns its id."""
    if recorded.undelivered is not None:
        deliveries = deliver(recorded.undelivered)
        with db.session() as session:
            session.get(Notification, recorded.id).deliveries = deliveries
    return recorded.id


def _channels(settings: Any) -> bool:
    """Whether any channel beside the feed is configured (email or a webhook)."""
    return bool((settings.smtp_host and settings.notify_email) or settings.webhook_urls)


def _existing(dedupe_key: str | None, *, session: Session) -> Notification | None:
    if not dedupe_key:
        return None
    return session.scalar(select(Notification).where(Notification.dedupe_key == dedupe_key))


def deliver(fields: dict[str, Any]) -> dict[str, Any]:
    """Send one notification to email and webhooks; returns what happened on each channel."""
    settings = get_settings()
    results: dict[str, Any] = {"feed": "stored"}
    payload = json.loads(json.dumps(fields, default=str))
    if settings.smtp_host and settings.notify_email:
        results["email"] = _attempt("email", fields, lambda: channels.send_email(
            settings, fields["subject"], _body(fields)))
    for url in settings.webhook_urls:
        results[f"webhook {url}"] = _attempt(f"webhook {url}", fields,
                                             lambda url=url: channels.post_webhook(settings, url, payload))
    return results


def _attempt(channel: str, fields: dict[str, Any], send: Any) -> str:
    try:
        outcome = send()
    except Exception as exc:  # a failing channel must not stop the loop; the error is logged and kept
        log.error("notification delivery failed", extra={"channel": channel, "notification": fields["id"],
                                                           "event_type": fields["event_type"],
                                                           "error": repr(exc)})
        return f"failed: {exc!r}"
    log.info("notification delivered", extra={"channel": channel, "notification": fields["id"],
                                              "event_type": fields["event_type"]})
    return outcome


def feed(*, session: Session, limit: int = 100, event_type: str | None = None,
         after_id: int | None = None) -> list[Notification]:
    """The newest notifications first."""
    query = select(Notification).order_by(Notification.id.desc()).limit(limit)
    if event_type:
        query = query.where(Notification.event_type == event_type)
    if after_id is not None:
        query = query.where(Notification.id > after_id)
    return list(session.scalars(query))
