"""The Parameter Store page: every parameter with its description, type and allowed range; edit with the
validation message shown next to the field; the change history. An accepted change starts the run that applies
it, exactly as ``PUT /api/v1/parameters/{name}`` does."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from labelloop.detection import silent_errors
from labelloop.loop import actions
from labelloop.parameters import service
from labelloop.parameters.views import history_entry
from labelloop.runs import service as runs
from labelloop.sampling import service as sampling
from labelloop.web.dependencies import SessionDep
from labelloop.web.format import pretty_json
from labelloop.web.pages import Form, Operator, PageDenied, render

router = APIRouter(include_in_schema=False)
RECENT_CHANGES = 25


def history_entries(changes: list[Any]) -> list[dict[str, Any]]:
    """History rows as the API shows them; ``run_id`` only where that run exists (system-state writes start
    none)."""
    entries = [history_entry(change) for change in changes]
    existing = runs.existing_runs([entry["run_id"] for entry in entries])
    for entry in entries:
        if entry["run_id"] not in existing:
            entry["run_id"] = None
    return entries


def _rows(session: Session) -> list[dict[str, Any]]:
    rows = []
    for row in service.list_all(session=session):
        described = service.describe(row)
        spec = service.DEFINITIONS[row.name]
        described["system_only"] = spec.system_only
        described["kind"] = {"bool": "boolean", "int": "whole number", "float": "number",
                             "choice": "choice", "json": "JSON"}[spec.kind]
        described["changes"] = len(service.history(row.name, limit=1000, session=session))
        if spec.kind == "json":
            described["pretty"] = pretty_json(spec.parse(row.value))
        rows.append(described)
    return rows


def _list_page(request: Request, session: Session, *, errors: dict[str, str] | None = None,
               values: dict[str, str] | None = None, status_code: int = 200) -> HTMLResponse:
    changed = request.query_params.get("changed")
    latest = None
    if changed in service.DEFINITIONS and not errors:
        found = service.history(changed, limit=1, session=session)
        latest = history_entries(found)[0] if found else None
    return render(request, "console/parameters.html", {
        "parameters": _rows(session), "errors": errors or {}, "values": values or {}, "latest": latest,
        "unchanged": request.query_params.get("unchanged") if not errors else None,
        "recent": history_entries(service.history(limit=RECENT_CHANGES, session=session, include_system=False)),
        "rules": silent_errors.RULE_MEANINGS, "silent": sampling.silent_error_report(),
        "section": "parameters"}, status_code=status_code)


@router.get("/parameters", response_class=HTMLResponse)
def parameters_page(request: Request, session: SessionDep, _visitor: Operator) -> Response:
    return _list_page(request, session)


def _definition_or_404(name: str) -> service.Definition:
    try:
        return service.definition(name)
    except service.UnknownParameter:
        raise PageDenied(404, f"There is no parameter named {name!r}.") from None


@router.get("/parameters/{name}", response_class=HTMLResponse)
def parameter_page(request: Request, name: str, session: SessionDep, _visitor: Operator) -> Response:
    spec = _definition_or_404(name)
    return render(request, "console/parameter.html", {
        "parameter": {**service.describe(service.get(name, session=session)), "system_only": spec.system_only},
        "history": history_entries(service.history(name, limit=1000, session=session)),
        "section": "parameters"})


@router.post("/parameters/{name}", response_class=HTMLResponse)
def change_parameter(request: Request, name: str, session: SessionDep, visitor: Operator, form: Form) -> Response:
    """Validate and store the new value and start its run; a bad value re-shows the page with the reason."""
    spec = _definition_or_404(name)
    raw = form.get("value")
    raw = raw if isinstance(raw, str) else ""
    back = form.get("back")
    try:
        applied = actions.change_parameter(name, raw, actor=visitor.user.username, session=session)
    except service.ParameterError as exc:
        session.rollback()
        message = str(exc)
        if back == "detail":
            return render(request, "console/parameter.html", {
                "parameter": {**service.describe(service.get(name, session=session)), "system_only": spec.system_only},
                "history": history_entries(service.history(name, limit=1000, session=session)),
                "error": message, "value": raw, "section": "parameters"}, status_code=422)
        return _list_page(request, session, errors={name: message}, values={name: raw}, status_code=422)
    target = f"/parameters/{quote(name)}" if back == "detail" else "/parameters"
    if not applied["changed"]:
        return RedirectResponse(f"{target}?unchanged={quote(name)}#param-{quote(name)}", status_code=303)
    return RedirectResponse(f"{target}?changed={quote(name)}#param-{quote(name)}", status_code=303)
