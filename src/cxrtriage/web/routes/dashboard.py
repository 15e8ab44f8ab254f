"""Model monitoring: the dashboard page and its JSON twin, and per-version stats."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from cxrtriage.db.monitoring import model_stats
from cxrtriage.web import views
from cxrtriage.web.deps import get_session
from cxrtriage.web.pages import render

router = APIRouter()


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request, session: Session = Depends(get_session)) -> Response:  # noqa: B008
    return render(request, "dashboard.html", views.dashboard_view(session))


@router.get("/api/dashboard")
def dashboard_api(session: Session = Depends(get_session)) -> Response:  # noqa: B008
    return JSONResponse(views.dashboard_view(session, with_plots=False))


@router.get("/api/stats")
def stats_api(session: Session = Depends(get_session)) -> Response:  # noqa: B008
    return JSONResponse(model_stats(session))
