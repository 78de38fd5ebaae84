"""Web pages: sign-in, sign-out, password change and the workforce admin; the session and CSRF checks every
page uses.

Sessions: a random cookie value (HttpOnly, SameSite=Lax, Secure when the public URL is https) whose SHA-256
is a ``web_sessions`` row, so a session can be revoked; a new value at every sign-in (no session fixation).
CSRF: every form carries the session's synchronizer token; the sign-in form, which has no session yet, uses a
double-submit cookie instead. A POST without the right token gets 403 and changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from labelloop.config import get_settings
from labelloop.workforce import service
from labelloop.workforce.models import Role, Team, User, WebSession
from labelloop.workforce.views import SessionDep

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
templates = Jinja2Templates(directory=WEB_DIR / "templates")
SESSION_COOKIE = "labelloop_session"
CSRF_COOKIE = "labelloop_csrf"
PASSWORD_PAGE = "/account/password"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ROLE_HOME = {Role.ADMIN.value: "/dashboard", Role.OPERATOR.value: "/dashboard", Role.WORKER.value: "/review",
             Role.CONSUMER.value: "/account"}
NOTICES = {
    "signed-out": "You are signed out.",
    "password-changed": "Your password is changed. Every other session and API token of yours has ended.",
    "disabled": "The user is disabled; their sessions and API tokens have ended.",
    "enabled": "The user is enabled again.",
    "token-revoked": "The token is revoked.",
    "team-created": "The team is created.",
    "team-deleted": "The team is deleted; its users stay.",
    "member-added": "The user is in the team.",
    "member-removed": "The user is out of the team.",
    "role-changed": "The role is changed.",
}

router = APIRouter(include_in_schema=False)


# ── rendering and errors ─────────────────────────────────────────────────────


@dataclass(frozen=True)
class Account:
    """What pages show of the signed-in user, copied out of the database session (error pages render after
    it has closed)."""

    username: str
    role: str
    email: str | None
    must_change_password: bool


@dataclass
class Visitor:
    """A signed-in browser: the user and their session."""

    user: User
    session: WebSession
    account: Account
    csrf_token: str


class PageRedirect(Exception):
    """Send the browser elsewhere (e.g. to sign in first)."""

    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


class PageDenied(Exception):
    """Show an error page with ``status_code`` and a message safe to show."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    """A page from ``web/templates`` with the signed-in user, the CSRF token and the security headers."""
    visitor: Visitor | None = getattr(request.state, "visitor", None)
    notice = NOTICES.get(request.query_params.get("notice", ""))
    values = {"user": visitor.account if visitor else None, "csrf_token": visitor.csrf_token if visitor else "",
              "notice": notice, "Role": Role, **(context or {})}
    return templates.TemplateResponse(request, name, values, status_code=status_code,
                                      headers={**SECURITY_HEADERS, **(headers or {})})


async def page_redirect(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageRedirect)
    return RedirectResponse(exc.location, status_code=303, headers={"Cache-Control": "no-store"})


async def page_denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageDenied)
    return render(request, "error.html", {"status_code": exc.status_code, "message": exc.message},
                  status_code=exc.status_code)


def install(app: FastAPI) -> None:
    """Add the web pages (sign-in, workforce, review portal) and their error pages to ``app``."""
    from labelloop.review.pages import router as review_pages

    app.add_exception_handler(PageRedirect, page_redirect)
    app.add_exception_handler(PageDenied, page_denied)
    app.include_router(router)
    app.include_router(review_pages)


def client_address(request: Request) -> str:
    """The client's address as the server sees it (the proxy's, behind one that uvicorn does not trust)."""
    return request.client.host if request.client else ""


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site (never another site: no scheme, no ``//``, no backslash)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(c) < 32 for c in target):
        return None
    return target


def portal_url() -> str:
    """The review portal's sign-in address, as workers are given it."""
    return f"{get_settings().public_url.rstrip('/')}/review"


def _secure_cookies() -> bool:
    return get_settings().public_url.startswith("https://")


def set_session_cookie(response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(service.SESSION_LIFETIME.total_seconds()), path="/",
                        httponly=True, samesite="lax", secure=_secure_cookies())


# ── dependencies: who is signed in, what role, a checked form ────────────────


def current_visitor(request: Request, session: SessionDep) -> Visitor | None:
    """The signed-in visitor, or None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        user, web_session = service.session_for_cookie(session, token)
    except service.AuthError:
        return None
    visitor = Visitor(user, web_session, Account(user.username, user.role, user.email, user.must_change_password),
                      web_session.csrf_token)
    request.state.visitor = visitor
    return visitor


MaybeVisitor = Annotated[Visitor | None, Depends(current_visitor)]


def _sign_in_first(request: Request) -> PageRedirect:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return PageRedirect(f"/sign-in?next={quote(target, safe='/')}")


def signed_in_any(request: Request, visitor: MaybeVisitor) -> Visitor:
    """Any signed-in visitor, even one who still has to change a temporary password."""
    if visitor is None:
        raise _sign_in_first(request)
    return visitor


def signed_in(request: Request, visitor: Annotated[Visitor, Depends(signed_in_any)]) -> Visitor:
    """A signed-in visitor with a password of their own (else off to change it)."""
    if visitor.user.must_change_password:
        raise PageRedirect(PASSWORD_PAGE)
    return visitor


def page_role(*roles: Role) -> Any:
    """A dependency letting through visitors with one of ``roles`` (admins always); others get a 403 page."""
    allowed = {role.value for role in roles} | {Role.ADMIN.value}

    def check(visitor: Annotated[Visitor, Depends(signed_in)]) -> Visitor:
        if visitor.user.role not in allowed:
            raise PageDenied(403, "Your role may not open this page.")
        return visitor

    return check


async def checked_form(request: Request, visitor: Annotated[Visitor, Depends(signed_in_any)]) -> FormData:
    """The posted form, once its CSRF token matches the session's synchronizer token (else a 403 page)."""
    form = await request.form()
    given = form.get("csrf_token")
    if not isinstance(given, str) or not secrets.compare_digest(given.encode(), visitor.csrf_token.encode()):
        raise PageDenied(403, "This form is not valid any more (it has no or a wrong security token). "
                              "Go back, reload the page and send it again.")
    return form


AdminPage = Annotated[Visitor, Depends(page_role(Role.ADMIN))]
Form = Annotated[FormData, Depends(checked_form)]


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


# ── sign-in, sign-out, password ──────────────────────────────────────────────


def _sign_in_page(request: Request, next_path: str | None, error: str | None = None, status_code: int = 200,
                  username: str = "", headers: dict[str, str] | None = None) -> HTMLResponse:
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "sign_in.html", {"next": next_path or "", "error": error, "sign_in_csrf": csrf,
                                                "username": username}, status_code=status_code, headers=headers)
    response.set_cookie(CSRF_COOKIE, csrf, path="/sign-in", httponly=True, samesite="strict",
                        secure=_secure_cookies())
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
    next_path = safe_next(_text(form, "next"))
    username, password = _text(form, "username"), form.get("password")
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
        message = "Wrong username or password." if "wrong" in str(exc) else "This user is disabled."
        return _sign_in_page(request, next_path, message, 401, username)
    user = session.get(User, user_id)
    token, _ = service.start_session(session, user, address=client_address(request),
                                     user_agent=request.headers.get("user-agent", ""),
                                     replaces=request.cookies.get(SESSION_COOKIE))
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
    service.end_session(session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/sign-in?notice=signed-out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, visitor: Annotated[Visitor, Depends(signed_in)]) -> Response:
    return render(request, "account.html", {"home": ROLE_HOME[visitor.user.role]})


@router.get(PASSWORD_PAGE, response_class=HTMLResponse)
def password_page(request: Request, _visitor: Annotated[Visitor, Depends(signed_in_any)],
                  next: str | None = None) -> Response:
    return render(request, "password.html", {"next": safe_next(next) or "",
                                             "min_length": service.MIN_PASSWORD_LENGTH})


@router.post(PASSWORD_PAGE, response_class=HTMLResponse)
def change_password(request: Request, session: SessionDep, visitor: Annotated[Visitor, Depends(signed_in_any)],
                    form: Form) -> Response:
    next_path = safe_next(_text(form, "next"))
    current, new, again = (form.get(name) for name in ("current_password", "new_password", "confirm_password"))
    error = None
    if not all(isinstance(value, str) and value for value in (current, new, again)):
        error = "Fill in all three fields."
    elif new != again:
        error = "The new password and its repetition differ."
    if error is None:
        user = session.get(User, visitor.user.id)
        try:
            token = service.change_own_password(session, user, str(current), str(new),
                                                address=client_address(request),
                                                user_agent=request.headers.get("user-agent", ""))
        except service.WorkforceError as exc:
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
        "users": service.list_users(session), "teams": service.list_teams(session),
        "teams_by_user": service.teams_by_user(session), "portal_url": portal_url(), "roles": list(Role),
        "error": error, "values": values or {"role": Role.WORKER.value}}, status_code=status_code)


@router.get("/workforce", response_class=HTMLResponse)
def workforce(request: Request, session: SessionDep, _admin: AdminPage) -> Response:
    return _users_page(request, session)


def _email_password(user: User, secret: str, *, reset: bool) -> str | None:
    """Email a temporary password when SMTP is configured and the user has an address; returns what happened."""
    settings = get_settings()
    if not settings.smtp_host or not user.email:
        return None
    from labelloop.notifications.channels import send_email

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
    values = {name: _text(form, name) for name in ("username", "email", "role", "team")}
    try:
        user, secret = service.create_user(session, values["username"], values["role"] or Role.WORKER.value,
                                           email=values["email"] or None)
        if values["team"]:
            service.add_to_team(session, service.get_team(session, values["team"]), user)
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
        return service.get_user(session, username)
    except service.WorkforceError:
        raise PageDenied(404, f"There is no user named {username!r}.") from None


def _user_page(request: Request, session: SessionDep, subject: User, error: str | None = None,
               status_code: int = 200) -> HTMLResponse:
    names = service.teams_by_user(session).get(subject.id, [])
    teams = service.list_teams(session)
    return render(request, "workforce/user.html", {
        "subject": subject, "roles": list(Role),
        "member_of": [t for t in teams if t.name in names], "other_teams": [t for t in teams if t.name not in names],
        "tokens": [(row, service.token_state(row)) for row in service.user_tokens(session, subject)],
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
        service.set_disabled(session, subject, True, actor=admin.user)
    except service.WorkforceError as exc:
        return _user_page(request, session, subject, str(exc).capitalize() + ".", 422)
    return _back_to_user(username, "disabled")


@router.post("/workforce/users/{username}/enable")
def enable_user(username: str, session: SessionDep, _admin: AdminPage, _form: Form) -> Response:
    service.set_disabled(session, _user_or_404(session, username), False)
    return _back_to_user(username, "enabled")


@router.post("/workforce/users/{username}/role")
def change_role(request: Request, username: str, session: SessionDep, admin: AdminPage, form: Form) -> Response:
    subject = _user_or_404(session, username)
    role = _text(form, "role")
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
    secret = service.reset_password(session, subject)
    session.commit()
    return render(request, "workforce/secret.html", {
        "title": f"Password of {subject.username} reset", "subject": subject, "secret": secret,
        "secret_label": "Temporary password", "emailed": _email_password(subject, secret, reset=True),
        "portal_url": portal_url()})


@router.post("/workforce/users/{username}/tokens", response_class=HTMLResponse)
def create_token(request: Request, username: str, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    subject = _user_or_404(session, username)
    name = _text(form, "name") or "api"
    try:
        days = int(_text(form, "days") or "0")
        if not 0 <= days <= 3650:
            raise ValueError
    except ValueError:
        return _user_page(request, session, subject, "Days must be a whole number from 0 (never expires) to 3650.",
                          422)
    if subject.disabled:
        return _user_page(request, session, subject, "A disabled user cannot get tokens.", 422)
    token, _ = service.issue_token(session, subject, name=name[:100], ttl=timedelta(days=days) if days else None)
    session.commit()
    return render(request, "workforce/secret.html", {
        "title": f"API token for {subject.username}", "subject": subject, "secret": token,
        "secret_label": "Token", "token_name": name[:100], "emailed": None, "portal_url": None}, status_code=201)


@router.post("/workforce/users/{username}/tokens/{token_id}/revoke")
def revoke_token(username: str, token_id: int, session: SessionDep, _admin: AdminPage, _form: Form) -> Response:
    try:
        service.revoke_token(session, _user_or_404(session, username), token_id)
    except service.WorkforceError as exc:
        raise PageDenied(404, str(exc).capitalize() + ".") from None
    return _back_to_user(username, "token-revoked")


@router.post("/workforce/users/{username}/teams")
def join_team(request: Request, username: str, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    subject = _user_or_404(session, username)
    try:
        service.add_to_team(session, service.get_team(session, _text(form, "team")), subject)
    except service.WorkforceError as exc:
        return _user_page(request, session, subject, str(exc).capitalize() + ".", 422)
    return _back_to_user(username, "member-added")


def _teams_page(request: Request, session: SessionDep, error: str | None = None,
                status_code: int = 200) -> HTMLResponse:
    teams = service.list_teams(session)
    return render(request, "workforce/teams.html", {
        "teams": [(team, service.team_members(session, team)) for team in teams],
        "users": service.list_users(session), "error": error}, status_code=status_code)


@router.get("/workforce/teams", response_class=HTMLResponse)
def teams_page(request: Request, session: SessionDep, _admin: AdminPage) -> Response:
    return _teams_page(request, session)


@router.post("/workforce/teams")
def create_team(request: Request, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    try:
        service.create_team(session, _text(form, "name"), _text(form, "description"))
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
        service.add_to_team(session, team, service.get_user(session, _text(form, "username")))
    except service.WorkforceError as exc:
        return _teams_page(request, session, str(exc).capitalize() + ".", 422)
    return RedirectResponse("/workforce/teams?notice=member-added", status_code=303)


@router.post("/workforce/teams/{team_id}/members/{username}/remove")
def remove_member(team_id: int, username: str, session: SessionDep, _admin: AdminPage, form: Form) -> Response:
    team = _team_or_404(session, team_id)
    service.remove_from_team(session, team, _user_or_404(session, username))
    back = safe_next(_text(form, "back")) or "/workforce/teams"
    return RedirectResponse(f"{back}?notice=member-removed", status_code=303)


@router.post("/workforce/teams/{team_id}/delete")
def delete_team(team_id: int, session: SessionDep, _admin: AdminPage, _form: Form) -> Response:
    service.delete_team(session, _team_or_404(session, team_id))
    return RedirectResponse("/workforce/teams?notice=team-deleted", status_code=303)
