""""Try an image": the form, the upload (answered at once with the image shown back, while a
worker classifies it), the answer as JSON for the page to ask for, and the answer's heat map."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from cxrtriage.db.trials import trial_answer, trial_heatmap
from cxrtriage.errors import InvalidInputError
from cxrtriage.web.auth import Principal, client_of, require_user
from cxrtriage.web.deps import get_dispatcher, get_session
from cxrtriage.web.errors import NotFound, Problem
from cxrtriage.web.imaging import trial_overlay
from cxrtriage.web.pages import render
from cxrtriage.web.trials import TrialDesk, answer_data

router = APIRouter()


def _unknown() -> NotFound:
    return NotFound("no such request of yours", "No such request of yours.")


@router.get("/try", response_class=HTMLResponse)
def try_form(request: Request) -> Response:
    return render(request, "try.html", {"upload": None, "error": ""})


@router.post("/try", response_class=HTMLResponse)
def try_image(request: Request, file: UploadFile, user: Principal = Depends(require_user)) -> Response:  # noqa: B008
    """A plain `def`: decoding, the spool and the database run in the thread pool, never on the
    event loop. The body limit has bounded the upload before this runs."""
    desk: TrialDesk = request.app.state.trials
    data = file.file.read(desk.max_bytes + 1)
    file.file.close()
    if len(data) > desk.max_bytes:
        return render(request, "try.html", {"upload": None, "error": "The file is too large."}, status=413)
    try:
        upload = desk.accept(data, file.filename or "", user.id, user.username, client_of(request),
                             lambda: get_dispatcher(request))
    except InvalidInputError as exc:
        return render(request, "try.html", {"upload": None, "error": str(exc)}, status=422)
    except Problem as exc:
        return render(request, "try.html", {"upload": None, "error": exc.message}, status=exc.status)
    finally:
        del data
    return render(request, "try.html", {"upload": upload, "error": ""})


@router.get("/api/try/{token}")
def try_answer(token: str, user: Principal = Depends(require_user),  # noqa: B008
               session: Session = Depends(get_session)) -> Response:  # noqa: B008
    answer = trial_answer(session, token, user.id)
    if answer is None:
        raise _unknown()
    return JSONResponse(answer_data(answer))


@router.get("/try/{token}/heatmap.png")
def try_heatmap(token: str, user: Principal = Depends(require_user),  # noqa: B008
                session: Session = Depends(get_session)) -> Response:  # noqa: B008
    found = trial_heatmap(session, token, user.id)
    if found is None:
        raise _unknown()
    cam_png, result = found
    return Response(trial_overlay(cam_png, result["box"], float(result.get("aspect", 1.0))),
                    media_type="image/png")
