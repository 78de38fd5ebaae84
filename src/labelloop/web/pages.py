"""The web kit every page uses: one template set, rendering with the security headers, page errors and
redirects, who is signed in (visitor and account), role checks, CSRF-checked forms and session cookies.

Sessions: a random cookie value (HttpOnly, SameSite=Lax, Secure when the public URL is https) whose SHA-256
is a ``web_sessions`` row, so a session can be revoked; a new value at every sign-in (no session fixation).
CSRF: every form carries the session's synchronizer token; the sign-in form, which has no session yet, uses a
double-submit cookie instead; the console's JSON endpoints take the token in the ``X-CSRF-Token`` header. A
POST without the right token gets 403 and changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from labelloop import __version__
from labelloop.config import get_settings
from labelloop.web.dependencies import SessionDep
from labelloop.web.format import FILTERS
from labelloop.workforce import service
from labelloop.workforce.models import Role, User, WebSession

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=WEB_DIR / "templates")
templates.env.filters.update(FILTERS)
templates.env.globals["version"] = __version__
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
API_PAGE = "/account/api"
ROLE_HOME = {Role.ADMIN.value: "/dashboard", Role.OPERATOR.value: "/dashboard", Role.WORKER.value: "/review",
             Role.CONSUMER.value: API_PAGE}
CSRF_HEADER = "X-CSRF-Token"
CONSOLE_ROLES = {Role.OPERATOR.value, Role.ADMIN.value}
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
    "own-token-revoked": "Your token is revoked: requests with it are refused from now on.",
}

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


def install_error_pages(app: FastAPI) -> None:
    """Answer :class:`PageRedirect` with a redirect and :class:`PageDenied` with the error page."""
    app.add_exception_handler(PageRedirect, page_redirect)
    app.add_exception_handler(PageDenied, page_denied)


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


def secure_cookies() -> bool:
    return get_settings().public_url.startswith("https://")


def set_session_cookie(response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(service.SESSION_LIFETIME.total_seconds()), path="/",
                        httponly=True, samesite="lax", secure=secure_cookies())


# ── dependencies: who is signed in, what role, a checked form ────────────────


def current_visitor(request: Request, session: SessionDep) -> Visitor | None:
    """The signed-in visitor, or None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        user, web_session = service.session_for_cookie(token, session=session)
    except service.AuthError:
        return None
    visitor = Visitor(user, web_session, Account(user.username, user.role, user.email, user.must_change_password),
                      web_session.csrf_token)
    request.state.visitor = visitor
    session.commit()  # no database connection held while a form or an upload is read (see current_user)
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
Operator = Annotated[Visitor, Depends(page_role(Role.OPERATOR))]
Form = Annotated[FormData, Depends(checked_form)]


def sentence(message: str) -> str:
    """A service's message as a sentence for a page: capital first letter, full stop at the end."""
    message = message.strip()
    return message[:1].upper() + message[1:] + ("" if message.endswith((".", "!", "?")) else ".")


def form_text(form: FormData, name: str) -> str:
    """A form field as stripped text (empty when absent or not text)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def operator_api(visitor: MaybeVisitor, request: Request) -> Visitor:
    """For the console's JSON endpoints (called by the page's script): a signed-in operator or admin whose
    request carries the session's CSRF token in the ``X-CSRF-Token`` header. Answers 401/403 JSON, never a
    redirect, so the script can show why."""
    if visitor is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "your session has ended: sign in again")
    if visitor.user.must_change_password:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "change your temporary password first")
    if visitor.user.role not in CONSOLE_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
    given = request.headers.get(CSRF_HEADER, "")
    if not given or not secrets.compare_digest(given.encode(), visitor.csrf_token.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the request has no or a wrong security token: reload the "
                                                       "page and try again")
    return visitor


OperatorApi = Annotated[Visitor, Depends(operator_api)]
