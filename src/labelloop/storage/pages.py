"""The storage browser: the bucket's folders and sub-folders, thumbnails, upload (files and whole folders, with
progress, from the page's script), download and delete. Everything goes through :mod:`labelloop.storage.service`,
so an upload here fires the same "object created" event as one through the API."""

from __future__ import annotations

import io
import logging
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from labelloop import engine
from labelloop.config import get_settings
from labelloop.detection import service as detections
from labelloop.loop import actions
from labelloop.modeling import versions
from labelloop.modeling.images import decode_image
from labelloop.storage import service
from labelloop.storage.models import BUCKET_FOLDERS, DETECTION_FOLDER, LABELED_FOLDER, ObjectInfo
from labelloop.storage.views import read_limited, safe_media_type, stored_response
from labelloop.web.dependencies import SessionDep
from labelloop.web.format import query
from labelloop.web.pages import Form, Operator, OperatorApi, PageDenied, form_text, render, sentence

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
PAGE_SIZE = 60
THUMBNAIL_PX = 160
THUMBNAIL_MAX_PIXELS = 60_000_000
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"}
FOLDER_HELP = {
    LABELED_FOLDER: "Training data: one sub-folder per label. Drop a folder here and its name becomes the label.",
    DETECTION_FOLDER: "Every image uploaded here is detected with the serving model version.",
    "a2i-human-loop-data/": "One JSON record per completed human loop (A2I output shape).",
    "evaluation/": "Each model version's evaluation on its test split.",
    "manifests/": "Each model version's training manifest.",
}


def _prefix_or_400(prefix: str) -> str:
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    try:
        return service.validate_prefix(prefix)
    except service.InvalidKey as exc:
        raise PageDenied(400, f"That is not a folder of the bucket: {exc}.") from None


def _is_image(key: str) -> bool:
    return service.content_type(key) in IMAGE_TYPES


def breadcrumbs(prefix: str) -> list[tuple[str, str]]:
    """``(name, prefix)`` from the bucket down to ``prefix``."""
    crumbs, path = [("bucket", "")], ""
    for part in [p for p in prefix.split("/") if p]:
        path += part + "/"
        crumbs.append((part, path))
    return crumbs


def folder_view(prefix: str) -> dict[str, Any]:
    """The sub-folders of ``prefix`` (with how many objects and bytes each holds) and its own objects."""
    everything = [info for info in service.list_objects(prefix) if not info.key.endswith("/")]
    counts: dict[str, dict[str, int]] = {}
    files: list[ObjectInfo] = []
    for info in everything:
        rest = info.key[len(prefix):]
        if "/" in rest:
            entry = counts.setdefault(prefix + rest.split("/", 1)[0] + "/", {"objects": 0, "bytes": 0})
            entry["objects"] += 1
            entry["bytes"] += info.size
        else:
            files.append(info)
    names = set(service.backend().folders(prefix)) | set(counts)
    if not prefix:
        names |= set(BUCKET_FOLDERS)
    folders = [{"prefix": name, "name": name[len(prefix):].rstrip("/"), **counts.get(name, {"objects": 0,
                                                                                                "bytes": 0})}
               for name in sorted(names)]
    return {"folders": folders, "files": files, "total_objects": len(everything)}


@router.get("/storage", response_class=HTMLResponse)
def browse(request: Request, session: SessionDep, _visitor: Operator, prefix: str = "", page: int = 1,
           uploaded: int | None = None, deleted: str | None = None) -> Response:
    prefix = _prefix_or_400(prefix)
    view = folder_view(prefix)
    files = view["files"]
    pages = max(1, (len(files) + PAGE_SIZE - 1) // PAGE_SIZE)
    page = min(max(page, 1), pages)
    shown = files[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    top = prefix.split("/", 1)[0] + "/" if prefix else ""
    label = service.label_of(prefix + "x") if prefix.startswith(LABELED_FOLDER) else None
    return render(request, "console/storage.html", {
        "prefix": prefix, "crumbs": breadcrumbs(prefix), "folders": view["folders"],
        "files": [{"info": info, "name": info.key[len(prefix):], "image": _is_image(info.key),
                   "quoted": quote(info.key)} for info in shown],
        "file_count": len(files), "total_objects": view["total_objects"], "page": page, "pages": pages,
        "page_query": lambda number: query({"prefix": prefix}, page=number),
        "help": FOLDER_HELP.get(top), "label": label, "labeled_root": prefix == LABELED_FOLDER,
        "uploaded": uploaded, "deleted": deleted, "max_upload_bytes": get_settings().max_upload_bytes,
        **_redetection(request, prefix, session=session), "section": "storage"})


def _redetection(request: Request, prefix: str, *, session: Session) -> dict[str, Any]:
    """Whether this folder offers Re-detect (images for detection, a version serving), and the notice of one
    just requested."""
    serving = versions.serving_version(session=session)
    run, count = request.query_params.get("redetect_run"), request.query_params.get("redetected")
    notice = {"run": run, "count": count, "version": serving.version if serving else None} if run else None
    return {"can_redetect": prefix.startswith(DETECTION_FOLDER), "serving_version": serving.version if serving
            else None, "redetect_notice": notice}


@router.post("/storage/redetect")
def redetect(session: SessionDep, visitor: Operator, form: Form) -> Response:
    """Detect the chosen images (or the whole folder) again with the serving version, as
    ``POST /api/v1/detections/redetect``."""
    selected = form_text(form, "scope") == "selected"
    keys = [key for key in form.getlist("keys") if isinstance(key, str) and key] if selected else []
    folder = form_text(form, "prefix") or DETECTION_FOLDER
    if selected and not keys:
        raise PageDenied(422, "Select the images to detect again first (or re-detect the whole folder).")
    try:
        started = actions.redetect_images(keys or [folder], visitor.user.username, session=session)
    except versions.ModelError as exc:
        raise PageDenied(409, sentence(str(exc))) from None
    except (service.InvalidKey, service.ObjectNotFound) as exc:
        raise PageDenied(400, sentence(str(exc.args[0]) if exc.args else str(exc))) from None
    return RedirectResponse("/storage" + query({"prefix": folder}, redetect_run=started["run_id"],
                                               redetected=started["images"]), status_code=303)


@router.get("/storage/outcome/{run_id}")
def upload_outcome(run_id: str, session: SessionDep, _visitor: Operator, key: str | None = None) -> JSONResponse:
    """What became of an upload for detection (the storage page's list asks until it is known): the label and
    confidence, a human loop, or why it was not detected. ``key``: the upload's, as its run may detect several."""
    event = detections.event_of_run(run_id, session=session, key=key)
    if event is None:
        return JSONResponse({"known": False}, headers={"Cache-Control": "no-store"})
    # Known once its run has ended: the run records the detection, then opens the human loop (a moment later,
    # in the same step), so a detected event alone may not say yet whether a reviewer gets it.
    finished = engine.run_status(run_id) in ("SUCCESS", "ERROR", "CANCELLED")
    found = {"known": finished,
             "status": event.status, "label": event.label, "confidence": event.confidence,
             "model_version": event.model_version, "human_loop": event.human_loop_name,
             "message": event.status_message}
    return JSONResponse(found, headers={"Cache-Control": "no-store"})


@router.get("/storage/thumbnail/{key:path}")
def thumbnail(key: str, request: Request, _visitor: Operator) -> Response:
    """A small JPEG of an image object (cached by the browser until the object changes)."""
    try:
        info = service.head_object(key)
    except (service.InvalidKey, service.ObjectNotFound):
        raise PageDenied(404, "There is no such object.") from None
    tag = f'"{info.etag}-{THUMBNAIL_PX}"'
    headers = {"ETag": tag, "Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    if not _is_image(key):
        raise PageDenied(404, "That object is not an image.")
    try:
        _, data = service.get_object(key)
        # Decoded within the memory budget and reduced before any copy: a 7745² PNG no longer costs +687 MB.
        image = decode_image(data, THUMBNAIL_MAX_PIXELS, short_side=THUMBNAIL_PX * 2)
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=82)
    except Exception as exc:  # a broken or hostile file: no thumbnail, the listing still works
        log.info("no thumbnail", extra={"key": key, "reason": repr(exc)[:200]})
        raise PageDenied(404, "That image cannot be read.") from None
    return Response(out.getvalue(), media_type="image/jpeg", headers=headers)


@router.get("/storage/download/{key:path}")
def download(key: str, _visitor: Operator) -> Response:
    """An object as a download (never shown inline: the browser will not run it)."""
    try:
        info, data = service.get_object(key)
    except (service.InvalidKey, service.ObjectNotFound):
        raise PageDenied(404, "There is no such object.") from None
    name = key.rsplit("/", 1)[-1]
    return Response(data, media_type=safe_media_type(info.content_type), headers={
        "ETag": f'"{info.etag}"', "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"})


@router.put("/storage/objects/{key:path}", status_code=201)
async def upload(key: str, request: Request, visitor: OperatorApi) -> Response:
    """Store the raw body at ``key`` (the page's uploader calls this with the session and its CSRF header)."""
    service.validate_key(key)
    if key.startswith(LABELED_FOLDER) and service.label_of(key) is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "a training image needs a label folder: drop a folder (its name becomes the label) "
                            "or open a label's folder first")
    data = await read_limited(request, get_settings().max_upload_bytes)
    info = await run_in_threadpool(actions.store_object, key, data, source="web", actor=visitor.user.username)
    return stored_response(info)


@router.post("/storage/delete")
def delete(visitor: Operator, form: Form) -> Response:
    key = form.get("key")
    if not isinstance(key, str):
        raise PageDenied(422, "Say which object to delete.")
    try:
        existed = service.delete_object(key, actor=visitor.user.username)
    except service.InvalidKey as exc:
        raise PageDenied(400, f"That is not an object key: {exc}.") from None
    if not existed:
        raise PageDenied(404, "There is no such object (was it deleted already?).")
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    return RedirectResponse("/storage" + query({"prefix": folder}, deleted=key.rsplit("/", 1)[-1]),
                            status_code=303)
