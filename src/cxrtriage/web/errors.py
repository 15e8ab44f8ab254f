"""Typed errors, and the one place each becomes an answer (`register`). Views and routes raise;
they never build error responses themselves.

A page gets the sign-in redirect or the error page; /api/ and image URLs get JSON with `detail`.
Messages name the argument or the state, never patient data."""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from cxrtriage.db.feedback import NoResultError
from cxrtriage.errors import InvalidInputError
from cxrtriage.web.auth import CsrfRejected, Forbidden, LoginRequired, Unauthorized, is_api
from cxrtriage.web.pages import render

logger = logging.getLogger(__name__)


class FilterError(ValueError):
    """A query parameter with a value outside what it accepts (422)."""


class Problem(Exception):
    """An answer other than the view's data: `status`, with `detail` for /api/ (and images) and
    `message` for a page."""

    def __init__(self, status: int, detail: str, message: str = "") -> None:
        super().__init__(detail)
        self.status, self.detail, self.message = status, detail, message or detail


class NotFound(Problem):
    def __init__(self, detail: str, message: str = "") -> None:
        super().__init__(404, detail, message)


FEEDBACK_REFUSED = ("Feedback not recorded: the study has no result or the verdict is not one of the "
                    "three.")


def _json(request: Request) -> bool:
    return is_api(request) or request.url.path.endswith(".png")


def _problem(request: Request, problem: Problem) -> Response:
    if _json(request):
        return JSONResponse({"detail": problem.detail}, status_code=problem.status)
    return render(request, "error.html", {"message": problem.message}, status=problem.status)


def register(app: FastAPI) -> None:
    """Map every typed error the review app raises to its answer."""

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

    @app.exception_handler(FilterError)
    async def _bad_filter(_: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Problem)
    async def _problem_handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return _problem(request, exc)

    @app.exception_handler(NoResultError)
    async def _no_result(request: Request, _: Exception) -> Response:
        return _problem(request, NotFound("unknown study, or no result yet", FEEDBACK_REFUSED))

    @app.exception_handler(InvalidInputError)
    async def _invalid(request: Request, exc: Exception) -> Response:
        """A stored file that cannot be shown: its own reason (never its values)."""
        return _problem(request, Problem(422, str(exc)))
