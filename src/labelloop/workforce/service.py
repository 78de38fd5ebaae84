"""Users, passwords (argon2) and API tokens (stored as SHA-256)."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from labelloop.db import utcnow
from labelloop.workforce.models import ApiToken, Role, SignInThrottle, Team, TeamMember, User, WebSession

log = logging.getLogger(__name__)
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
    """Set a new password chosen by the user; earlier tokens and browser sessions stop working."""
    check_password_rules(new_password)
    user.password_hash = hash_password(new_password)
    user.must_change_password = False
    user.password_changed_at = utcnow()
    revoke_user_tokens(db, user)
    revoke_user_sessions(db, user)


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
    # Recorded at most once a minute: a write on every request would serialise requests on SQLite.
    if row.last_used_at is None or _aware(row.last_used_at) < now - timedelta(minutes=1):
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


# ── browser sessions ─────────────────────────────────────────────────────────

SESSION_IDLE = timedelta(hours=8)
SESSION_LIFETIME = timedelta(days=7)
_TOUCH_EVERY = timedelta(minutes=1)


def start_session(db: Session, user: User, *, address: str = "", user_agent: str = "",
                  replaces: str | None = None) -> tuple[str, WebSession]:
    """A new browser session for ``user``: returns the cookie value (shown once) and the row.

    Always a new random id, so a session id planted before sign-in is worthless (session fixation);
    the session named by ``replaces``, if any, is revoked.
    """
    if replaces:
        end_session(db, replaces)
    token = secrets.token_urlsafe(32)
    now = utcnow()
    # Forget sessions that ended more than a day ago, so the table stays small.
    # (No in-session sync: loaded rows hold naive SQLite datetimes that Python cannot compare with ``now``.)
    db.execute(delete(WebSession).where((WebSession.expires_at < now - timedelta(days=1)) |
                                        (WebSession.revoked_at < now - timedelta(days=1)))
               .execution_options(synchronize_session=False))
    row = WebSession(user_id=user.id, token_hash=_token_digest(token), csrf_token=secrets.token_urlsafe(32),
                     created_at=now, last_seen_at=now, expires_at=now + SESSION_LIFETIME,
                     client_address=address[:64], user_agent=user_agent[:255])
    db.add(row)
    db.flush()
    return token, row


def session_for_cookie(db: Session, token: str) -> tuple[User, WebSession]:
    """The enabled user and live session behind a session cookie, or :class:`AuthError`."""
    row = db.scalar(select(WebSession).where(WebSession.token_hash == _token_digest(token)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise AuthError("signed out")
    if _aware(row.expires_at) <= now or _aware(row.last_seen_at) + SESSION_IDLE <= now:
        raise AuthError("the session expired")
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        raise AuthError("this user is disabled")
    if now - _aware(row.last_seen_at) >= _TOUCH_EVERY:
        row.last_seen_at = now
    return user, row


def end_session(db: Session, token: str) -> bool:
    """Revoke the session behind a cookie value (sign-out); returns whether one was live."""
    row = db.scalar(select(WebSession).where(WebSession.token_hash == _token_digest(token)))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def revoke_user_sessions(db: Session, user: User, *, keep: WebSession | None = None) -> int:
    """Revoke every live browser session of ``user`` except ``keep``; returns how many."""
    query = select(WebSession).where(WebSession.user_id == user.id, WebSession.revoked_at.is_(None))
    if keep is not None:
        query = query.where(WebSession.id != keep.id)
    rows = db.scalars(query).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


def change_own_password(db: Session, user: User, current_password: str, new_password: str, *,
                        address: str = "", user_agent: str = "") -> str:
    """A signed-in user changes their password: every session and token they hold ends, and a fresh session
    is started for this browser; returns its cookie value."""
    try:
        authenticate(db, user.username, current_password)
    except AuthError:
        raise WorkforceError("the current password is wrong") from None
    if current_password == new_password:
        raise WorkforceError("choose a new password that differs from the current one")
    change_password(db, user, new_password)
    token, _ = start_session(db, user, address=address, user_agent=user_agent)
    return token


# ── slowing down repeated failed sign-ins ────────────────────────────────────

THROTTLE_WINDOW = timedelta(minutes=15)
USER_FREE_FAILURES = 5
ADDRESS_FREE_FAILURES = 20
FIRST_DELAY_SECONDS = 15
MAX_DELAY_SECONDS = 15 * 60


class Throttled(AuthError):
    """Too many failed sign-ins for a username or a client address; ``retry_after`` is in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"too many failed sign-ins; try again in {retry_after} seconds")
        self.retry_after = retry_after


def _throttle_keys(username: str, address: str) -> list[tuple[str, int]]:
    keys = [(f"user:{username.strip().lower()[:150]}", USER_FREE_FAILURES)]
    if address:
        keys.append((f"addr:{address[:150]}", ADDRESS_FREE_FAILURES))
    return keys


def check_throttle(db: Session, username: str, address: str, *, now: datetime | None = None) -> None:
    """Raise :class:`Throttled` while the username or the address must wait after failed sign-ins."""
    now = now or utcnow()
    waits = []
    for key, _ in _throttle_keys(username, address):
        row = db.get(SignInThrottle, key)
        if row is not None and row.blocked_until is not None and _aware(row.blocked_until) > now:
            waits.append((_aware(row.blocked_until) - now).total_seconds())
    if waits:
        raise Throttled(max(1, math.ceil(max(waits))))


def record_failure(db: Session, username: str, address: str, *, now: datetime | None = None) -> None:
    """Count a failed sign-in; past the free failures each further one doubles the wait (15 s … 15 min)."""
    now = now or utcnow()
    db.execute(delete(SignInThrottle).where(SignInThrottle.last_failure_at < now - THROTTLE_WINDOW,
                                            SignInThrottle.blocked_until.is_(None) |
                                            (SignInThrottle.blocked_until < now))
               .execution_options(synchronize_session=False))
    for key, free in _throttle_keys(username, address):
        row = db.get(SignInThrottle, key)
        if row is None:
            row = SignInThrottle(key=key, failures=0, last_failure_at=now)
            db.add(row)
        row.failures += 1
        row.last_failure_at = now
        if row.failures >= free:
            delay = min(FIRST_DELAY_SECONDS * 2 ** (row.failures - free), MAX_DELAY_SECONDS)
            row.blocked_until = now + timedelta(seconds=delay)
    db.flush()


def clear_failures(db: Session, username: str) -> None:
    """A successful sign-in clears the username's count (the address's count runs out on its own)."""
    key, _ = _throttle_keys(username, "")[0]
    db.execute(delete(SignInThrottle).where(SignInThrottle.key == key))


def sign_in(username: str, password: str, address: str) -> int:
    """Check the throttle, then the password; returns the user's id or raises :class:`AuthError`.

    A wrong password is counted in a transaction of its own, so the count sticks although the caller's
    transaction rolls back on the error.
    """
    from labelloop import db as database

    with database.session() as db:
        try:
            check_throttle(db, username, address)
        except Throttled as exc:
            log.warning("sign-in refused: too many failures", extra={"user": username[:64], "client": address,
                                                                      "retry_after": exc.retry_after})
            raise
        user = db.scalar(select(User).where(User.username == username))
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
            wrong = user is None
        except (VerificationError, InvalidHashError):
            wrong = True
        if not wrong:
            clear_failures(db, username)
            if user.disabled:
                raise AuthError("this user is disabled")
            return user.id
    with database.session() as db:
        record_failure(db, username, address)
    log.warning("sign-in failed", extra={"user": username[:64], "client": address})
    raise AuthError("wrong username or password")


# ── users, as admins manage them ─────────────────────────────────────────────


def set_disabled(db: Session, user: User, disabled: bool, *, actor: User | None = None) -> None:
    """Disable (every session and token ends) or enable a user; nobody disables themselves."""
    if disabled and actor is not None and actor.id == user.id:
        raise WorkforceError("you cannot disable yourself")
    user.disabled = disabled
    if disabled:
        revoke_user_sessions(db, user)
        revoke_user_tokens(db, user)


def reset_password(db: Session, user: User) -> str:
    """Give ``user`` a new temporary password (to change at next sign-in); their sessions and tokens end."""
    secret = temporary_password()
    user.password_hash = hash_password(secret)
    user.must_change_password = True
    user.password_changed_at = utcnow()
    revoke_user_sessions(db, user)
    revoke_user_tokens(db, user)
    return secret


def user_tokens(db: Session, user: User) -> list[ApiToken]:
    """Every API token of ``user``, newest first."""
    return list(db.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())))


def token_state(row: ApiToken) -> str:
    """``revoked``, ``expired`` or ``active``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and _aware(row.expires_at) <= utcnow():
        return "expired"
    return "active"


def revoke_token(db: Session, user: User, token_id: int) -> ApiToken:
    """Revoke one of ``user``'s tokens."""
    row = db.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise WorkforceError(f"{user.username} has no token {token_id}")
    row.revoked_at = row.revoked_at or utcnow()
    return row


# ── teams ────────────────────────────────────────────────────────────────────

_TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


def create_team(db: Session, name: str, description: str = "") -> Team:
    """A new team."""
    name = name.strip()
    if not _TEAM_NAME.match(name):
        raise WorkforceError("a team name is 1-64 letters, digits, spaces, '.', '_' or '-', starting with a "
                             "letter or digit")
    if db.scalar(select(Team).where(Team.name == name)) is not None:
        raise WorkforceError(f"team {name!r} exists already")
    team = Team(name=name, description=description.strip()[:500])
    db.add(team)
    db.flush()
    return team


def get_team(db: Session, name: str) -> Team:
    """The team named ``name``."""
    team = db.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise WorkforceError(f"no team named {name!r}")
    return team


def list_teams(db: Session) -> list[Team]:
    """All teams by name."""
    return list(db.scalars(select(Team).order_by(Team.name)))


def add_to_team(db: Session, team: Team, user: User) -> bool:
    """Put ``user`` into ``team``; returns False when they were in it already."""
    if db.get(TeamMember, (team.id, user.id)) is not None:
        return False
    db.add(TeamMember(team_id=team.id, user_id=user.id))
    db.flush()
    return True


def remove_from_team(db: Session, team: Team, user: User) -> bool:
    """Take ``user`` out of ``team``; returns whether they were in it."""
    member = db.get(TeamMember, (team.id, user.id))
    if member is None:
        return False
    db.delete(member)
    return True


def delete_team(db: Session, team: Team) -> None:
    """Delete a team (its users stay)."""
    db.execute(delete(TeamMember).where(TeamMember.team_id == team.id))
    db.delete(team)


def team_members(db: Session, team: Team) -> list[User]:
    """The users in ``team``, by name."""
    return list(db.scalars(select(User).join(TeamMember, TeamMember.user_id == User.id)
                           .where(TeamMember.team_id == team.id).order_by(User.username)))


def teams_by_user(db: Session) -> dict[int, list[str]]:
    """Each user id with the names of their teams."""
    found: dict[int, list[str]] = {}
    for user_id, name in db.execute(select(TeamMember.user_id, Team.name).join(Team, Team.id == TeamMember.team_id)
                                    .order_by(Team.name)):
        found.setdefault(user_id, []).append(name)
    return found
