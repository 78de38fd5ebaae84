"""Users, passwords (argon2) and API tokens (stored as SHA-256)."""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
import re
import secrets
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, event, inspect, select
from sqlalchemy.orm import Session

from labelloop import db
from labelloop.config import get_settings
from labelloop.db import utcnow
from labelloop.workforce.models import ApiToken, Role, SignInThrottle, Team, TeamMember, User, WebSession

log = logging.getLogger(__name__)
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 10


class AuthError(Exception):
    """Sign-in or token failure; the message is safe to show."""


class WorkforceError(ValueError):
    """A bad user or password request; the message says what is allowed."""


def _hasher() -> PasswordHasher:
    """The argon2id hasher with the configured parameters (``LABELLOOP_PASSWORD_HASH_*``)."""
    settings = get_settings()
    return _hasher_with(settings.password_hash_memory_kib, settings.password_hash_passes,
                        settings.password_hash_lanes)


@functools.cache
def _hasher_with(memory_kib: int, passes: int, lanes: int) -> PasswordHasher:
    return PasswordHasher(time_cost=passes, memory_cost=memory_kib, parallelism=lanes)


def _dummy_hash(hasher: PasswordHasher) -> str:
    """What an unknown user's sign-in verifies against, so that timing does not reveal which usernames exist: an
    argon2id hash with ``hasher``'s parameters, which set a check's cost (a salt and a digest of zeros: no password
    gives that digest, and a check computes the whole hash before it compares).

    Written out, not hashed: a hash made at import cost every process 0.1-0.7 s of CPU at start, and one made at
    first use would make the first unknown user's sign-in take two hashes' time."""
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode().rstrip("=")

    return (f"$argon2id$v=19$m={hasher.memory_cost},t={hasher.time_cost},p={hasher.parallelism}"
            f"${b64(bytes(hasher.salt_len))}${b64(bytes(hasher.hash_len))}")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` with the configured parameters."""
    return _hasher().hash(password)


def check_password_rules(password: str) -> None:
    """Raise :class:`WorkforceError` unless ``password`` is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WorkforceError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 256:
        raise WorkforceError("a password may have at most 256 characters")


def temporary_password() -> str:
    """A random temporary password that is easy to type."""
    return secrets.token_urlsafe(12)


def create_user(username: str, role: Role | str, *, session: Session, password: str | None = None,
                email: str | None = None, temporary: bool = True) -> tuple[User, str]:
    """Create a user; returns it with its (temporary, unless given and ``temporary=False``) password."""
    if not _USERNAME.match(username):
        raise WorkforceError("a username is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
                             "or digit")
    try:
        role = Role(role)
    except ValueError:
        raise WorkforceError(f"role must be one of {', '.join(r.value for r in Role)}") from None
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise WorkforceError(f"user {username!r} exists already")
    secret = password or temporary_password()
    check_password_rules(secret)
    user = User(username=username, role=role.value, email=email, password_hash=hash_password(secret),
                must_change_password=temporary)
    session.add(user)
    session.flush()
    return user, secret


def change_password(user: User, new_password: str, *, session: Session) -> None:
    """Set a new password chosen by the user; earlier tokens and browser sessions stop working."""
    check_password_rules(new_password)
    user.password_hash = hash_password(new_password)
    user.must_change_password = False
    user.password_changed_at = utcnow()
    revoke_user_tokens(user, session=session)
    revoke_user_sessions(user, session=session)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(user: User, *, session: Session, name: str = "api", ttl: timedelta | None = None) -> tuple[str,
                ApiToken]:
    """A new bearer token for ``user``; the plain token is returned once and only its hash is kept."""
    token = "llp_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, token_hash=_token_digest(token), name=name,
                   expires_at=utcnow() + ttl if ttl else None)
    session.add(row)
    session.flush()
    return token, row


def user_for_token(token: str, *, session: Session) -> User:
    """The enabled user a valid, unrevoked, unexpired token belongs to, or :class:`AuthError`.

    A token found valid is remembered in :data:`recent_tokens` (read by ``POST /detect`` and the bucket's PUT)."""
    generation = recent_tokens.generation
    digest = _token_digest(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise AuthError("invalid or revoked token")
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        raise AuthError("token expired")
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        raise AuthError("this user is disabled")
    # Recorded at most once a minute: a write on every request would serialise requests on SQLite.
    if row.last_used_at is None or _aware(row.last_used_at) < now - timedelta(minutes=1):
        row.last_used_at = now
    expires = math.inf if row.expires_at is None else _aware(row.expires_at).timestamp()
    recent_tokens.remember(digest, _detached_copy(user), expires, generation)
    return user


def _detached_copy(user: User) -> User:
    """A copy of ``user``'s columns (but the password hash) that belongs to no session: what a remembered token
    answers with, safe to read from any thread whatever later happens to the request's session and its objects."""
    return User(**{attribute.key: getattr(user, attribute.key) for attribute in inspect(User).column_attrs
                   if attribute.key != "password_hash"})


class RecentTokens:
    """Bearer tokens found valid in the last ``seconds``, with their users, so that the hot ``POST /detect``
    path can skip the database lookup (and the thread it needs) for a caller it has just verified.

    Revocation is still honoured: any change to a user or a token committed by this process (a revoked
    token, a disabled user, a new role or password, a new token) forgets every remembered token at once, and
    a lookup that was running while such a change committed is not remembered (``generation``). A change made
    by another process sharing the database is seen after at most ``seconds``, when the entry lapses. A
    token's own expiry is checked on every use."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.generation = 0
        self._entries: dict[str, tuple[User, float]] = {}  # digest -> (user, usable until, epoch seconds)
        self._lock = threading.Lock()

    def user(self, token: str) -> User | None:
        """The user of ``token`` when it was found valid less than ``seconds`` ago and nothing changed since."""
        entry = self._entries.get(_token_digest(token))
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    def remember(self, digest: str, user: User, expires: float, generation: int) -> None:
        """Remember a token found valid by a lookup that started at ``generation`` (not when a user or token
        changed since: the lookup may have read the state before the change)."""
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) >= MAX_RECENT_TOKENS:
                self._entries.clear()
            self._entries[digest] = (user, min(expires, time.time() + self.seconds))

    def forget_all(self) -> None:
        """Forget every remembered token (a user or token changed)."""
        with self._lock:
            self.generation += 1
            self._entries = {}


RECENT_TOKEN_SECONDS = 2.0
MAX_RECENT_TOKENS = 10_000
recent_tokens = RecentTokens(RECENT_TOKEN_SECONDS)
_AUTH_CHANGED = "labelloop.auth_changed"


@event.listens_for(Session, "after_flush")
def _note_auth_changes(session: Session, _context: Any) -> None:
    """A flush that writes a user or a token: forget the remembered tokens now and again at commit. A token's
    ``last_used_at`` alone (recorded once a minute per token in use) changes nobody's access: it is ignored."""
    added_or_deleted = (obj for objects in (session.new, session.deleted) for obj in objects)
    if any(isinstance(obj, (User, ApiToken)) for obj in added_or_deleted) or any(
            _changes_access(obj) for obj in session.dirty):
        session.info[_AUTH_CHANGED] = True
        recent_tokens.forget_all()


def _changes_access(obj: object) -> bool:
    """Whether a modified object is a user, or a token with a change beyond its ``last_used_at``."""
    if isinstance(obj, User):
        return True
    if not isinstance(obj, ApiToken):
        return False
    changed = {attr.key for attr in inspect(obj).attrs if attr.history.has_changes()}
    return bool(changed - {"last_used_at"})


@event.listens_for(Session, "after_commit")
def _forget_at_commit(session: Session) -> None:
    if session.info.pop(_AUTH_CHANGED, False):
        recent_tokens.forget_all()


@event.listens_for(Session, "after_rollback")
def _nothing_changed(session: Session) -> None:
    session.info.pop(_AUTH_CHANGED, None)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def revoke_user_tokens(user: User, *, session: Session) -> int:
    """Revoke every live token of ``user``; returns how many."""
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


def get_user(username: str, *, session: Session) -> User:
    """The user named ``username``."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise WorkforceError(f"no user named {username!r}")
    return user


def list_users(*, session: Session) -> list[User]:
    """All users by name."""
    return list(session.scalars(select(User).order_by(User.username)))


def ensure_admin(password: str | None, *, session: Session) -> str | None:
    """Create the ``admin`` user on first start; returns its temporary password when one was generated."""
    if session.scalar(select(User).where(User.username == "admin")) is not None:
        return None
    _, secret = create_user("admin", Role.ADMIN, password=password, temporary=password is None, session=session)
    return None if password else secret


# ── browser sessions ─────────────────────────────────────────────────────────

SESSION_IDLE = timedelta(hours=8)
SESSION_LIFETIME = timedelta(days=7)
_TOUCH_EVERY = timedelta(minutes=1)


def start_session(user: User, *, session: Session, address: str = "", user_agent: str = "",
                  replaces: str | None = None) -> tuple[str, WebSession]:
    """A new browser session for ``user``: returns the cookie value (shown once) and the row.

    Always a new random id, so a session id planted before sign-in is worthless (session fixation);
    the session named by ``replaces``, if any, is revoked.
    """
    if replaces:
        end_session(replaces, session=session)
    token = secrets.token_urlsafe(32)
    now = utcnow()
    # Forget sessions that ended more than a day ago, so the table stays small.
    # (No in-session sync: loaded rows hold naive SQLite datetimes that Python cannot compare with ``now``.)
    session.execute(delete(WebSession).where((WebSession.expires_at < now - timedelta(days=1)) |
                                        (WebSession.revoked_at < now - timedelta(days=1)))
               .execution_options(synchronize_session=False))
    row = WebSession(user_id=user.id, token_hash=_token_digest(token), csrf_token=secrets.token_urlsafe(32),
                     created_at=now, last_seen_at=now, expires_at=now + SESSION_LIFETIME,
                     client_address=address[:64], user_agent=user_agent[:255])
    session.add(row)
    session.flush()
    return token, row


def session_for_cookie(token: str, *, session: Session) -> tuple[User, WebSession]:
    """The enabled user and live session behind a session cookie, or :class:`AuthError`."""
    row = session.scalar(select(WebSession).where(WebSession.token_hash == _token_digest(token)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise AuthError("signed out")
    if _aware(row.expires_at) <= now or _aware(row.last_seen_at) + SESSION_IDLE <= now:
        raise AuthError("the session expired")
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        raise AuthError("this user is disabled")
    if now - _aware(row.last_seen_at) >= _TOUCH_EVERY:
        row.last_seen_at = now
    return user, row


def end_session(token: str, *, session: Session) -> bool:
    """Revoke the session behind a cookie value (sign-out); returns whether one was live."""
    row = session.scalar(select(WebSession).where(WebSession.token_hash == _token_digest(token)))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


def revoke_user_sessions(user: User, *, session: Session, keep: WebSession | None = None) -> int:
    """Revoke every live browser session of ``user`` except ``keep``; returns how many."""
    query = select(WebSession).where(WebSession.user_id == user.id, WebSession.revoked_at.is_(None))
    if keep is not None:
        query = query.where(WebSession.id != keep.id)
    rows = session.scalars(query).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


def set_own_password(user: User, current_password: str, new_password: str, *, address: str,
                     session: Session) -> None:
    """A signed-in user replaces their password, naming the current one: wrong guesses count towards the
    sign-in throttle (:class:`Throttled`), the new password must differ from it, and every session and token
    of the user ends."""
    try:
        sign_in(user.username, current_password, address)
    except Throttled:
        raise
    except AuthError:
        raise WorkforceError("the current password is wrong") from None
    if current_password == new_password:
        raise WorkforceError("choose a new password that differs from the current one")
    change_password(user, new_password, session=session)


def change_own_password(user: User, current_password: str, new_password: str, *,
                        session: Session, address: str = "", user_agent: str = "") -> str:
    """A signed-in user changes their password: every session and token they hold ends, and a fresh session
    is started for this browser; returns its cookie value."""
    set_own_password(user, current_password, new_password, address=address, session=session)
    token, _ = start_session(user, address=address, user_agent=user_agent, session=session)
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


def check_throttle(username: str, address: str, *, session: Session, now: datetime | None = None) -> None:
    """Raise :class:`Throttled` while the username or the address must wait after failed sign-ins."""
    now = now or utcnow()
    waits = []
    for key, _ in _throttle_keys(username, address):
        row = session.get(SignInThrottle, key)
        if row is not None and row.blocked_until is not None and _aware(row.blocked_until) > now:
            waits.append((_aware(row.blocked_until) - now).total_seconds())
    if waits:
        raise Throttled(max(1, math.ceil(max(waits))))


def record_failure(username: str, address: str, *, session: Session, now: datetime | None = None) -> None:
    """Count a failed sign-in; past the free failures each further one doubles the wait (15 s … 15 min)."""
    now = now or utcnow()
    session.execute(delete(SignInThrottle).where(SignInThrottle.last_failure_at < now - THROTTLE_WINDOW,
                                            SignInThrottle.blocked_until.is_(None) |
                                            (SignInThrottle.blocked_until < now))
               .execution_options(synchronize_session=False))
    for key, free in _throttle_keys(username, address):
        row = session.get(SignInThrottle, key)
        if row is None:
            row = SignInThrottle(key=key, failures=0, last_failure_at=now)
            session.add(row)
        row.failures += 1
        row.last_failure_at = now
        if row.failures >= free:
            delay = min(FIRST_DELAY_SECONDS * 2 ** (row.failures - free), MAX_DELAY_SECONDS)
            row.blocked_until = now + timedelta(seconds=delay)
    session.flush()


def clear_failures(username: str, *, session: Session) -> None:
    """A successful sign-in clears the username's count (the address's count runs out on its own)."""
    key, _ = _throttle_keys(username, "")[0]
    session.execute(delete(SignInThrottle).where(SignInThrottle.key == key))


def sign_in(username: str, password: str, address: str) -> int:
    """Check the throttle, then the password; returns the user's id or raises :class:`AuthError`.

    A wrong password is counted in a transaction of its own, so the count sticks although the caller's
    transaction rolls back on the error.
    """
    with db.session() as session:
        try:
            check_throttle(username, address, session=session)
        except Throttled as exc:
            log.warning("sign-in refused: too many failures", extra={"user": username[:64], "client": address,
                                                                      "retry_after": exc.retry_after})
            raise
        user = session.scalar(select(User).where(User.username == username))
        hasher = _hasher()
        try:
            hasher.verify(user.password_hash if user else _dummy_hash(hasher), password)
            wrong = user is None
        except (VerificationError, InvalidHashError):
            wrong = True
        if not wrong and not user.disabled:
            clear_failures(username, session=session)
            _rehash_if_stale(user, password, hasher)
            return user.id
        if not wrong:  # the same answer as a wrong password: no oracle for a disabled account's password
            log.warning("sign-in refused: the user is disabled", extra={"user": username[:64], "client": address})
    with db.session() as session:
        record_failure(username, address, session=session)
    log.warning("sign-in failed", extra={"user": username[:64], "client": address})
    raise AuthError("wrong username or password")


def _rehash_if_stale(user: User, password: str, hasher: PasswordHasher) -> None:
    """Hash ``user``'s password again when it was made with other argon2 parameters than the configured ones, so
    that after an operator changes them every account's check soon costs what the unknown user's does."""
    if hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
        log.info("password hashed again with the configured parameters", extra={"user": user.username[:64]})


# ── users, as admins manage them ─────────────────────────────────────────────


def set_disabled(user: User, disabled: bool, *, session: Session, actor: User | None = None) -> None:
    """Disable (every session and token ends) or enable a user; nobody disables themselves."""
    if disabled and actor is not None and actor.id == user.id:
        raise WorkforceError("you cannot disable yourself")
    user.disabled = disabled
    if disabled:
        revoke_user_sessions(user, session=session)
        revoke_user_tokens(user, session=session)


def reset_password(user: User, *, session: Session) -> str:
    """Give ``user`` a new temporary password (to change at next sign-in); their sessions and tokens end."""
    secret = temporary_password()
    user.password_hash = hash_password(secret)
    user.must_change_password = True
    user.password_changed_at = utcnow()
    revoke_user_sessions(user, session=session)
    revoke_user_tokens(user, session=session)
    return secret


def user_tokens(user: User, *, session: Session) -> list[ApiToken]:
    """Every API token of ``user``, newest first."""
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())))


def token_state(row: ApiToken) -> str:
    """``revoked``, ``expired`` or ``active``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and _aware(row.expires_at) <= utcnow():
        return "expired"
    return "active"


def revoke_token(user: User, token_id: int, *, session: Session) -> ApiToken:
    """Revoke one of ``user``'s tokens."""
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise WorkforceError(f"{user.username} has no token {token_id}")
    row.revoked_at = row.revoked_at or utcnow()
    return row


# ── teams ────────────────────────────────────────────────────────────────────

_TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


def create_team(name: str, description: str = "", *, session: Session) -> Team:
    """A new team."""
    name = name.strip()
    if not _TEAM_NAME.match(name):
        raise WorkforceError("a team name is 1-64 letters, digits, spaces, '.', '_' or '-', starting with a "
                             "letter or digit")
    if session.scalar(select(Team).where(Team.name == name)) is not None:
        raise WorkforceError(f"team {name!r} exists already")
    team = Team(name=name, description=description.strip()[:500])
    session.add(team)
    session.flush()
    return team


def get_team(name: str, *, session: Session) -> Team:
    """The team named ``name``."""
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        raise WorkforceError(f"no team named {name!r}")
    return team


def list_teams(*, session: Session) -> list[Team]:
    """All teams by name."""
    return list(session.scalars(select(Team).order_by(Team.name)))


def add_to_team(team: Team, user: User, *, session: Session) -> bool:
    """Put ``user`` into ``team``; returns False when they were in it already."""
    if session.get(TeamMember, (team.id, user.id)) is not None:
        return False
    session.add(TeamMember(team_id=team.id, user_id=user.id))
    session.flush()
    return True


def remove_from_team(team: Team, user: User, *, session: Session) -> bool:
    """Take ``user`` out of ``team``; returns whether they were in it."""
    member = session.get(TeamMember, (team.id, user.id))
    if member is None:
        return False
    session.delete(member)
    return True


def delete_team(team: Team, *, session: Session) -> None:
    """Delete a team (its users stay)."""
    session.execute(delete(TeamMember).where(TeamMember.team_id == team.id))
    session.delete(team)


def team_members(team: Team, *, session: Session) -> list[User]:
    """The users in ``team``, by name."""
    return list(session.scalars(select(User).join(TeamMember, TeamMember.user_id == User.id)
                           .where(TeamMember.team_id == team.id).order_by(User.username)))


def teams_by_user(*, session: Session) -> dict[int, list[str]]:
    """Each user id with the names of their teams."""
    found: dict[int, list[str]] = {}
    for user_id, name in session.execute(select(TeamMember.user_id, Team.name).join(Team, Team.id == TeamMember.team_id)
                                    .order_by(Team.name)):
        found.setdefault(user_id, []).append(name)
    return found
