"""A study's images and the worker's heat maps, as PNG, in true geometry (web/imaging.py): the
preview has its longer side at the display size, `?size=full` keeps every pixel. A heat map is
shown only if the worker stored one for the study's current result; none is computed here."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from sqlalchemy.orm import Session

from cxrtriage.db.study_records import ImageFiles, image_files
from cxrtriage.web.deps import get_session
from cxrtriage.web.errors import NotFound
from cxrtriage.web.imaging import DISPLAY_SIZE, render_heatmap, render_instance

router = APIRouter()
Size = Literal["preview", "full"]


def _files(session: Session, study_uid: str, sop_uid: str) -> ImageFiles:
    files = image_files(session, study_uid, sop_uid)
    if files is None:
        raise NotFound("no such image in this study")
    return files


def _longest(size: Size) -> int | None:
    return None if size == "full" else DISPLAY_SIZE


@router.get("/studies/{study_uid}/images/{sop_uid}.png")
def image_png(study_uid: str, sop_uid: str, size: Size = "preview",
              session: Session = Depends(get_session)) -> Response:  # noqa: B008
    files = _files(session, study_uid, sop_uid)
    session.close()  # decoding takes a while: hold no connection meanwhile
    return Response(render_instance(files.path, _longest(size), files.sha256), media_type="image/png")


@router.get("/studies/{study_uid}/images/{sop_uid}/heatmap.png")
def heatmap_png(study_uid: str, sop_uid: str, size: Size = "preview",
                session: Session = Depends(get_session)) -> Response:  # noqa: B008
    files = _files(session, study_uid, sop_uid)
    session.close()
    if files.heatmap_path is None:
        raise NotFound("the worker stored no heat map of this image for the current result")
    return Response(render_heatmap(files.heatmap_path, files.path, files.sha256, _longest(size)),
                    media_type="image/png")
