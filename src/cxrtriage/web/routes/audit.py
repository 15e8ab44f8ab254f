"""The audit log, for administrators only (the router's own dependency, on top of sign-in)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from cxrtriage.config import Settings
from cxrtriage.web import views
from cxrtriage.web.auth import require_admin
from cxrtriage.web.deps import get_session, get_settings
from cxrtriage.web.pages import render

router = APIRouter(dependencies=[Depends(require_admin)])


def _audit(session: Session, settings: Settings, offset: int) -> dict[str, Any]:
    return views.audit_view(session, offset, settings.web_login_window_seconds)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, offset: int = 0, session: Session = Depends(get_session),  # noqa: B008
               settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    return render(request, "audit.html", _audit(session, settings, offset))


@router.get("/api/audit")
def audit_api(offset: int = 0, session: Session = Depends(get_session),  # noqa: B008
              settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    return JSONResponse(_audit(session, settings, offset))
