"""Model routes: training check, versions, deploy / roll back / stop, ONNX export, synchronous detect."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, UploadFile, status
from fastapi.responses import Response

from labelloop.config import get_settings
from labelloop.loop import actions
from labelloop.modeling import endpoint, service, versions
from labelloop.modeling.models import DetectResponse, ModelVersionRead
from labelloop.web.dependencies import SessionDep, require, require_recent
from labelloop.workforce.models import Role, User

router = APIRouter(prefix="/api/v1", tags=["models"])
Operator = Depends(require(Role.OPERATOR))
# The caller of ``POST /detect``: a token verified in the last seconds is checked without the database.
detector = require_recent(Role.OPERATOR, Role.CONSUMER)


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
