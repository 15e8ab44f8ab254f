"""The review app: worklist, study pages with image and heatmap, feedback, the monitoring
dashboard, "try an image", the audit log, the JSON API and /metrics.

The gate (web/auth.py) and `require_user` guard every route of the `protected` router; only
/healthz, /metrics, the sign-in form and the static files are outside it. Around the routes, pure
ASGI middleware, outermost first: security headers, the body limit (web/limits.py), the gate.
Routes that do blocking work (the database, decoding, inference) are plain `def`s, which FastAPI
runs in its thread pool; the `async def` ones hand such work to it."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from cxrtriage.config import Settings
from cxrtriage.db.accounts import close_session, close_windows, open_session
from cxrtriage.db.models import SrExport, User
from cxrtriage.db.monitoring import model_stats
from cxrtriage.db.review import NoResultError, audit, audit_events, feedback_history, give_feedback, iso
from cxrtriage.db.session import Database
from cxrtriage.errors import InvalidInputError
from cxrtriage.web import views
from cxrtriage.web.auth import (
    COOKIE,
    CSRF_FIELD,
    AuthGate,
    CsrfRejected,
    Forbidden,
    LoginRequired,
    Passwords,
    Principal,
    Refusal,
    Unauthorized,
    client_of,
    require_admin,
    require_user,
)
from cxrtriage.web.headers import SecurityHeaders
from cxrtriage.web.imaging import TryImage, render_heatmap, render_instance
from cxrtriage.web.limits import BodyLimit
from cxrtriage.web.metrics import registry_for

logger = logging.getLogger(__name__)
HERE = Path(__file__).parent
LOGIN_CSRF_COOKIE = "cxrtriage_login_csrf"
MULTIPART_OVERHEAD = 65536  # "try an image": boundaries, part headers and the CSRF field


class FeedbackIn(BaseModel):
    verdict: Literal["agree", "disagree", "uncertain"]
    comment: str = Field("", max_length=4000)


def create_app(settings: Settings, db: Database | None = None) -> FastAPI:
    app = FastAPI(title="cxr-triage review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.db = db or Database(settings.database_url)
    app.state.try_image = TryImage(settings.model)
    passwords = Passwords(app.state.db, settings)
    registry = registry_for(app.state.db)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pct"] = lambda v: "–" if v is None else f"{v:.0%}"
    templates.env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    # Uploads for "try an image" stay in memory up to the size limit: nothing is written to disk.
    MultiPartParser.spool_max_size = settings.web_max_upload_bytes
    escalate_after = timedelta(minutes=settings.web_escalation_minutes)

    def get_session(request: Request) -> Iterator[Session]:
        """A unit of work per request. Views that write commit before answering, because the
        dependency's own commit may come after the response has gone out."""
        with request.app.state.db.session() as session:
            yield session

    def page(request: Request, template: str, data: dict[str, Any], status: int = 200) -> HTMLResponse:
        user: Principal | None = getattr(request.state, "user", None)
        return templates.TemplateResponse(request, template, {"data": data, "user": user,
                                                              "csrf_field": CSRF_FIELD}, status_code=status)

    def body_limit(path: str) -> int:
        """ "Try an image" up to its upload limit, every other request up to web_max_body_bytes."""
        if path == "/try":
            return settings.web_max_upload_bytes + MULTIPART_OVERHEAD
        return settings.web_max_body_bytes

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, __: Exception) -> Response:
        return JSONResponse({"detail": "authentication required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="cxr-triage"'})

    @app.exception_handler(CsrfRejected)
    async def _csrf(_: Request, __: Exception) -> Response:
        return JSONResponse({"detail": "CSRF token missing or wrong"}, status_code=403)

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, __: Exception) -> Response:
        return JSONResponse({"detail": "administrators only"}, status_code=403)

    @app.exception_handler(views.FilterError)
    async def _bad_filter(_: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # --- open: health, metrics, sign-in ---------------------------------------------------------

    @app.get("/healthz")
    def healthz(session: Session = Depends(get_session)) -> dict[str, str]:  # noqa: B008
        session.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = page(request, "login.html", {"next": _safe_next(next), "login_csrf": token, "error": ""})
        _set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
        return response

    @app.post("/login")
    async def login(request: Request, username: str = Form(""), password: str = Form(""),  # noqa: B008
                    csrf_token: str = Form(""), next: str = Form("/")) -> Response:  # noqa: B008
        """The same throttle and audit path as HTTP Basic (Passwords.check)."""
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(expected, csrf_token):
            raise CsrfRejected()
        data = {"next": _safe_next(next), "login_csrf": expected, "error": ""}
        found = await passwords.check(username, password, client_of(request), via="form")
        if isinstance(found, Refusal) and found.status == 429:
            data["error"] = "Too many failed sign-ins. Wait a few minutes and try again."
            refused = page(request, "login.html", data, status=429)
            refused.headers["Retry-After"] = str(found.retry_after)
            return refused
        if isinstance(found, Refusal):
            data["error"] = "Wrong name or password, or the account is disabled."
            return page(request, "login.html", data, status=401)
        # committed before the browser follows the redirect with its new cookie
        token = await run_in_threadpool(_open_session, request.app.state.db, found.id,
                                        settings.web_session_hours)
        response = RedirectResponse(_safe_next(next), status_code=303)
        _set_cookie(request, response, COOKIE, token, max_age=int(settings.web_session_hours * 3600))
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # --- everything else needs a signed-in user -------------------------------------------------

    protected = APIRouter(dependencies=[Depends(require_user)])

    @protected.post("/logout")
    def logout(request: Request, user: Principal = Depends(require_user),  # noqa: B008
               session: Session = Depends(get_session)) -> Response:  # noqa: B008
        close_session(session, request.cookies.get(COOKIE, ""))
        audit(session, "logout", user.username, client=client_of(request))
        session.commit()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @protected.get("/", response_class=HTMLResponse)
    def worklist_page(request: Request, user: Principal = Depends(require_user),  # noqa: B008
                      session: Session = Depends(get_session)) -> Response:  # noqa: B008
        data = views.worklist_view(session, user.id, dict(request.query_params), escalate_after)
        return page(request, "worklist.html", data)

    @protected.get("/api/worklist")
    def worklist_api(request: Request, user: Principal = Depends(require_user),  # noqa: B008
                     session: Session = Depends(get_session)) -> Response:  # noqa: B008
        data = views.worklist_view(session, user.id, dict(request.query_params), escalate_after)
        return JSONResponse(data["items"], headers={"X-Total-Count": str(data["total"])})

    def _study(request: Request, study_uid: str, user: Principal, session: Session) -> dict[str, Any] | None:
        data = views.study_view(session, study_uid, user.id, settings.web_viewer_url,
                                request.app.state.try_image.weights_sha256)
        if data is not None:
            audit(session, "study_view", user.username, study_uid, client_of(request))
            session.commit()
            data["csrf_token"] = user.csrf_token
        return data

    @protected.get("/studies/{study_uid}", response_class=HTMLResponse)
    def study_page(request: Request, study_uid: str, user: Principal = Depends(require_user),  # noqa: B008
                   session: Session = Depends(get_session)) -> Response:  # noqa: B008
        data = _study(request, study_uid, user, session)
        if data is None:
            return page(request, "error.html", {"message": "No such study."}, status=404)
        return page(request, "study.html", data)

    @protected.get("/api/studies/{study_uid}")
    def study_api(request: Request, study_uid: str, user: Principal = Depends(require_user),  # noqa: B008
                  session: Session = Depends(get_session)) -> Response:  # noqa: B008
        data = _study(request, study_uid, user, session)
        if data is None:
            return JSONResponse({"detail": "unknown study"}, status_code=404)
        data.pop("csrf_token", None)
        return JSONResponse(data)

    @protected.get("/studies/{study_uid}/images/{sop_uid}.png")
    def image_png(study_uid: str, sop_uid: str, session: Session = Depends(get_session)) -> Response:  # noqa: B008
        path, _, _ = views.instance_paths(session, study_uid, sop_uid)
        if path is None:
            return Response(status_code=404)
        try:
            return Response(render_instance(path), media_type="image/png")
        except InvalidInputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)

    @protected.get("/studies/{study_uid}/images/{sop_uid}/heatmap.png")
    def heatmap_png(request: Request, study_uid: str, sop_uid: str,
                    session: Session = Depends(get_session)) -> Response:  # noqa: B008
        path, heatmap, sha = views.instance_paths(session, study_uid, sop_uid)
        live: TryImage = request.app.state.try_image
        try:
            if heatmap is not None:
                return Response(render_heatmap(heatmap), media_type="image/png")
            if path is not None and sha and sha == live.weights_sha256:  # the same weights, so the same map
                return Response(live.heatmap(path), media_type="image/png")
            return Response(status_code=404)
        except InvalidInputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)

    @protected.post("/studies/{study_uid}/feedback")
    def feedback_form(request: Request, study_uid: str, verdict: str = Form(...),  # noqa: B008
                      comment: str = Form(""), user: Principal = Depends(require_user),  # noqa: B008
                      session: Session = Depends(get_session)) -> Response:  # noqa: B008
        status = _give(session, study_uid, user, verdict, comment, client_of(request))
        if status >= 400:
            return page(request, "error.html", {"message": "Feedback not recorded: the study has no result "
                                                           "or the verdict is not one of the three."},
                        status=status)
        return RedirectResponse(f"/studies/{quote(study_uid)}?saved=1", status_code=303)

    @protected.post("/api/studies/{study_uid}/feedback")
    def feedback_api(request: Request, study_uid: str, body: FeedbackIn,
                     user: Principal = Depends(require_user),  # noqa: B008
                     session: Session = Depends(get_session)) -> Response:  # noqa: B008
        status = _give(session, study_uid, user, body.verdict, body.comment, client_of(request))
        if status == 404:
            return JSONResponse({"detail": "unknown study, or no result yet"}, status_code=404)
        return JSONResponse({"study_uid": study_uid, "verdict": body.verdict, "comment": body.comment},
                            status_code=status)

    @protected.get("/api/studies/{study_uid}/feedback")
    def feedback_get(study_uid: str, session: Session = Depends(get_session)) -> Response:  # noqa: B008
        study = views.find_study(session, study_uid)
        if study is None:
            return JSONResponse({"detail": "unknown study"}, status_code=404)
        return JSONResponse({"current": views.study_feedback(session, study),
                             "history": feedback_history(session, study_uid)})

    @protected.get("/dashboard", response_class=HTMLResponse)
    def dashboard_page(request: Request, session: Session = Depends(get_session)) -> Response:  # noqa: B008
        return page(request, "dashboard.html", views.dashboard_view(session))

    @protected.get("/api/dashboard")
    def dashboard_api(session: Session = Depends(get_session)) -> Response:  # noqa: B008
        return JSONResponse(views.dashboard_view(session, with_plots=False))

    @protected.get("/api/stats")
    def stats_api(session: Session = Depends(get_session)) -> Response:  # noqa: B008
        return JSONResponse(model_stats(session))

    @protected.get("/try", response_class=HTMLResponse)
    def try_form(request: Request) -> Response:
        return page(request, "try.html", {"result": None, "error": ""})

    @protected.post("/try", response_class=HTMLResponse)
    def try_image(request: Request, file: UploadFile,
                  user: Principal = Depends(require_user)) -> Response:  # noqa: B008
        """A plain `def`: decoding, model loading and inference run in the thread pool, never on
        the event loop. The body limit has bounded the upload before this runs."""
        data = file.file.read(settings.web_max_upload_bytes + 1)
        file.file.close()
        if len(data) > settings.web_max_upload_bytes:
            return page(request, "try.html", {"result": None, "error": "The file is too large."}, status=413)
        try:
            result = request.app.state.try_image.run(data, file.filename or "")
        except InvalidInputError as exc:
            return page(request, "try.html", {"result": None, "error": str(exc)}, status=422)
        finally:
            del data
        with request.app.state.db.session() as session:
            audit(session, "try_image", user.username, client=client_of(request))
        return page(request, "try.html", {"result": result, "error": ""})

    @protected.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, offset: int = 0, _: Principal = Depends(require_admin),  # noqa: B008
                   session: Session = Depends(get_session)) -> Response:  # noqa: B008
        return page(request, "audit.html", _audit_data(session, offset, settings.web_login_window_seconds))

    @protected.get("/api/audit")
    def audit_api(offset: int = 0, _: Principal = Depends(require_admin),  # noqa: B008
                  session: Session = Depends(get_session)) -> Response:  # noqa: B008
        return JSONResponse(_audit_data(session, offset, settings.web_login_window_seconds))

    def _give(session: Session, study_uid: str, user: Principal, verdict: str, comment: str,
              client: str) -> int:
        row = session.get(User, user.id)
        if row is None:
            return 401
        try:
            first = give_feedback(session, study_uid, row, verdict, comment, client)
        except NoResultError:
            return 404
        except ValueError:
            return 422
        if settings.web_assessment_sr:
            from cxrtriage.web.assessment import record_assessment

            record_assessment(session, settings, study_uid, user.username, verdict, comment, client)
        session.commit()  # visible to the page the browser is redirected to
        return 201 if first else 200

    app.include_router(protected)
    # add_middleware wraps what is there: the last added is the outermost.
    app.add_middleware(AuthGate, db=app.state.db, passwords=passwords)
    app.add_middleware(BodyLimit, limit_for=body_limit)
    app.add_middleware(SecurityHeaders, hsts_seconds=settings.web_hsts_seconds)
    return app


def _open_session(db: Database, user_id: int, hours: float) -> str:
    with db.session() as session:
        user = session.get(User, user_id)
        if user is None:  # removed between the password check and now
            raise LoginRequired()
        token, _ = open_session(session, user, hours)
    return token


def _audit_data(session: Session, offset: int, window_seconds: float) -> dict[str, Any]:
    """The append-only audit log, with SR exports (recorded by the workers) alongside. Sign-in
    failure windows that have passed are summarised into the log first, so the page is complete."""
    if close_windows(session, window_seconds):
        session.commit()
    events = audit_events(session, limit=200, offset=max(offset, 0))
    exports = session.query(SrExport).filter(SrExport.sent_at.is_not(None)).order_by(
        SrExport.sent_at.desc()).limit(50).all()
    return {"events": events, "offset": offset,
            "exports": [{"at": iso(e.sent_at), "kind": e.kind, "state": e.state, "destination": e.destination,
                         "sop_instance_uid": e.sr_sop_instance_uid, "attempts": e.attempts} for e in exports]}


def _safe_next(target: str) -> str:
    """Only same-site paths: never redirect a signed-in user elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/")
