"""Request dependencies of the API and the pages: the database session of a request, and who is calling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from labelloop import db
from labelloop.workforce import service
from labelloop.workforce.models import Role, User

bearer = HTTPBearer(auto_error=False)


def get_session() -> Iterator[Session]:
    """A database session for one request, committed at its end."""
    with db.session() as session:
        yield session


# scope="function": the session commits before the response is sent, so a client never reads stale state.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def token_user(session: SessionDep,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
    """The user behind the request's bearer token (even one still holding a temporary password), or 401."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in first: send 'Authorization: Bearer <token>' "
                            "with a token from POST /api/v1/auth/token",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        user = service.user_for_token(credentials.credentials, session=session)
    except service.AuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    # Identified: end the transaction, so no database connection is held while the body is read (16 uploads
    # trickling in at 1 byte/s used to hold the whole pool, and every other request waited 30 s for a 500).
    session.commit()
    return user


# Says why a 403 was answered, for a client that words the fix its own way (the CLI: labelloop.client).
REFUSAL_HEADER = "X-Labelloop-Refusal"
TEMPORARY_PASSWORD = "temporary-password"  # the account must change its temporary password first


def current_user(user: Annotated[User, Depends(token_user)]) -> User:
    """The user behind the request's bearer token, who has chosen their own password; else 401 or 403."""
    if user.must_change_password:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this account still has its temporary password: change it "
                            "first with POST /api/v1/auth/password {current_password, new_password}, then sign in "
                            "again", headers={REFUSAL_HEADER: TEMPORARY_PASSWORD})
    return user


def require(*roles: Role) -> Callable[..., User]:
    """A dependency that lets through only users with one of ``roles`` (admins always)."""
    allowed = {role.value for role in roles} | {Role.ADMIN.value}

    def check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"the {user.role} role may not do this; it needs: {', '.join(sorted(allowed))}")
        return user

    return check


def require_recent(*roles: Role) -> Callable[..., Awaitable[User]]:
    """:func:`require` for the hot routes (``POST /detect``, the bucket's PUT): a token verified in the last
    seconds (``workforce.service.recent_tokens``: forgotten at once when a user or token changes here) is
    checked in the event loop without the database; any other is checked in one short session on one worker
    thread. Same answers (401/403) as :func:`require`, without its four worker-thread hops and a session."""
    allowed = require(*roles)

    def verify(credentials: HTTPAuthorizationCredentials | None) -> User:
        with db.session() as session:
            return allowed(current_user(token_user(session, credentials)))

    async def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
        user = service.recent_tokens.user(credentials.credentials) if credentials is not None else None
        if user is not None:
            return allowed(current_user(user))
        return await run_in_threadpool(verify, credentials)

    return caller


def remembered_caller(*roles: Role) -> Callable[[bytes | None], User | None]:
    """For a route answered before FastAPI's routing (``DetectFastPath``, ``PutFastPath``): the user of an
    ``Authorization`` header value whose bearer token was verified in the last seconds and who may call it
    (:func:`require_recent`'s rule); ``None`` for anything else, which the route itself then answers (401, 403,
    or a check in the database)."""
    allowed = require(*roles)

    def user(authorization: bytes | None) -> User | None:
        scheme, token = get_authorization_scheme_param(authorization.decode("latin-1") if authorization else None)
        remembered = service.recent_tokens.user(token) if scheme.lower() == "bearer" and token else None
        if remembered is None:
            return None
        try:
            return allowed(current_user(remembered))
        except HTTPException:
            return None

    return user


AnyUser = Annotated[User, Depends(current_user)]
# Only for changing a temporary password and reading one's own account.
PasswordChanger = Annotated[User, Depends(token_user)]
Admin = Annotated[User, Depends(require(Role.ADMIN))]
