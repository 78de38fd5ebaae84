"""Workforce pages: sign-in, sign-out, password change, and the admin's users, roles, tokens and teams."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from labelloop.config import get_settings
from labelloop.notifications.channels import send_email
from labelloop.web.dependencies import SessionDep
from labelloop.web.pages import (
    API_PAGE,
    CSRF_COOKIE,
    PASSWORD_PAGE,
    ROLE_HOME,
    SESSION_COOKIE,
    AdminPage,
    Form,
    MaybeVisitor,
    PageDenied,
    PageRedirect,
    Visitor,
    client_address,
    form_text,
    render,
    safe_next,
    secure_cookies,
    sentence,
    set_session_cookie,
    signed_in,
    signed_in_any,
)
from labelloop.workforce import service
from labelloop.workforce.models import Role, Team, User

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


def portal_url() -> str:
    """The review portal's sign-in address, as workers are given it."""
    return f"{get_settings().public_url.rstrip('/')}/review"


# ── sign-in, sign-out, password ──────────────────────────────────────────────


def _sign_in_page(request: Request, next_path: str | None, error: str | None = None, status_code: int = 200,
                  username: str = "", headers: dict[str, str] | None = None) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "sign_in.html", {"next": next_path or "", "error": error, "sign_in_csrf": csrf,
                                                "username": username}, status_code=status_code, headers=headers)
    response.set_cookie(CSRF_COOKIE, csrf, path="/sign-in", httponly=True, samesite="strict",
                        secure=secure_cookies())
    return response


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, visitor: MaybeVisitor, next: str | None = None) -> Response:
    if visitor is not None:
        raise PageRedirect(PASSWORD_PAGE if visitor.user.must_change_password
                           else safe_next(next) or ROLE_HOME[visitor.user.role])
    return _sign_in_page(request, safe_next(next))


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, session: SessionDep) -> Response:
    form = await request.form()
    next_path = safe_next(form_text(form, "next"))
    username, password = form_text(form, "username"), form.get("password")
    cookie, given = request.cookies.get(CSRF_COOKIE, ""), form.get("csrf_token")
    if not cookie or not isinstance(given, str) or not secrets.compare_digest(cookie.encode(), given.encode()):
        raise PageDenied(403, "The sign-in form is not valid any more (it has no or a wrong security token). "
                              "Reload the sign-in page and try again.")
    if not username or not isinstance(password, str) or not password:
        return _sign_in_page(request, next_path, "Enter your username and password.", 422, username)
    try:
        # argon2 takes a while on purpose: off the event loop.
        user_id = await run_in_threadpool(service.sign_in, username, password, client_address(request))
    except service.Throttled as exc:
        return _sign_in_page(request, next_path, f"Too many failed sign-ins. Try again in {exc.retry_after} "
                             "seconds.", 429, username, headers={"Retry-After": str(exc.retry_after)})
    except service.AuthError as exc:
        return _sign_in_page(request, next_path, sentence(str(exc)), 401, username)
    user = session.get(User, user_id)
    token, _ = service.start_session(user, address=client_address(request),
                                     user_agent=request.headers.get("user-agent", ""),
                                                                    replaces=request.cookies.get(SESSION_COOKIE),
                                                                                                 session=session)
    log.info("signed in", extra={"user": user.username, "client": client_address(request)})
    if user.must_change_password:
        target = PASSWORD_PAGE + (f"?next={next_path}" if next_path else "")
    else:
        target = next_path or ROLE_HOME[user.role]
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    set_session_cookie(response, token)
    response.delete_cookie(CSRF_COOKIE, path="/sign-in")
    return response


@router.post("/sign-out")
def sign_out(request: Request, session: SessionDep, _form: Form) -> Response:
    service.end_session(request.cookies.get(SESSION_COOKIE, ""), session=session)
    response = RedirectResponse("/sign-in?notice=signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, visitor: Annotated[Visitor, Depends(signed_in)]) -> Response:
    return render(request, "account.html", {"home": ROLE_HOME[visitor.user.role]})


# ── API access: your own tokens and how to call the detect API (consumers' home) ─────────────────────


def _api_page(request: Request, session: SessionDep, visitor: Visitor, status_code: int = 200,
              **context: Any) -> HTMLResponse:
    tokens = [(row, service.token_state(row)) for row in service.user_tokens(visitor.user, session=session)]
    return render(request, "account_api.html", {
        "tokens": tokens, "server": get_settings().public_url.rstrip("/"),
        "suggested_name": f"api-{len(tokens) + 1}", **context}, status_code=status_code)


@router.get(API_PAGE, response_class=HTMLResponse)
def api_page(request: Request, session: SessionDep, visitor: Annotated[Visitor, Depends(signed_in)]) -> Response:
    return _api_page(request, session, visitor)


@router.post(f"{API_PAGE}/tokens", response_class=HTMLResponse)
def create_own_token(request: Request, session: SessionDep, visitor: Annotated[Visitor, Depends(signed_in)],
                     form: Form) -> Response:
    """A new API token for yourself, shown once on the page."""
    name = (form_text(form, "name") or "api")[:100]
    try:
        days = int(form_text(form, "days") or "0")
        if not 0 <= days <= 3650:
            raise ValueError
    except ValueError:
        return _api_page(request, session, visitor, 422,
                         error="Days must be a whole number from 0 (never expires) to 3650.")
    token, _ = service.issue_token(visitor.user, name=name, ttl=timedelta(days=days) if days else None,
                                   session=session)
    session.commit()
    return _api_page(request, session, visitor, 201, new_token=token, new_token_name=name)


@router.post(f"{API_PAGE}/tokens/{{token_id}}/revoke")
def revoke_own_token(token_id: int, session: SessionDep, visitor: Annotated[Visitor, Depends(signed_in)],
                     _form: Form) -> Response:
    try:
        service.revoke_token(visitor.user, token_id, session=session)
    except service.WorkforceError:
        raise PageDenied(404, "You have no such token.") from None
    return RedirectResponse(f"{API_PAGE}?notice=own-token-revoked", status_code=303)


@router.get(PASSWORD_PAGE, response_class=HTMLResponse)
def password_page(request: Request, _visitor: Annotated[Visitor, Depends(signed_in_any)],
                  next: str | None = None) -> Response:
    return render(request, "password.html", {"next": safe_next(next) or "",
                                             "min_length": service.MIN_PASSWORD_LENGTH})


@router.post(PASSWORD_PAGE, response_class=HTMLResponse)
def change_password(request: Request, session: SessionDep, visitor: Annotated[Visitor, Depends(signed_in_any)],
                    form: Form) -> Response:
    next_path = safe_next(form_text(form, "next"))
    current, new, again = (form.get(name) for name in ("current_password", "new_password", "confirm_password"))
    error = None
    if not all(isinstance(value, str) and value for value in (current, new, again)):
        error = "Fill in all three fields."
    elif new != again:
        error = "The new password and its repetition differ."
    if error is None:
        user = session.get(User, visitor.user.id)
        try:
            token = service.change_own_password(user, str(current), str(new), address=client_address(request),
                                                user_agent=request.headers.get("user-agent", ""), session=session)
        except (service.WorkforceError, service.Throttled) as exc:
            error = str(exc).capitalize() + "."
    if error is not None:
        return render(request, "password.html", {"next": next_path or "", "error": error,
                                                 "min_length": service.MIN_PASSWORD_LENGTH}, status_code=422)
    target = next_path or ROLE_HOME[visitor.user.role]
    response = RedirectResponse(f"{target}{'&' if '?' in target else '?'}notice=password-changed", status_code=303)
    set_session_cookie(response, token)
    return response


# ── workforce admin ──────────────────────────────────────────────────────────


def _users_page(request: Request, session: SessionDep, error: str | None = None, status_code: int = 200,
                values: dict[str, str] | None = None) -> HTMLResponse:
    return render(request, "workforce/users.html", {
        "users": service.list_users(session=session), "teams": service.list_teams(session=session),
        "teams_by_user": service.teams_by_user(session=session), "portal_url": portal_url(), "roles": list(Role),
        "error": error, "values": values or {"role": Role.WORKER.value}}, status_code=status_code)


@router.get("/workforce", response_class=HTMLResponse)
def workforce(request: Request, session: SessionDep, _admin: AdminPage) -> Response:
    return _users_page(request, session)


def _email_password(user: User, secret: str, *, reset: bool) -> str | None:
    """Email a temporary password when SMTP is configured and the user has an address; returns what happened."""
    settings = get_settings()
    if not settings.smtp_host or not user.email:
        return None
    what = "was reset" if reset else "was created"
    body = (f"Your labelloop account {what}.\n\nSign in at: {portal_url()}\nUsername: {user.username}\n"
            f"Temporary password: {secret}\n\nYou will be asked to choose your own password when you sign in.\n")
    try:
        send_email(settings.model_copy(update={"notify_email": [user.email]}), "Your labelloop account", body)
    except Exception as exc:  # the password is still shown on the page; the admin sees the failure
        log.error("temporary password email failed", extra={"user": user.username, "error": repr(exc)})
        return f"Sending the email to {user.email} failed ({exc.__class__.__name__}); pass the password on yourself."
    return f"The temporary password was emailed to {user.email}."


@router.post("/workforce/users", response_class=HTMLResponse)
def create_user(request: Request, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    values = {name: form_text(form, name) for name in ("username", "email", "role", "team")}
    try:
        user, secret = service.create_user(values["username"], values["role"] or Role.WORKER.value,
                                           email=values["email"] or None, session=session)
        if values["team"]:
            service.add_to_team(service.get_team(values["team"], session=session), user, session=session)
    except service.WorkforceError as exc:
        session.rollback()
        return _users_page(request, session, str(exc).capitalize() + ".", 422, values)
    session.commit()
    log.info("user created", extra={"user": user.username, "role": user.role, "by": _admin.user.username})
    return render(request, "workforce/secret.html", {
        "title": f"User {user.username} created", "subject": user, "secret": secret,
        "secret_label": "Temporary password", "emailed": _email_password(user, secret, reset=False),
        "portal_url": portal_url()}, status_code=201)


def _user_or_404(session: SessionDep, username: str) -> User:
    try:
        return service.get_user(username, session=session)
    except service.WorkforceError:
        raise PageDenied(404, f"There is no user named {username!r}.") from None


def _user_page(request: Request, session: SessionDep, subject: User, error: str | None = None,
               status_code: int = 200) -> HTMLResponse:
    names = service.teams_by_user(session=session).get(subject.id, [])
    teams = service.list_teams(session=session)
    return render(request, "workforce/user.html", {
        "subject": subject, "roles": list(Role),
        "member_of": [t for t in teams if t.name in names], "other_teams": [t for t in teams if t.name not in names],
        "tokens": [(row, service.token_state(row)) for row in service.user_tokens(subject, session=session)],
        "error": error}, status_code=status_code)


@router.get("/workforce/users/{username}", response_class=HTMLResponse)
def user_page(request: Request, username: str, session: SessionDep, _admin: AdminPage) -> Response:
    return _user_page(request, session, _user_or_404(session, username))


def _back_to_user(username: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"/workforce/users/{quote(username)}?notice={notice}", status_code=303)


@router.post("/workforce/users/{username}/disable")
def disable_user(request: Request, username: str, session: SessionDep, admin: AdminPage, _form: Form) -> Response:
    subject = _user_or_404(session, username)
    try:
        service.set_disabled(subject, True, actor=admin.user, session=session)
    except service.WorkforceError as exc:
        return _user_page(request, session, subject, str(exc).capitalize() + ".", 422)
    return _back_to_user(username, "disabled")


@router.post("/workforce/users/{username}/enable")
def enable_user(username: str, session: SessionDep, _admin: AdminPage, _form: Form) -> Response:
    service.set_disabled(_user_or_404(session, username), False, session=session)
    return _back_to_user(username, "enabled")


@router.post("/workforce/users/{username}/role")
def change_role(request: Request, username: str, session: SessionDep, admin: AdminPage, form: Form) -> Response:
    subject = _user_or_404(session, username)
    role = form_text(form, "role")
    if role not in {r.value for r in Role}:
        return _user_page(request, session, subject, f"Role must be one of {', '.join(r.value for r in Role)}.", 422)
    if subject.id == admin.user.id and role != Role.ADMIN.value:
        return _user_page(request, session, subject, "You cannot take the admin role from yourself.", 422)
    subject.role = role
    return _back_to_user(username, "role-changed")


@router.post("/workforce/users/{username}/reset-password", response_class=HTMLResponse)
def reset_password(request: Request, username: str, session: SessionDep, admin: AdminPage, _form: Form) -> Response:
    subject = _user_or_404(session, username)
    if subject.id == admin.user.id:
        return _user_page(request, session, subject, "Change your own password on your account page.", 422)
    secret = service.reset_password(subject, session=session)
    session.commit()
    return render(request, "workforce/secret.html", {
        "title": f"Password of {subject.username} reset", "subject": subject, "secret": secret,
        "secret_label": "Temporary password", "emailed": _email_password(subject, secret, reset=True),
        "portal_url": portal_url()})


@router.post("/workforce/users/{username}/tokens", response_class=HTMLResponse)
def create_token(request: Request, username: str, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    subject = _user_or_404(session, username)
    name = form_text(form, "name") or "api"
    try:
        days = int(form_text(form, "days") or "0")
        if not 0 <= days <= 3650:
            raise ValueError
    except ValueError:
        return _user_page(request, session, subject, "Days must be a whole number from 0 (never expires) to 3650.",
                          422)
    if subject.disabled:
        return _user_page(request, session, subject, "A disabled user cannot get tokens.", 422)
    token, _ = service.issue_token(subject, name=name[:100], ttl=timedelta(days=days) if days else None,
                                   session=session)
    session.commit()
    return render(request, "workforce/secret.html", {
        "title": f"API token for {subject.username}", "subject": subject, "secret": token,
        "secret_label": "Token", "token_name": name[:100], "emailed": None, "portal_url": None}, status_code=201)


@router.post("/workforce/users/{username}/tokens/{token_id}/revoke")
def revoke_token(username: str, token_id: int, session: SessionDep, _admin: AdminPage, _form: Form) -> Response:
    try:
        service.revoke_token(_user_or_404(session, username), token_id, session=session)
    except service.WorkforceError as exc:
        raise PageDenied(404, str(exc).capitalize() + ".") from None
    return _back_to_user(username, "token-revoked")


@router.post("/workforce/users/{username}/teams")
def join_team(request: Request, username: str, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    subject = _user_or_404(session, username)
    try:
        service.add_to_team(service.get_team(form_text(form, "team"), session=session), subject, session=session)
    except service.WorkforceError as exc:
        return _user_page(request, session, subject, str(exc).capitalize() + ".", 422)
    return _back_to_user(username, "member-added")


def _teams_page(request: Request, session: SessionDep, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    teams = service.list_teams(session=session)
    return render(request, "workforce/teams.html", {
        "teams": [(team, service.team_members(team, session=session)) for team in teams],
        "users": service.list_users(session=session), "error": error}, status_code=status_code)


@router.get("/workforce/teams", response_class=HTMLResponse)
def teams_page(request: Request, session: SessionDep, _admin: AdminPage) -> Response:
    return _teams_page(request, session)


@router.post("/workforce/teams")
def create_team(request: Request, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    try:
        service.create_team(form_text(form, "name"), form_text(form, "description"), session=session)
    except service.WorkforceError as exc:
        return _teams_page(request, session, str(exc).capitalize() + ".", 422)
    return RedirectResponse("/workforce/teams?notice=team-created", status_code=303)


def _team_or_404(session: SessionDep, team_id: int) -> Team:
    team = session.get(Team, team_id)
    if team is None:
        raise PageDenied(404, f"There is no team {team_id}.")
    return team


@router.post("/workforce/teams/{team_id}/members")
def add_member(request: Request, team_id: int, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    team = _team_or_404(session, team_id)
    try:
        service.add_to_team(team, service.get_user(form_text(form, "username"), session=session), session=session)
    except service.WorkforceError as exc:
        return _teams_page(request, session, str(exc).capitalize() + ".", 422)
    return RedirectResponse("/workforce/teams?notice=member-added", status_code=303)


@router.post("/workforce/teams/{team_id}/members/{username}/remove")
def remove_member(team_id: int, username: str, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    team = _team_or_404(session, team_id)
    service.remove_from_team(team, _user_or_404(session, username), session=session)
    back = safe_next(form_text(form, "back")) or "/workforce/teams"
    return RedirectResponse(f"{back}?notice=member-removed", status_code=303)


@router.post("/workforce/teams/{team_id}/delete")
def delete_team(team_id: int, session: SessionDep, _admin: AdminPage, _form: Form) -> Response:
    service.delete_team(_team_or_404(session, team_id), session=session)
    return RedirectResponse("/workforce/teams?notice=team-deleted", status_code=303)
