"""Model routes: training check, versions, deploy / roll back / stop, ONNX export, synchronous detect.

``POST /api/v1/detect`` from a caller whose token was verified in the last seconds is answered by
:class:`DetectFastPath`, a pure-ASGI layer before FastAPI's routing, dependencies, form parsing and response
validation (about half of the event loop's CPU per request; README Performance, item 23); every other request to
it (an unknown token, a body that is not one multipart ``file`` part, an upload over the limit) reaches the
route :func:`detect` unchanged.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, UploadFile, status
from fastapi.responses import Response
from pydantic import TypeAdapter
from python_multipart.multipart import parse_options_header

from labelloop.config import get_settings
from labelloop.loop import actions
from labelloop.modeling import endpoint, service, versions
from labelloop.modeling.models import DetectResponse, ModelVersionRead
from labelloop.web.before_routing import ASGIApp, Receive, Scope, Send, answer_error, header, read_body, replay
from labelloop.web.dependencies import SessionDep, remembered_caller, require, require_recent
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1", tags=["models"])
Operator = Depends(require(Role.OPERATOR))
# The caller of ``POST /detect``: a token verified in the last seconds is checked without the database.
DETECTORS = (Role.OPERATOR, Role.CONSUMER)
detector = require_recent(*DETECTORS)


@router.post("/training/check", status_code=202)
def check_training(user: User = Operator) -> dict[str, Any]:
    """Run the training check now; returns the run id."""
    return {"run_id": actions.check_training(user.username)}


@router.get("/models", response_model=list[ModelVersionRead])
def list_models(session: SessionDep, _: User = Operator) -> list[dict[str, Any]]:
    """Every model version, newest first, with status, F1 and image counts."""
    return [versions.describe(row) for row in versions.list_versions(session=session)]


@router.get("/models/{version}", response_model=ModelVersionRead)
def read_model(version: str, session: SessionDep, _: User = Operator) -> dict[str, Any]:
    """One model version with its per-label metrics and confusion matrix."""
    return versions.describe(versions.get_version(version, session=session))


@router.post("/models/{version}/deploy", status_code=202)
def deploy_model(version: str, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Deploy (or roll back to) a trained version, blue-green; returns the run id."""
    return {"run_id": actions.deploy_version(version, user.username, session=session)}


@router.get("/models/{version}/suspect-labels")
def read_suspect_labels(version: str, session: SessionDep, _: User = Operator) -> list[dict[str, Any]]:
    """Training images whose folder label the version's training confidently disagreed with, surest first."""
    return service.suspect_labels(version, session=session)


@router.post("/models/{version}/label-audit")
def send_suspects_to_review(version: str, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Send the version's suspect training labels to human review as "Label Audit" loops (one per image,
    none for an image already in review or no longer stored)."""
    return actions.audit_suspect_labels(version, user.username, session=session)


@router.post("/models/{version}/stop", status_code=202)
def stop_model(version: str, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Stop serving a version; returns the run id."""
    return {"run_id": actions.stop_version(version, user.username, session=session)}


@router.get("/models/{version}/export", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def export_model(version: str, session: SessionDep, format: str = Query("onnx", pattern="^onnx$"),
                 _: User = Operator) -> Response:
    """The whole model (backbone + head + softmax) as one ONNX file; label names in its metadata."""
    data = service.export_onnx(version, session=session)
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="labelloop-model-{version}.onnx"'})


@router.post("/detect", response_model=DetectResponse)
async def detect(file: UploadFile, _: User = Depends(detector)) -> dict[str, Any]:
    """Detect labels in one image: every label with its confidence (0-100), best first, and the version."""
    limit = get_settings().max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the image is larger than {limit} bytes")
    version, labels = await endpoint.detect_upload(data)
    return {"model_version": version, "labels": labels}


# ── POST /detect before routing ──────────────────────────────────────────────

DETECT_PATH = "/api/v1/detect"
_ANSWER = TypeAdapter(DetectResponse)


class DetectFastPath:
    """Answers ``POST /api/v1/detect`` itself for a caller whose token was verified in the last seconds
    (``recent_tokens``) and a body of one multipart ``file`` part within ``max_upload_bytes``: the same
    detection (``endpoint.detect_upload``), the same JSON answer, and the app's own exception handlers for its
    errors (a rejected image, nothing serving). Everything else goes on to the app, the body replayed when it
    was read. Installed inside ``RequestLimits`` and ``DefaultSecurityHeaders``, so the body limits and the
    headers apply as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.caller = remembered_caller(*DETECTORS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != DETECT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        boundary = _boundary(header(scope, b"content-type"))
        if boundary is None or self.caller(header(scope, b"authorization")) is None:
            await self.app(scope, receive, send)
            return
        body, complete = await read_body(receive)
        data = _file_part(body, boundary) if complete else None
        if data is None or len(data) > get_settings().max_upload_bytes:
            await self.app(scope, replay(body, receive), send)
            return
        try:
            version, labels = await endpoint.detect_upload(data)
        except Exception as exc:
            await answer_error(scope, receive, send, exc)
            return
        answer = _ANSWER.dump_json(_ANSWER.validate_python({"model_version": version, "labels": labels}))
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(len(answer)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


def _boundary(content_type: bytes | None) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, else None."""
    kind, options = parse_options_header(content_type)
    return options.get(b"boundary") if kind == b"multipart/form-data" else None


def _file_part(body: bytes, boundary: bytes) -> bytes | None:
    """The content of a multipart body that is exactly one part, a file named ``file``, in the plain form every
    client sends (no preamble, no padding after a delimiter, one header per line, nothing after the close
    delimiter but a line break); None for anything else, which the route's own parser then reads."""
    opening, delimiter = b"--" + boundary + b"\r\n", b"\r\n--" + boundary
    head_end = body.find(b"\r\n\r\n", len(opening))
    data_end = body.find(delimiter, head_end + 4)
    if not body.startswith(opening) or head_end < 0 or data_end < 0 or \
            body[data_end + len(delimiter):] not in (b"--", b"--\r\n"):
        return None
    headers: dict[bytes, bytes] = {}
    for line in body[len(opening):head_end].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or name.lower() in headers:
            return None
        headers[name.lower()] = value.strip()
    disposition, options = parse_options_header(headers.get(b"content-disposition"))
    if disposition != b"form-data" or options.get(b"name") != b"file" or b"filename" not in options:
        return None
    return body[head_end + 4:data_end]
