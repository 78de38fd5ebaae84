"""Bucket routes: put, get, list and delete objects; S3 event notifications for uploads made to the bucket.

``PUT /api/v1/objects/{key}`` from a caller whose token was verified in the last seconds is answered by
:class:`PutFastPath`, a pure-ASGI layer before FastAPI's routing and dependencies (README Performance, item 26);
every other PUT (an unknown token, a key the route refuses, a body over the limit) reaches :func:`put_object`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from labelloop.config import get_settings
from labelloop.loop import actions
from labelloop.storage import service
from labelloop.storage.backends.s3 import NotificationError, parse_notification
from labelloop.storage.models import DETECTION_FOLDER, ObjectInfo
from labelloop.web.before_routing import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    answer_error,
    declared_over,
    header,
    read_body,
    replay,
)
from labelloop.web.dependencies import remembered_caller, require, require_recent
from labelloop.workforce.models import Role, User

log = logging.getLogger(__name__)
router = APIRouter()
objects = APIRouter(prefix="/api/v1/objects", tags=["storage"])
events = APIRouter(prefix="/api/v1/events", tags=["storage"])
MAX_NOTIFICATION_BYTES = 5 * 1024 * 1024
Operator = Depends(require(Role.OPERATOR))
# The PUT is hot (the upload pipeline): a token verified in the last seconds skips the database and 4 thread hops.
UPLOADERS = (Role.OPERATOR, Role.CONSUMER)
Uploader = Depends(require_recent(*UPLOADERS))


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the upload is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the upload is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@objects.put("/{key:path}", response_model=ObjectInfo, status_code=201,
             responses={200: {"model": ObjectInfo, "description": "The same bytes were already stored: unchanged"}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_object(key: str, request: Request, user: User = Uploader) -> Response:
    """Store the raw request body at ``key``; under an event folder this starts an "object created" run.

    Under images_for_detection/ and images_labeled_by_folder/ only images are taken (by content, not name):
    anything else gets 415 with the reason. The same bytes again: 200 with ``unchanged`` and a message."""
    service.validate_key(key)
    if not may_upload(user, key):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"consumers may only upload under {DETECTION_FOLDER}")
    data = await read_limited(request, get_settings().max_upload_bytes)
    return stored_response(await store(key, data, user))


def may_upload(user: User, key: str) -> bool:
    """Consumers upload only under images_for_detection/; operators anywhere."""
    return user.role != Role.CONSUMER.value or key.startswith(DETECTION_FOLDER)


async def store(key: str, data: bytes, user: User) -> ObjectInfo:
    """Store an upload on a worker thread: storing and queueing the event block (file system, workflow engine)."""
    return await run_in_threadpool(actions.store_object, key, data, source="api", actor=user.username)


def stored_response(info: ObjectInfo) -> Response:
    """201 for a new object; 200 when the same bytes were already there (nothing changed; ``message`` says so)."""
    return Response(info.model_dump_json(), media_type="application/json",
                    status_code=status.HTTP_200_OK if info.unchanged else status.HTTP_201_CREATED)


@objects.get("", response_model=list[ObjectInfo])
def list_objects(prefix: str = Query("", max_length=1024), _: User = Operator) -> list[ObjectInfo]:
    """Objects whose key starts with ``prefix``."""
    return service.list_objects(prefix)


@objects.get("/{key:path}")
def get_object(key: str, _: User = Operator) -> Response:
    """Download an object (served as an attachment that browsers will not run)."""
    info, data = service.get_object(key)
    return Response(data, media_type=safe_media_type(info.content_type), headers={
        "ETag": f'"{info.etag}"', "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "attachment", "Content-Security-Policy": "default-src 'none'; sandbox"})


def safe_media_type(media_type: str | None) -> str:
    """Images keep their type; anything a browser could run (HTML, SVG, scripts) is sent as bytes."""
    if media_type and media_type.startswith("image/") and media_type != "image/svg+xml":
        return media_type
    return "application/octet-stream"


@objects.delete("/{key:path}")
def delete_object(key: str, user: User = Operator) -> dict[str, Any]:
    """Delete an object."""
    if not service.delete_object(key, actor=user.username):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no object at {key!r}")
    return {"deleted": key}


# ── PUT before routing ───────────────────────────────────────────────────────

OBJECTS_PATH = "/api/v1/objects/"


class PutFastPath:
    """Answers ``PUT /api/v1/objects/{key}`` itself for a caller whose token was verified in the last seconds
    (``recent_tokens``), a key the route takes from that caller, and a body within ``max_upload_bytes``: the
    same store on a worker thread, the same answer (:func:`stored_response`) and the app's own exception
    handlers for its errors (not an image, a storage failure). Everything else goes on to the route, the body
    replayed when it was read. Installed inside ``RequestLimits`` and ``DefaultSecurityHeaders``, so the body
    limits and the headers apply as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.caller = remembered_caller(*UPLOADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upload = self.upload(scope)
        limit = get_settings().max_upload_bytes
        if upload is None or declared_over(scope, limit):
            await self.app(scope, receive, send)
            return
        body, complete = await read_body(receive)
        if not complete or len(body) > limit:
            await self.app(scope, replay(body, receive), send)
            return
        user, key = upload
        try:
            info = await store(key, body, user)
        except Exception as exc:
            await answer_error(scope, receive, send, exc)
            return
        await stored_response(info)(scope, receive, send)

    def upload(self, scope: Scope) -> tuple[User, str] | None:
        """The remembered caller of a PUT and the object key, when the route would take that key from them; None
        for any other request (the route answers it: 400, 401, 403, 404, 405, or a check in the database)."""
        if scope["type"] != "http" or scope["method"] != "PUT" or scope.get("root_path") or \
                not scope["path"].startswith(OBJECTS_PATH):
            return None
        user = self.caller(header(scope, b"authorization"))
        key = scope["path"][len(OBJECTS_PATH):]
        if user is None or not may_upload(user, key):
            return None
        try:
            service.validate_key(key)
        except service.InvalidKey:
            return None
        return user, key


# ── S3 event notifications ───────────────────────────────────────────────────


def _authorized(request: Request, secret: str) -> bool:
    """``Authorization: Bearer SECRET`` (MinIO's webhook ``auth_token``), or Basic with SECRET as password."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip()
    if scheme.lower() == "basic":
        try:
            given = base64.b64decode(given, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.encode(), secret.encode())


@events.post("/s3")
async def s3_event_notification(request: Request) -> dict[str, Any]:
    """An S3 event notification (AWS S3 or MinIO shape): each object created under an event folder starts its
    "object created" run, exactly once per key and ETag, as an upload through the API does.

    Authentication: the shared secret ``LABELLOOP_S3_EVENTS_TOKEN`` as ``Authorization: Bearer TOKEN`` (MinIO:
    ``notify_webhook`` ``auth_token``), or as the password of HTTP Basic credentials.
    """
    secret = get_settings().s3_events_token
    if not secret:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "S3 event notifications are off: set "
                                                       "LABELLOOP_S3_EVENTS_TOKEN to turn them on")
    if not _authorized(request, secret):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an S3 event notification must carry the shared "
                            "secret as Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"})
    if service.bucket_name() is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the bucket is a local folder, not an S3 bucket: S3 event "
                                                      "notifications need LABELLOOP_STORAGE_URL=s3://BUCKET")
    data = await read_limited(request, MAX_NOTIFICATION_BYTES)
    try:
        body = json.loads(data)
        records = parse_notification(body)
    except (ValueError, NotificationError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"not an S3 event notification: {exc}") from exc
    if isinstance(body, dict) and body.get("Type") == "SubscriptionConfirmation":
        log.warning("SNS subscription to S3 events awaits confirmation: open its SubscribeURL",
                    extra={"subscribe_url": str(body.get("SubscribeURL"))[:500]})
    return await run_in_threadpool(actions.objects_created_in_bucket, records)


router.include_router(objects)
router.include_router(events)
