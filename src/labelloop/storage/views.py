"""Bucket routes: put, get, list and delete objects."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from labelloop.config import get_settings
from labelloop.storage import service
from labelloop.storage.models import DETECTION_FOLDER, ObjectInfo
from labelloop.workforce.models import Role, User
from labelloop.workforce.views import require

router = APIRouter(prefix="/api/v1/objects", tags=["storage"])
Operator = Depends(require(Role.OPERATOR))
Uploader = Depends(require(Role.OPERATOR, Role.CONSUMER))


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


@router.put("/{key:path}", response_model=ObjectInfo, status_code=201,
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_object(key: str, request: Request, user: User = Uploader) -> ObjectInfo:
    """Store the raw request body at ``key``; under an event folder this starts an "object created" run."""
    service.validate_key(key)
    if user.role == Role.CONSUMER.value and not key.startswith(DETECTION_FOLDER):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"consumers may only upload under {DETECTION_FOLDER}")
    data = await read_limited(request, get_settings().max_upload_bytes)
    # Storing and queueing the event block (file system, workflow engine): keep them off the event loop.
    return await run_in_threadpool(service.put_object, key, data, source="api", actor=user.username)


@router.get("", response_model=list[ObjectInfo])
def list_objects(prefix: str = Query("", max_length=1024), _: User = Operator) -> list[ObjectInfo]:
    """Objects whose key starts with ``prefix``."""
    return service.list_objects(prefix)


@router.get("/{key:path}")
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


@router.delete("/{key:path}")
def delete_object(key: str, user: User = Operator) -> dict[str, Any]:
    """Delete an object."""
    if not service.delete_object(key, actor=user.username):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no object at {key!r}")
    return {"deleted": key}
