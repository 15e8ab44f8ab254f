"""The worklist, one study, and verdicts on its result: each page and its /api/ twin render the
same data object (web/views.py). With CXRTRIAGE_WEB_ASSESSMENT_SR on, a verdict also queues its
assessment SR, which a worker writes (worker/assessment.py)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from cxrtriage.config import Settings
from cxrtriage.db.feedback import FeedbackGiven, feedback_history, give_feedback, study_feedback
from cxrtriage.db.review import VERDICTS, audit
from cxrtriage.db.study_records import find_study
from cxrtriage.web import views
from cxrtriage.web.auth import Principal, client_of, require_user
from cxrtriage.web.deps import get_dispatcher, get_session, get_settings
from cxrtriage.web.errors import FEEDBACK_REFUSED, NotFound, Problem
from cxrtriage.web.pages import render

logger = logging.getLogger(__name__)
router = APIRouter()


def unknown_study() -> NotFound:
    return NotFound("unknown study", "No such study.")


class FeedbackIn(BaseModel):
    verdict: Literal["agree", "disagree", "uncertain"]
    comment: str = Field("", max_length=4000)


def _worklist(request: Request, user: Principal, session: Session, settings: Settings) -> dict[str, Any]:
    escalate_after = timedelta(minutes=settings.web_escalation_minutes)
    return views.worklist_view(session, user.id, dict(request.query_params), escalate_after)


@router.get("/", response_class=HTMLResponse)
def worklist_page(request: Request, user: Principal = Depends(require_user),  # noqa: B008
                  session: Session = Depends(get_session),  # noqa: B008
                  settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    return render(request, "worklist.html", _worklist(request, user, session, settings))


@router.get("/api/worklist")
def worklist_api(request: Request, user: Principal = Depends(require_user),  # noqa: B008
                 session: Session = Depends(get_session),  # noqa: B008
                 settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    data = _worklist(request, user, session, settings)
    return JSONResponse(data["items"], headers={"X-Total-Count": str(data["total"])})


@router.get("/api/worklist/updates")
def worklist_updates(since: str, session: Session = Depends(get_session)) -> Response:  # noqa: B008
    """What the worklist page polls: how many flagged studies got their result since it loaded."""
    return JSONResponse(views.worklist_updates(session, since))


def _study(request: Request, study_uid: str, user: Principal, session: Session,
           settings: Settings) -> dict[str, Any]:
    """The study's data object, with its neighbours in the worklist whose filters the query
    string carries; viewing it is audited."""
    data = views.study_view(session, study_uid, user.username, settings.web_viewer_url,
                            dict(request.query_params), timedelta(minutes=settings.web_escalation_minutes))
    if data is None:
        raise unknown_study()
    audit(session, "study_view", user.username, study_uid, client_of(request))
    session.commit()
    return data


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: str, user: Principal = Depends(require_user),  # noqa: B008
               session: Session = Depends(get_session),  # noqa: B008
               settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    return render(request, "study.html", _study(request, study_uid, user, session, settings))


@router.get("/api/studies/{study_uid}")
def study_api(request: Request, study_uid: str, user: Principal = Depends(require_user),  # noqa: B008
              session: Session = Depends(get_session),  # noqa: B008
              settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    return JSONResponse(_study(request, study_uid, user, session, settings))


def _give(request: Request, session: Session, settings: Settings, study_uid: str, user: Principal,
          verdict: str, comment: str) -> FeedbackGiven:
    """Record the verdict (committed: the page the browser is sent to shows it), then queue its
    assessment SR if the setting asks for one."""
    if verdict not in VERDICTS:
        raise Problem(422, f"verdict must be one of {', '.join(VERDICTS)}", FEEDBACK_REFUSED)
    given = give_feedback(session, study_uid, user.id, user.username, verdict, comment, client_of(request))
    session.commit()
    if settings.web_assessment_sr:
        try:
            get_dispatcher(request).assessment(given.event_id)
        except (OperationalError, OSError):  # the verdict stands; its SR is not written
            logger.error("assessment SR not queued: the broker is unreachable",
                         extra={"study_uid": study_uid, "event_id": given.event_id})
    return given


@router.post("/studies/{study_uid}/feedback")
def feedback_form(request: Request, study_uid: str, verdict: str = Form(...),  # noqa: B008
                  comment: str = Form(""), user: Principal = Depends(require_user),  # noqa: B008
                  session: Session = Depends(get_session),  # noqa: B008
                  settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    _give(request, session, settings, study_uid, user, verdict, comment)
    return RedirectResponse(f"/studies/{quote(study_uid)}?saved=1", status_code=303)


@router.post("/api/studies/{study_uid}/feedback")
def feedback_api(request: Request, study_uid: str, body: FeedbackIn,
                 user: Principal = Depends(require_user),  # noqa: B008
                 session: Session = Depends(get_session),  # noqa: B008
                 settings: Settings = Depends(get_settings)) -> Response:  # noqa: B008
    given = _give(request, session, settings, study_uid, user, body.verdict, body.comment)
    return JSONResponse({"study_uid": study_uid, "verdict": body.verdict, "comment": body.comment},
                        status_code=201 if given.first else 200)


@router.get("/api/studies/{study_uid}/feedback")
def feedback_get(study_uid: str, session: Session = Depends(get_session)) -> Response:  # noqa: B008
    study = find_study(session, study_uid)
    if study is None:
        raise unknown_study()
    return JSONResponse({"current": study_feedback(session, study.id, study.model_version_id),
                         "history": feedback_history(session, study_uid)})
