"""Signing in (the form; open) and out (signed in). Every password goes through
`Passwords.check` (web/auth.py): one throttle and one audit path for the form and HTTP Basic."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cxrtriage.db.accounts import AccountError, close_session, open_session
from cxrtriage.db.review import audit
from cxrtriage.db.session import Database
from cxrtriage.web.auth import (
    COOKIE,
    CsrfRejected,
    LoginRequired,
    Passwords,
    Principal,
    Refusal,
    client_of,
    require_user,
)
from cxrtriage.web.deps import get_session
from cxrtriage.web.pages import render

LOGIN_CSRF_COOKIE = "cxrtriage_login_csrf"
router = APIRouter()  # open: the sign-in form
signed_in = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "login.html", {"next": safe_next(next), "login_csrf": token, "error": ""})
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login")
async def login(request: Request, username: str = Form(""), password: str = Form(""),  # noqa: B008
                csrf_token: str = Form(""), next: str = Form("/")) -> Response:  # noqa: B008
    """The same throttle and audit path as HTTP Basic (Passwords.check)."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        raise CsrfRejected()
    passwords: Passwords = request.app.state.passwords
    hours = request.app.state.settings.web_session_hours
    data = {"next": safe_next(next), "login_csrf": expected, "error": ""}
    found = await passwords.check(username, password, client_of(request), via="form")
    if isinstance(found, Refusal) and found.status == 429:
        data["error"] = "Too many failed sign-ins. Wait a few minutes and try again."
        refused = render(request, "login.html", data, status=429)
        refused.headers["Retry-After"] = str(found.retry_after)
        return refused
    if isinstance(found, Refusal):
        data["error"] = "Wrong name or password, or the account is disabled."
        return render(request, "login.html", data, status=401)
    # committed before the browser follows the redirect with its new cookie
    token = await run_in_threadpool(_open_session, request.app.state.db, found.id, hours)
    response = RedirectResponse(safe_next(next), status_code=303)
    set_cookie(request, response, COOKIE, token, max_age=int(hours * 3600))
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@signed_in.post("/logout")
def logout(request: Request, user: Principal = Depends(require_user),  # noqa: B008
           session: Session = Depends(get_session)) -> Response:  # noqa: B008
    close_session(session, request.cookies.get(COOKIE, ""))
    audit(session, "logout", user.username, client=client_of(request))
    session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def _open_session(db: Database, user_id: int, hours: float) -> str:
    with db.session() as session:
        try:
            token, _ = open_session(session, user_id, hours)
        except AccountError as exc:  # removed or disabled between the password check and now
            raise LoginRequired() from exc
    return token


def safe_next(target: str) -> str:
    """Only same-site paths: never redirect a signed-in user elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/")
