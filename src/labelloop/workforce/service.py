"""Users, passwords (argon2) and API tokens (stored as SHA-256)."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.db import utcnow
from labelloop.workforce.models import ApiToken, Role, User

_hasher = PasswordHasher()
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 10
# Verified against when the user does not exist, so timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("labelloop-no-such-user")


class AuthError(Exception):
    """Sign-in or token failure; the message is safe to show."""


class WorkforceError(ValueError):
    """A bad user or password request; the message says what is allowed."""


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _hasher.hash(password)


def check_password_rules(password: str) -> None:
    """Raise :class:`WorkforceError` unless ``password`` is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WorkforceError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 256:
        raise WorkforceError("a password may have at most 256 characters")


def temporary_password() -> str:
    """A random temporary password that is easy to type."""
    return secrets.token_urlsafe(12)


def create_user(db: Session, username: str, role: Role | str, *, password: str | None = None,
                email: str | None = None, temporary: bool = True) -> tuple[User, str]:
    """Create a user; returns it with its (temporary, unless given and ``temporary=False``) password."""
    if not _USERNAME.match(username):
        raise WorkforceError("a username is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
                             "or digit")
    try:
        role = Role(role)
    except ValueError:
        raise WorkforceError(f"role must be one of {', '.join(r.value for r in Role)}") from None
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise WorkforceError(f"user {username!r} exists already")
    secret = password or temporary_password()
    check_password_rules(secret)
    user = User(username=username, role=role.value, email=email, password_hash=hash_password(secret),
                must_change_password=temporary)
    db.add(user)
    db.flush()
    return user, secret


def authenticate(db: Session, username: str, password: str) -> User:
    """The user whose password matches, or :class:`AuthError`."""
    user = db.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        raise AuthError("wrong username or password") from None
    if user is None:
        raise AuthError("wrong username or password")
    if user.disabled:
        raise AuthError("this user is disabled")
    return user


def change_password(db: Session, user: User, new_password: str) -> None:
    """Set a new password chosen by the user; earlier tokens stop working."""
    check_password_rules(new_password)
    user.password_hash = hash_password(new_password)
    user.must_change_password = False
    user.password_changed_at = utcnow()
    revoke_user_tokens(db, user)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(db: Session, user: User, *, name: str = "api", ttl: timedelta | None = None) -> tuple[str, ApiToken]:
    """A new bearer token for ``user``; the plain token is returned once and only its hash is kept."""
    token = "llp_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, token_hash=_token_digest(token), name=name,
                   expires_at=utcnow() + ttl if ttl else None)
    db.add(row)
    db.flush()
    return token, row


def user_for_token(db: Session, token: str) -> User:
    """The enabled user a valid, unrevoked, unexpired token belongs to, or :class:`AuthError`."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == _token_digest(token)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        raise AuthError("token expired")
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        raise AuthError("this user is disabled")
    row.last_used_at = now
    return user


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def revoke_user_tokens(db: Session, user: User) -> int:
    """Revoke every live token of ``user``; returns how many."""
    rows = db.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


def get_user(db: Session, username: str) -> User:
    """The user named ``username``."""
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise WorkforceError(f"no user named {username!r}")
    return user


def list_users(db: Session) -> list[User]:
    """All users by name."""
    return list(db.scalars(select(User).order_by(User.username)))


def ensure_admin(db: Session, password: str | None) -> str | None:
    """Create the ``admin`` user on first start; returns its temporary password when one was generated."""
    if db.scalar(select(User).where(User.username == "admin")) is not None:
        return None
    _, secret = create_user(db, "admin", Role.ADMIN, password=password, temporary=password is None)
    return None if password else secret
