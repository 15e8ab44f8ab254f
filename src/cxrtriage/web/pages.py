"""The Jinja environment and the one way a view's data object becomes a page (`render`): the
same object the JSON answer carries, plus who is signed in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from cxrtriage.web.auth import CSRF_FIELD, Principal

HERE = Path(__file__).parent


def templates() -> Jinja2Templates:
    made = Jinja2Templates(directory=str(HERE / "templates"))
    made.env.filters["pct"] = lambda v: "–" if v is None else f"{v:.0%}"
    made.env.filters["num"] = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    return made


def render(request: Request, template: str, data: Any, status: int = 200) -> HTMLResponse:
    user: Principal | None = getattr(request.state, "user", None)
    jinja: Jinja2Templates = request.app.state.templates
    return jinja.TemplateResponse(request, template, {"data": data, "user": user, "csrf_field": CSRF_FIELD},
                                  status_code=status)
