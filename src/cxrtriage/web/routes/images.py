"""A study's images and the worker's heat maps, as PNG, in true geometry (web/imaging.py): the
preview has its longer side at the display size, `?size=full` keeps every pixel. A heat map is
shown only if the worker stored one for the study's current result; none is computed here.

For the viewer (web/pixel_values.py): an image's modality values as a binary body and its display
metadata as JSON. Every image URL names its study, and an image is served only when the study in
the URL has it: a page of one study cannot fetch another patient's image by guessing a UID."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from cxrtriage.db.study_records import ImageFiles, image_files
from cxrtriage.web.deps import get_session
from cxrtriage.web.errors import NotFound
from cxrtriage.web.imaging import DISPLAY_SIZE, render_heatmap, render_instance
from cxrtriage.web.pixel_values import display_data, stored_values

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
    if files.heatmap_path is None and files.heatmap_map_path is None:
        raise NotFound("the worker stored no heat map of this image for the current result")
    return Response(render_heatmap(files.heatmap_path, files.path, files.sha256, _longest(size),
                                   map_path=files.heatmap_map_path), media_type="image/png")


def pixels_url(study_uid: str, sop_uid: str) -> str:
    return f"/api/studies/{quote(study_uid)}/images/{quote(sop_uid)}/pixels"


@router.get("/api/studies/{study_uid}/images/{sop_uid}")
def image_display(study_uid: str, sop_uid: str, session: Session = Depends(get_session)) -> Response:  # noqa: B008
    """The viewer's metadata of the image: size, spacing, photometric, the file's windows and VOI
    LUTs, the value range and the presets; decoded once with its pixels (a short cache)."""
    files = _files(session, study_uid, sop_uid)
    session.close()
    values = stored_values(files.path, files.sha256, "display")
    return JSONResponse(display_data(values, study_uid, sop_uid, pixels_url(study_uid, sop_uid)))


@router.get("/api/studies/{study_uid}/images/{sop_uid}/pixels")
def image_pixels(study_uid: str, sop_uid: str, session: Session = Depends(get_session)) -> Response:  # noqa: B008
    """The modality values, row by row, little-endian: uint16 (value = code + X-Pixel-Offset) or
    float32, as the metadata says; the headers repeat what a script needs to read them."""
    files = _files(session, study_uid, sop_uid)
    session.close()
    values = stored_values(files.path, files.sha256, "pixels")
    headers = {"X-Pixel-Type": values.dtype, "X-Pixel-Shape": f"{values.rows},{values.columns}",
               "X-Pixel-Offset": repr(values.offset)}
    if values.padding_code is not None:
        headers["X-Pixel-Padding-Code"] = str(values.padding_code)
    return Response(values.body, media_type="application/octet-stream", headers=headers)
