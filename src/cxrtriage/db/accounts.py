"""Accounts and browser sessions for the review app. Passwords are hashed with argon2id."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cxrtriage.db.models import User, WebSession, utcnow

ROLES = ("radiologist", "admin")
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the answer time the same.
_DUMMY_HASH = _hasher.hash("not a password anyone has")


class AccountError(ValueError):
    """A request about an account that cannot be carried out; the message names the argument."""


def _check_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise AccountError("username must be 1-64 letters, digits or . _ @ -")
    return username


def _check_password(password: str) -> str:
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")
    return password


def add_user(session: Session, username: str, password: str, role: str) -> User:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    _check_username(username)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} already exists")
    user = User(username=username, password_hash=_hasher.hash(_check_password(password)), role=role)
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)).all())


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


def authenticate(session: Session, username: str, password: str) -> User | None:
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
    return user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, user: User, hours: float) -> tuple[str, str]:
    """A new browser session: returns (cookie token, CSRF token). Only the token's hash is kept."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.execute(delete(WebSession).where(WebSession.expires_at < utcnow()))  # tidy up expired ones
    session.add(WebSession(token_sha256=_digest(token), user_id=user.id, csrf_token=csrf,
                           expires_at=utcnow() + timedelta(hours=hours)))
    return token, csrf


def session_user(session: Session, token: str, now: datetime | None = None) -> tuple[User, str] | None:
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
    return user, web_session.csrf_token


def close_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_sha256 == _digest(token)))
