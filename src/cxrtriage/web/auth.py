"""Who is asking. One dependency, `require_user`, guards every route but /healthz, /metrics and the
sign-in form: pages use a session cookie (HttpOnly, SameSite, Secure behind TLS) with a CSRF token
on every form; /api/ also takes HTTP Basic credentials, for scripts."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from dataclasses import dataclass

from fastapi import Depends, Request

from cxrtriage.db.accounts import authenticate, session_user
from cxrtriage.db.models import User
from cxrtriage.db.session import Database

logger = logging.getLogger(__name__)

COOKIE = "cxrtriage_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Principal:
    """The signed-in user as the views see it (a detached copy, never a live ORM row)."""

    id: int
    username: str
    role: str
    csrf_token: str  # empty for HTTP Basic callers, who have no session

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class LoginRequired(Exception):
    """A page was asked for without a valid session: answered with a redirect to the form."""


class Unauthorized(Exception):
    """An /api/ call without valid credentials: answered with 401."""


class CsrfRejected(Exception):
    """A state-changing request from a session without the session's CSRF token: 403."""


class Forbidden(Exception):
    """Signed in, but not allowed (admin pages): 403."""


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        username, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if sep else None


def _principal(user: User, csrf: str) -> Principal:
    return Principal(user.id, user.username, user.role, csrf)


async def require_user(request: Request) -> Principal:
    """The dependency on every protected route. Also checks CSRF on state-changing requests made
    with the session cookie (a form field or the X-CSRF-Token header)."""
    db: Database = request.app.state.db
    token = request.cookies.get(COOKIE)
    found: Principal | None = None
    if token:
        with db.session() as session:
            row = session_user(session, token)
            if row is not None:
                found = _principal(*row)
    if found is None and is_api(request):
        credentials = _basic(request)
        if credentials is not None:
            with db.session() as session:
                user = authenticate(session, *credentials)
                if user is not None:
                    found = _principal(user, "")
    if found is None:
        raise Unauthorized() if is_api(request) else LoginRequired()
    if request.method not in SAFE_METHODS and found.csrf_token:
        await _check_csrf(request, found.csrf_token)
    if request.method not in SAFE_METHODS and not found.csrf_token:
        # HTTP Basic: a browser may send cached credentials cross-site, but never a JSON body.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise CsrfRejected()
    request.state.user = found
    return found


async def _check_csrf(request: Request, expected: str) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else ""
    if not sent or not hmac.compare_digest(sent, expected):
        raise CsrfRejected()


def require_admin(user: Principal = Depends(require_user)) -> Principal:  # noqa: B008
    if not user.is_admin:
        raise Forbidden()
    return user
