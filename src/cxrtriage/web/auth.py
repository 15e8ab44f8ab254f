"""Who is asking. Pages use a session cookie (HttpOnly, SameSite, Secure behind TLS) with a CSRF
token on every form; /api/ also takes HTTP Basic credentials, for scripts.

Credentials are checked by `AuthGate`, pure ASGI middleware, from the headers alone and before
anything reads the body: FastAPI parses a route's body before it runs the route's dependencies, so
a dependency would come too late for a stranger's endless upload. The gate hands the caller to
`require_user`, the one dependency on every router but the open ones, which adds the CSRF check.

Every password, from the sign-in form or HTTP Basic, goes through `Passwords.check`: one throttle
and one audit path (db/accounts.py), and argon2 never on the event loop."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from urllib.parse import quote

import anyio
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cxrtriage.config import Settings
from cxrtriage.db.accounts import (
    LoginPolicy,
    Throttle,
    UserRecord,
    authenticate,
    check_login,
    note_failure,
    note_success,
    session_user,
)
from cxrtriage.db.session import Database
from cxrtriage.web.limits import drain

logger = logging.getLogger(__name__)

COOKIE = "cxrtriage_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/login"})  # and everything under /static/


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


@dataclass(frozen=True)
class Refusal:
    """A password that was not accepted: 401 (wrong, or no such active user) or 429 (locked)."""

    status: int
    retry_after: int = 0


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


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/static/")


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


def _basic(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value or len(value) > 1024:
        return None
    try:
        username, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (username, password) if sep else None


def _principal(user: UserRecord, csrf: str) -> Principal:
    return Principal(user.id, user.username, user.role, csrf)


class Passwords:
    """The one way a password is checked. Per attempt: the throttle (a database call, in the
    thread pool) may refuse it unchecked; over the global cap, an address that has failed waits
    `slowdown` seconds in a single file (the slow lane: at most one such check per `slowdown`
    seconds from all of them together, and a name signing in from a clean address skips it);
    then argon2 runs in a thread of its own limiter, `checks` at a time, so a spray can take
    neither the thread pool nor more than `checks` × 64 MiB (argon2-cffi's default parameters;
    its four lanes already use four cores, which is why the default is one). The throttle is asked
    again inside the limiter, so concurrent guesses cannot all pass a lock that is closing."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.policy = LoginPolicy(settings.web_login_attempts,
                                  settings.web_login_address_attempts or settings.web_login_attempts,
                                  settings.web_login_window_seconds, settings.web_login_global_attempts)
        self.slowdown = settings.web_login_slowdown_seconds
        self.checks = settings.web_password_checks
        # anyio primitives belong to one event loop; tests run one app under several.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                               tuple[anyio.CapacityLimiter, anyio.Lock]]
        self._loops = weakref.WeakKeyDictionary()
        self._audited: dict[tuple[str, str], float] = {}  # Basic sign-ins audited in this window
        self._audited_lock = threading.Lock()

    def _primitives(self) -> tuple[anyio.CapacityLimiter, anyio.Lock]:
        loop = asyncio.get_running_loop()
        if loop not in self._loops:
            self._loops[loop] = (anyio.CapacityLimiter(self.checks), anyio.Lock())
        return self._loops[loop]

    async def check(self, username: str, password: str, client: str, via: str) -> Principal | Refusal:
        """The user these credentials name, or why not. `via`: "form" or "basic", for the audit."""
        limiter, slow_lane = self._primitives()
        throttle = await run_in_threadpool(self._throttle, username, client)
        if throttle.refused:
            return Refusal(429, throttle.retry_after)
        if throttle.slow and self.slowdown:
            async with slow_lane:
                await anyio.sleep(self.slowdown)
        return await anyio.to_thread.run_sync(self._verify, username, password, client, via, limiter=limiter)

    def _throttle(self, username: str, client: str) -> Throttle:
        with self.db.session() as session:
            return check_login(session, username, client, self.policy)

    def _verify(self, username: str, password: str, client: str, via: str) -> Principal | Refusal:
        with self.db.session() as session:
            decision = check_login(session, username, client, self.policy)
            session.commit()  # no write lock held while argon2 runs
            if decision.refused:
                return Refusal(429, decision.retry_after)
            user = authenticate(session, username, password)
            if user is None:
                note_failure(session, username, client, via)
                return Refusal(401)
            record = via != "basic" or self._first(username, client)
            note_success(session, username, client, via, record=record)
            return _principal(user, "")

    def _first(self, username: str, client: str) -> bool:
        """Whether this Basic sign-in is the first of its (name, address) in the window: each API
        call signs in again, and one audit row a window says as much as one a call."""
        now = time.monotonic()
        with self._audited_lock:
            if len(self._audited) > 4096:
                window = self.policy.window_seconds
                self._audited = {k: t for k, t in self._audited.items() if now - t < window}
            last = self._audited.get((username, client))
            if last is not None and now - last < self.policy.window_seconds:
                return False
            self._audited[(username, client)] = now
            return True


class AuthGate:
    """Pure ASGI: finds the caller from the cookie or, on /api/, HTTP Basic, before the body is
    read, and refuses the others there: /api/ with 401 (429 while locked), pages with a redirect
    to the sign-in form. A refused request's body is read only if it is small (limits.drain);
    otherwise the answer closes the connection, so the rest is never read."""

    def __init__(self, app: ASGIApp, db: Database, passwords: Passwords) -> None:
        self.app = app
        self.db = db
        self.passwords = passwords

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        found = await self._identify(request)
        if isinstance(found, Principal):
            request.state.user = found  # scope["state"]: what require_user reads
            await self.app(scope, receive, send)
            return
        kept = await drain(scope, receive)
        response = self._refusal(request, found)
        if not kept:
            response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _identify(self, request: Request) -> Principal | Refusal:
        token = request.cookies.get(COOKIE)
        if token:
            found = await run_in_threadpool(self._session, token)
            if found is not None:
                return found
        if is_api(request):
            credentials = _basic(request)
            if credentials is not None:
                return await self.passwords.check(*credentials, client_of(request), via="basic")
        return Refusal(401)

    def _session(self, token: str) -> Principal | None:
        with self.db.session() as session:
            row = session_user(session, token)
            return _principal(*row) if row is not None else None

    @staticmethod
    def _refusal(request: Request, refusal: Refusal) -> Response:
        if not is_api(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        if refusal.status == 429:
            return JSONResponse({"detail": "too many failed sign-ins from this address; try again later"},
                                status_code=429, headers={"Retry-After": str(refusal.retry_after)})
        return JSONResponse({"detail": "authentication required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="cxr-triage"'})


async def require_user(request: Request) -> Principal:
    """The dependency of every signed-in router (web/app.py): the caller the gate found (it
    refused everyone else already). Also checks CSRF on state-changing requests made with the
    session cookie (a form field or the X-CSRF-Token header)."""
    found = getattr(request.state, "user", None)
    if not isinstance(found, Principal):  # only if the gate is missing: refuse, never guess
        raise Unauthorized() if is_api(request) else LoginRequired()
    if request.method not in SAFE_METHODS and found.csrf_token:
        await _check_csrf(request, found.csrf_token)
    if request.method not in SAFE_METHODS and not found.csrf_token:
        # HTTP Basic: a browser may send cached credentials cross-site, but never a JSON body.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise CsrfRejected()
    return found


async def _check_csrf(request: Request, expected: str) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()  # through the body limit, like every read
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else ""
    if not sent or not hmac.compare_digest(sent, expected):
        raise CsrfRejected()


def require_admin(user: Principal = Depends(require_user)) -> Principal:  # noqa: B008
    if not user.is_admin:
        raise Forbidden()
    return user
