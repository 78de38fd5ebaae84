"""Model routes: training check, versions, deploy / roll back / stop, ONNX export, synchronous detect."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, UploadFile, status
from fastapi.responses import Response

from labelloop.config import get_settings
from labelloop.modeling import flows, service
from labelloop.modeling.embedding import default_threads
from labelloop.modeling.models import DetectResponse, ModelVersionRead
from labelloop.modeling.serving import ranked
from labelloop.workforce.models import Role, User
from labelloop.workforce.views import SessionDep, require

router = APIRouter(prefix="/api/v1", tags=["models"])
Operator = Depends(require(Role.OPERATOR))
Detector = Depends(require(Role.OPERATOR, Role.CONSUMER))


@router.post("/training/check", status_code=202)
def check_training(user: User = Operator) -> dict[str, Any]:
    """Run the training check now; returns the run id."""
    run_id = flows.start_training_check(f"requested by {user.username}")
    return {"run_id": run_id}


@router.get("/models", response_model=list[ModelVersionRead])
def list_models(session: SessionDep, _: User = Operator) -> list[dict[str, Any]]:
    """Every model version, newest first, with status, F1 and image counts."""
    return [service.describe(row) for row in service.list_versions(session)]


@router.get("/models/{version}", response_model=ModelVersionRead)
def read_model(version: str, session: SessionDep, _: User = Operator) -> dict[str, Any]:
    """One model version with its per-label metrics and confusion matrix."""
    return service.describe(service.get_version(session, version))


@router.post("/models/{version}/deploy", status_code=202)
def deploy_model(version: str, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Deploy (or roll back to) a trained version, blue-green; returns the run id."""
    row = service.get_version(session, version)
    if row.head is None or row.status not in service.SERVABLE:
        raise HTTPException(status.HTTP_409_CONFLICT, f"model version {version} is {row.status} and cannot be "
                            "deployed; deployable versions have finished training")
    return {"run_id": flows.start_deploy(version, user.username)}


@router.post("/models/{version}/stop", status_code=202)
def stop_model(version: str, session: SessionDep, user: User = Operator) -> dict[str, Any]:
    """Stop serving a version; returns the run id."""
    row = service.get_version(session, version)
    if row.status != "RUNNING":
        raise HTTPException(status.HTTP_409_CONFLICT, f"model version {version} is {row.status}, not RUNNING")
    return {"run_id": flows.start_stop(version, user.username)}


@router.get("/models/{version}/export", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def export_model(version: str, session: SessionDep, format: str = Query("onnx", pattern="^onnx$"),
                 _: User = Operator) -> Response:
    """The whole model (backbone + head + softmax) as one ONNX file; label names in its metadata."""
    data = service.export_onnx(session, version)
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="labelloop-model-{version}.onnx"'})


# Decoding runs on a pool as wide as the cores, not on the server's 40-thread pool: more concurrent decodes
# than cores only add context switches and per-thread allocator memory.
_PREPARE_POOL = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="detect-prepare")


def _prepare(data: bytes) -> np.ndarray:
    """Decode and preprocess, and pick up a version switched by another process (blocking: run in a thread)."""
    service.sync_serving()
    return service.prepare_image(data)


@router.post("/detect", response_model=DetectResponse)
async def detect(file: UploadFile, session: SessionDep, _: User = Detector) -> dict[str, Any]:
    """Detect labels in one image: every label with its confidence (0-100), best first, and the version."""
    # Authenticated: end the request's transaction now, so that no database connection is held while the
    # request waits for its batch (32 waiting requests used to exhaust the pool and time out).
    session.commit()
    limit = get_settings().max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the image is larger than {limit} bytes")
    inputs = await asyncio.get_running_loop().run_in_executor(_PREPARE_POOL, _prepare, data)
    loaded, probabilities = await service.serving().infer(inputs)
    return {"model_version": loaded.version, "labels": ranked(loaded.labels, probabilities[0])}
