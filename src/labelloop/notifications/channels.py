"""Delivery channels beyond the in-app feed: SMTP email and JSON webhooks."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

import httpx

from labelloop.config import Settings


def send_email(settings: Settings, subject: str, body: str) -> str:
    """Send one email to every configured address; returns a short delivery note."""
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = ", ".join(settings.notify_email)
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP(settings.smtp_host or "localhost", settings.smtp_port, timeout=15) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password or "")
        smtp.send_message(message)
    return f"sent to {len(settings.notify_email)} address(es)"


def post_webhook(settings: Settings, url: str, payload: dict[str, Any]) -> str:
    """POST ``payload`` as JSON to ``url``; a non-2xx answer raises."""
    response = httpx.post(url, json=payload, timeout=settings.webhook_timeout_seconds,
                          headers={"User-Agent": "labelloop"})
    response.raise_for_status()
    return f"HTTP {response.status_code}"
