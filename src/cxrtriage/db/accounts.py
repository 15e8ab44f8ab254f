"""Accounts, browser sessions and the sign-in throttle for the review app. Passwords are hashed
with argon2id.

The throttle counts failed sign-ins in `login_failures`, one row per (name, address) while its
window is open, whichever way the password came (the form or HTTP Basic). A pair is refused after
`attempts` failures, an address after `address_attempts` failures for any names, each until the
window has passed since its last failure. Nothing a stranger does from elsewhere locks a name out
of another address. The audit log gets one `login_failed` row when a pair's window opens and one
`login_failures` summary (counts, first and last time) when it closes, so its size grows with
pairs and windows, not with attempts."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Integer, String, UniqueConstraint, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from cxrtriage.db.models import Base, User, WebSession, as_utc, utcnow
from cxrtriage.db.review import audit, iso

ROLES = ("radiologist", "admin")
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the answer time the same.
_DUMMY_HASH = _hasher.hash("not a password anyone has")


class AccountError(ValueError):
    """A request about an account that cannot be carried out; the message names the argument."""


@dataclass(frozen=True)
class UserRecord:
    """An account as the rest of the program sees it: never the password hash."""

    id: int
    username: str
    role: str
    active: bool
    created_at: datetime | None


def _user(row: User) -> UserRecord:
    return UserRecord(row.id, row.username, row.role, row.active, as_utc(row.created_at))


def _check_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise AccountError("username must be 1-64 letters, digits or . _ @ -")
    return username


def _check_password(password: str) -> str:
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")
    return password


def add_user(session: Session, username: str, password: str, role: str) -> UserRecord:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    _check_username(username)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} already exists")
    user = User(username=username, password_hash=_hasher.hash(_check_password(password)), role=role)
    session.add(user)
    session.flush()
    return _user(user)


def list_users(session: Session) -> list[UserRecord]:
    return [_user(row) for row in session.scalars(select(User).order_by(User.username)).all()]


def find_user(session: Session, user_id: int) -> UserRecord | None:
    row = session.get(User, user_id)
    return _user(row) if row is not None else None


def _get(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"no user {username!r}")
    return user


def disable_user(session: Session, username: str) -> None:
    """A disabled user can no longer sign in, and their open sessions end now."""
    user = _get(session, username)
    user.active = False
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def set_password(session: Session, username: str, password: str) -> None:
    user = _get(session, username)
    user.password_hash = _hasher.hash(_check_password(password))
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def authenticate(session: Session, username: str, password: str) -> UserRecord | None:
    """The active user with this password, or None. Takes the same time for unknown users."""
    user = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return _user(user)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, user_id: int, hours: float) -> tuple[str, str]:
    """A new browser session of an active user: returns (cookie token, CSRF token). Only the
    token's hash is kept. AccountError when the user is gone or disabled meanwhile."""
    user = session.get(User, user_id)
    if user is None or not user.active:
        raise AccountError("no such active user")
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))  # tidy up expired ones
    session.add(WebSession(token_sha256=_digest(token), user_id=user.id, csrf_token=csrf,
                           expires_at=utcnow() + timedelta(hours=hours)))
    return token, csrf


def session_user(session: Session, token: str, now: datetime | None = None) -> tuple[UserRecord, str] | None:
    """The active user and CSRF token of an unexpired session, or None."""
    now = now or utcnow()
    row = session.execute(select(WebSession, User).join(User, User.id == WebSession.user_id)
                          .where(WebSession.token_sha256 == _digest(token))).first()
    if row is None:
        return None
    web_session, user = row
    expires = web_session.expires_at
    if expires.tzinfo is None:  # SQLite hands back naive datetimes
        expires = expires.replace(tzinfo=now.tzinfo)
    if expires < now or not user.active:
        return None
    return _user(user), web_session.csrf_token


def close_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_sha256 == _digest(token)))


# --- the sign-in throttle (one path for the form and HTTP Basic) --------------------------------

ANY_NAME = "*"  # never a valid username: the row that counts refusals at a locked address


class LoginFailures(Base):
    """Failed sign-ins of one (name, address) pair while its window is open (migration 0007).
    State, not history: a row is deleted, after its summary goes to the audit log, when its window
    closes or the pair signs in."""

    __tablename__ = "login_failures"
    __table_args__ = (UniqueConstraint("username", "client", name="uq_login_failures_username_client"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64), index=True)
    first_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # last failure (refusal: *)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    basic: Mapped[int] = mapped_column(Integer, default=0)  # of the failures, those over HTTP Basic
    refused: Mapped[int] = mapped_column(Integer, default=0)  # attempts refused unchecked while locked


@dataclass(frozen=True)
class LoginPolicy:
    """The throttle's numbers (from the CXRTRIAGE_WEB_LOGIN_* settings)."""

    attempts: int  # failures that lock one (name, address) pair
    address_attempts: int  # failures, any names, that lock one address
    window_seconds: float  # a lock lasts this long after the last failure
    global_attempts: int  # failures from everywhere that start the slow lane


@dataclass(frozen=True)
class Throttle:
    """What to do with one attempt before its password is checked."""

    refused: bool  # locked: answer 429 without checking the password
    retry_after: int = 0  # seconds until the lock lifts, for Retry-After
    slow: bool = False  # over the global cap and this address has failed: the slow lane


def check_login(session: Session, username: str, client: str, policy: LoginPolicy,
                now: datetime | None = None) -> Throttle:
    """The throttle's decision for one attempt. A refusal is counted here (in the pair's row, or
    the address's `*` row), never as an audit row of its own."""
    now = now or utcnow()
    name, client = username[:64], client[:64]
    close_windows(session, policy.window_seconds, now)
    rows = session.scalars(select(LoginFailures).where(LoginFailures.client == client,
                                                       LoginFailures.failures > 0)).all()
    pair = next((row for row in rows if row.username == name), None)
    from_address = sum(row.failures for row in rows)
    waits = []
    if pair is not None and pair.failures >= policy.attempts:
        waits.append(as_utc(pair.last_at))
    if rows and from_address >= policy.address_attempts:
        waits.append(min(as_utc(row.last_at) for row in rows))
    if waits:
        _bump(session, name if pair is not None else ANY_NAME, client, now, refused=1)
        left = policy.window_seconds - (now - max(waits)).total_seconds()
        return Throttle(True, retry_after=max(1, int(left + 0.999)))
    everywhere = int(session.scalar(select(func.coalesce(func.sum(LoginFailures.failures), 0))) or 0)
    return Throttle(False, slow=everywhere >= policy.global_attempts and from_address > 0)


def note_failure(session: Session, username: str, client: str, via: str, now: datetime | None = None) -> int:
    """Count a wrong password (or unknown or disabled name); the first of a window is audited.
    Returns the pair's failures in its window."""
    name, client = username[:64], client[:64]
    count = _bump(session, name, client, now or utcnow(), failures=1, basic=int(via == "basic"))
    if count == 1:
        audit(session, "login_failed", name, client=client, via=via)
    return count


def note_success(session: Session, username: str, client: str, via: str, record: bool = True) -> None:
    """A right password closes the pair's window (its summary is audited) and, if `record`,
    audits the sign-in."""
    name, client = username[:64], client[:64]
    for row in session.execute(delete(LoginFailures).where(
            LoginFailures.username == name, LoginFailures.client == client)
            .returning(*_SUMMARY).execution_options(synchronize_session=False)).all():
        _summarise(session, row._asdict())
    if record:
        audit(session, "login", name, client=client, via=via)


def close_windows(session: Session, window_seconds: float, now: datetime | None = None) -> int:
    """Audit a summary of each pair whose window has passed, and forget it. DELETE ... RETURNING,
    so two processes closing at once write each summary once. Returns how many closed."""
    cutoff = (now or utcnow()) - timedelta(seconds=window_seconds)
    if session.scalar(select(LoginFailures.id).where(LoginFailures.last_at < cutoff).limit(1)) is None:
        return 0  # the common case, read only: no write lock taken on SQLite
    closed = session.execute(delete(LoginFailures).where(LoginFailures.last_at < cutoff)
                             .returning(*_SUMMARY).execution_options(synchronize_session=False)).all()
    for row in closed:
        _summarise(session, row._asdict())
    return len(closed)


_SUMMARY = (LoginFailures.username, LoginFailures.client, LoginFailures.first_at, LoginFailures.last_at,
            LoginFailures.failures, LoginFailures.basic, LoginFailures.refused)


def _summarise(session: Session, row: dict[str, Any]) -> None:
    """One audit row for a closed window, unless its one `login_failed` row already says it all."""
    if row["failures"] <= 1 and not row["refused"]:
        return
    audit(session, "login_failures", row["username"], client=row["client"], failures=row["failures"],
          basic=row["basic"], form=row["failures"] - row["basic"], refused=row["refused"],
          first=iso(row["first_at"]), last=iso(row["last_at"]))


def _bump(session: Session, name: str, client: str, now: datetime, failures: int = 0, basic: int = 0,
          refused: int = 0) -> int:
    """Add to the pair's counters in one statement (INSERT ... ON CONFLICT DO UPDATE), so that
    concurrent attempts neither lose a count nor collide; returns the failures after."""
    row = LoginFailures
    dialect = session.get_bind().dialect.name
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    updates: dict[str, Any] = {"failures": row.failures + failures, "basic": row.basic + basic,
                               "refused": row.refused + refused}
    if failures or name == ANY_NAME:
        updates["last_at"] = now
    statement = insert(row).values(username=name, client=client, first_at=now, last_at=now,
                                   failures=failures, basic=basic, refused=refused)
    statement = statement.on_conflict_do_update(index_elements=["username", "client"], set_=updates)
    return int(session.execute(statement.returning(row.failures)).scalar_one())
