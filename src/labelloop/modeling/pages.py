"""The models pages: versions with status and F1, an F1-by-version plot, per-label metrics and the confusion
matrix of a version; deploy, roll back, stop (each a run, as through the API) and the ONNX download."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from labelloop.loop import actions
from labelloop.modeling import service, versions
from labelloop.modeling.images import INPUT_VIEW_SUMMARIES
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.parameters import service as parameters
from labelloop.sampling import service as sampling
from labelloop.web import plots
from labelloop.web.dependencies import SessionDep
from labelloop.web.pages import Form, Operator, PageDenied, render, sentence

router = APIRouter(include_in_schema=False)
STATUS_TAGS = {  # the tag colour of each status
    ModelStatus.RUNNING.value: "on", ModelStatus.TRAINING_COMPLETED.value: "info",
    ModelStatus.STOPPED.value: "neutral", ModelStatus.TRAINING_FAILED.value: "off", ModelStatus.FAILED.value: "off",
    ModelStatus.TRAINING_IN_PROGRESS.value: "wait", ModelStatus.STARTING.value: "wait",
    ModelStatus.STOPPING.value: "wait",
}
ACTIONS = {
    "deploy": "Deploying {version}: it is loaded and warmed while the current version keeps serving.",
    "rollback": "Rolling back to {version}: it is loaded and warmed while the current version keeps serving.",
    "stop": "Stopping {version}: once stopped, new detections wait until a version serves.",
}


def _version_or_404(session: Session, version: str) -> ModelVersion:
    try:
        return versions.get_version(version, session=session)
    except versions.VersionNotFound:
        raise PageDenied(404, f"There is no model version {version!r}.") from None


def _can_deploy(row: ModelVersion) -> bool:
    return row.has_head and row.status in versions.SERVABLE and row.status != ModelStatus.RUNNING.value


def _actions(row: ModelVersion, serving: ModelVersion | None) -> dict[str, Any]:
    deploy = _can_deploy(row)
    return {"deploy": deploy, "rollback": deploy and serving is not None and row.id < serving.id,
            "stop": row.status == ModelStatus.RUNNING.value, "export": row.has_head}


def f1_plot(rows: list[ModelVersion], minimum: float) -> Any:
    """F1 of each version, oldest first, with the Minimum-F1-Score line."""
    ordered = sorted((r for r in rows if r.f1 is not None), key=lambda r: r.id)
    return plots.line_chart([r.version for r in ordered], [("F1", [r.f1 for r in ordered])],
                            label="F1 score by model version", y_min=0, y_max=1, y_format="{:.1f}",
                            y_title="F1", reference=(minimum, f"Minimum-F1-Score {minimum:g}"),
                            value_format="{:.3f}", width=760)


def _notice(request: Request, version: str) -> dict[str, str] | None:
    action, run = request.query_params.get("action"), request.query_params.get("run")
    if action in ACTIONS and run:
        return {"message": ACTIONS[action].format(version=version), "run": run}
    return None


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, _visitor: Operator) -> Response:
    rows = versions.list_versions(session=session)
    serving = versions.serving_version(session=session)
    minimum = parameters.value(parameters.MINIMUM_F1_SCORE, session=session)
    return render(request, "console/models.html", {
        "versions": [{"row": row, "tag": STATUS_TAGS.get(row.status, "neutral"), **_actions(row, serving)}
                     for row in rows],
        "serving": serving, "minimum_f1": minimum, "plot": f1_plot(rows, minimum), "section": "models"})


def confusion(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The confusion matrix with a shade (0-5) per cell relative to its row, for the table."""
    labels, matrix = evaluation.get("labels"), evaluation.get("confusion_matrix")
    if not labels or not matrix:
        return None
    rows = []
    for i, (label, counts) in enumerate(zip(labels, matrix, strict=False)):
        total = sum(counts)
        rows.append({"label": label, "total": total,
                     "cells": [{"count": n, "shade": min(5, round(5 * n / total)) if total else 0, "diagonal": j == i}
                               for j, n in enumerate(counts)]})
    return {"labels": labels, "rows": rows}


def left_out_of(evaluation: dict[str, Any]) -> dict[str, Any]:
    """What a version's training left out: labels with too few images, and images that could not train."""
    rejected = evaluation.get("rejected_images")
    if rejected is None:  # versions trained before rejected images were recorded with their label
        rejected = [{"key": key, "label": "", "reason": reason} for key, reason in
                    (evaluation.get("rejected") or {}).items()]
    unusable = [{**item, "todo": "delete it or replace it with a JPEG, PNG, GIF, WebP, BMP or TIFF image",
                 "folder": item["key"].rsplit("/", 1)[0] + "/"} for item in rejected]
    left_out = sorted((evaluation.get("left_out_labels") or {}).items())
    return {"left_out": left_out, "unusable": unusable, "unusable_total": len(unusable),
            "any": bool(left_out or unusable)}


def silent_errors(version: str) -> dict[str, Any]:
    """The version's silent-error estimate and its plot, for the model page and the dashboard."""
    report = sampling.silent_error_report(version)
    return {"silent": report, "silent_plot": plots.silent_error_chart(report, width=760)}


@router.get("/models/{version}", response_class=HTMLResponse)
def version_page(request: Request, version: str, session: SessionDep, _visitor: Operator) -> Response:
    row = _version_or_404(session, version)
    serving = versions.serving_version(session=session)
    evaluation = row.evaluation or {}
    per_label = evaluation.get("per_label") or []
    metrics_plot = plots.bar_chart([(m["label"], m["f1"]) for m in per_label], label=f"F1 per label of {row.version}",
                                   value_format="{:.3f}", width=540) if per_label else None
    return render(request, "console/model.html", {
        "row": row, "tag": STATUS_TAGS.get(row.status, "neutral"), **_actions(row, serving), "serving": serving,
        "problems": left_out_of(evaluation),
        "evaluation": evaluation, "per_label": per_label, "confusion": confusion(evaluation),
        "input_view_summary": INPUT_VIEW_SUMMARIES[row.input_view],
        "metrics_plot": metrics_plot, "notice_action": _notice(request, row.version),
        "audit_notice": _audit_notice(request), **silent_errors(row.version),
        "minimum_f1": parameters.value(parameters.MINIMUM_F1_SCORE, session=session), "section": "models"})


@router.post("/models/{version}/deploy")
def deploy(version: str, session: SessionDep, visitor: Operator, _form: Form) -> Response:
    """Deploy (or roll back to) a trained version, blue-green, as ``POST /api/v1/models/{version}/deploy``."""
    row = _version_or_404(session, version)
    serving = versions.serving_version(session=session)
    action = "rollback" if serving is not None and row.id < serving.id else "deploy"
    try:
        run_id = actions.deploy_version(version, visitor.user.username, session=session)
    except versions.ModelError as exc:
        raise PageDenied(409, sentence(str(exc))) from None
    return RedirectResponse(f"/models/{quote(version)}?action={action}&run={quote(run_id)}", status_code=303)


def _audit_notice(request: Request) -> str | None:
    opened, skipped = request.query_params.get("audit_opened"), request.query_params.get("audit_skipped")
    if opened is None:
        return None
    note = f"{opened} Label Audit loop(s) opened for reviewers."
    if skipped != "0":
        note += f" {skipped} image(s) passed over (already in review or no longer stored)."
    return note


@router.post("/models/{version}/label-audit")
def label_audit(version: str, session: SessionDep, visitor: Operator, _form: Form) -> Response:
    """Send the version's suspect training labels to review, as ``POST /api/v1/models/{version}/label-audit``."""
    _version_or_404(session, version)
    sent = actions.audit_suspect_labels(version, visitor.user.username, session=session)
    skipped = sent["suspects"] - len(sent["opened"])
    return RedirectResponse(f"/models/{quote(version)}?audit_opened={len(sent['opened'])}&audit_skipped={skipped}"
                            "#suspect-labels", status_code=303)


@router.post("/models/{version}/stop")
def stop(version: str, session: SessionDep, visitor: Operator, _form: Form) -> Response:
    """Stop serving a version, as ``POST /api/v1/models/{version}/stop``."""
    _version_or_404(session, version)
    try:
        run_id = actions.stop_version(version, visitor.user.username, session=session)
    except versions.ModelError as exc:
        raise PageDenied(409, sentence(str(exc))) from None
    return RedirectResponse(f"/models/{quote(version)}?action=stop&run={quote(run_id)}", status_code=303)


@router.get("/models/{version}/export.onnx")
def export(version: str, session: SessionDep, _visitor: Operator) -> Response:
    """The whole model (backbone, head, softmax) as one ONNX file."""
    _version_or_404(session, version)
    try:
        data = service.export_onnx(version, session=session)
    except versions.ModelError as exc:
        raise PageDenied(409, str(exc)) from None
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="labelloop-model-{quote(version)}.onnx"',
        "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})
