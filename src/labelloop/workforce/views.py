"""Sign-in for the API (bearer tokens), users and tokens; the role checks every route uses."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from labelloop import db
from labelloop.config import get_settings
from labelloop.web.dependencies import Admin, AnyUser, PasswordChanger, SessionDep
from labelloop.workforce import service
from labelloop.workforce.models import (
    ApiToken,
    Role,
    TokenRequest,
    TokenResponse,
    User,
    UserCreate,
    UserCreated,
    UserRead,
)

router = APIRouter(prefix="/api/v1", tags=["workforce"])


async def _credentials(request: Request) -> TokenRequest:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            return TokenRequest.model_validate(await request.json())
        form = await request.form()
        return TokenRequest(username=str(form.get("username", "")), password=str(form.get("password", "")))
    except (ValidationError, ValueError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "send username and password as a form or as JSON") from None


@router.post("/auth/token", response_model=TokenResponse,
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": TokenRequest.model_json_schema()},
                 "application/x-www-form-urlencoded": {"schema": TokenRequest.model_json_schema()}}}})
async def issue_token(request: Request, session: SessionDep) -> TokenResponse:
    """Exchange a username and password (form or JSON) for a bearer token.

    Repeated failures are slowed down per username and per client address: 429 with ``Retry-After``."""
    given = await _credentials(request)
    try:
        user_id = await run_in_threadpool(service.sign_in, given.username, given.password,
                                          request.client.host if request.client else "")
    except service.Throttled as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc),
                            headers={"Retry-After": str(exc.retry_after)}) from None
    except service.AuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    user = session.get(User, user_id)
    token, row = service.issue_token(user, ttl=timedelta(hours=get_settings().token_ttl_hours), session=session)
    return TokenResponse(access_token=token, expires_at=row.expires_at, role=user.role,
                         must_change_password=user.must_change_password)


class PasswordChange(BaseModel):
    """Body of ``POST /auth/password``."""

    current_password: str
    new_password: str


@router.post("/auth/password")
def change_own_password(body: PasswordChange, request: Request, user: PasswordChanger,
                        session: SessionDep) -> dict[str, str]:
    """Change your own password (the only call a temporary password allows besides ``GET /me``); every token
    you hold stops working. Wrong current passwords are throttled like sign-ins (429 with ``Retry-After``)."""
    try:
        service.set_own_password(user, body.current_password, body.new_password, session=session,
                                 address=request.client.host if request.client else "")
    except service.Throttled as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc),
                            headers={"Retry-After": str(exc.retry_after)}) from None
    except service.WorkforceError as exc:
        code = status.HTTP_403_FORBIDDEN if "wrong" in str(exc) else status.HTTP_422_UNPROCESSABLE_CONTENT
        raise HTTPException(code, str(exc)) from None
    return {"status": "changed", "detail": "sign in again with the new password"}


@router.get("/me", response_model=UserRead)
def me(user: PasswordChanger) -> User:
    """The signed-in user."""
    return user


@router.get("/users", response_model=list[UserRead])
def list_users(_: Admin, session: SessionDep) -> list[User]:
    """All users."""
    return service.list_users(session=session)


@router.post("/users", response_model=UserCreated, status_code=201)
def create_user(body: UserCreate, _: Admin, session: SessionDep) -> dict[str, Any]:
    """Create a user with a role; the temporary password is shown once."""
    user, secret = service.create_user(body.username, body.role, password=body.password, email=body.email,
                                       session=session)
    return {**UserRead.model_validate(user, from_attributes=True).model_dump(), "temporary_password": secret}


@router.get("/tokens")
def list_tokens(user: AnyUser, session: SessionDep) -> list[dict[str, Any]]:
    """Your API tokens (never the tokens themselves)."""
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id))
    return [{"id": r.id, "name": r.name, "created_at": r.created_at, "expires_at": r.expires_at,
             "revoked_at": r.revoked_at, "last_used_at": r.last_used_at} for r in rows]


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: Annotated[int, Path(ge=1, le=db.MAX_ROW_ID)], user: AnyUser,
                 session: SessionDep) -> dict[str, Any]:
    """Revoke one of your tokens (admins: anyone's)."""
    row = session.get(ApiToken, token_id)
    if row is None or (row.user_id != user.id and user.role != Role.ADMIN.value):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id}")
    row.revoked_at = row.revoked_at or db.utcnow()
    return {"id": token_id, "revoked_at": row.revoked_at}
