"""Each view computes one plain data object. The HTML page (a Jinja template) and the JSON
answer render that same object, so the page and the API cannot drift apart."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy.orm import Session

from cxrtriage.db.models import ModelVersion, SrExport, Study, as_utc
from cxrtriage.db.monitoring import model_stats, version_reads
from cxrtriage.db.results import latest_export
from cxrtriage.db.review import (
    VERDICTS,
    WorklistFilter,
    find_study,
    iso,
    record_details,
    studies_without_details,
    study_feedback,
    study_images,
    worklist,
)
from cxrtriage.dicom.heatmap_writer import heatmap_uids
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.domain import ExportKind, ModelInfo
from cxrtriage.errors import InvalidInputError

logger = logging.getLogger(__name__)


class FilterError(ValueError):
    """A worklist query parameter with a value outside what it accepts."""


def _flag(value: str | None, name: str) -> bool | None:
    if value in (None, "", "all"):
        return None
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise FilterError(f"{name} must be true, false or all, got {value!r}")


def _date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise FilterError(f"{name} must be a date (YYYY-MM-DD), got {value!r}") from exc


STATES = ("", "in_progress", "done", "skipped", "failed", "received", "queued", "processing")


def parse_filter(params: dict[str, str]) -> WorklistFilter:
    """Query parameters: flagged, reviewed (true|false|all), state ("" finished, in_progress or a
    state), since and until (YYYY-MM-DD, received date), model_version, page, per_page."""
    state = params.get("state", "") or ""
    if state not in STATES:
        raise FilterError(f"state must be one of {', '.join(s or '(empty)' for s in STATES)}, got {state!r}")
    try:
        page = int(params.get("page") or 1)
        per_page = int(params.get("per_page") or 50)
    except ValueError as exc:
        raise FilterError("page and per_page must be whole numbers") from exc
    if page < 1 or not 1 <= per_page <= 500:
        raise FilterError("page must be >= 1 and per_page within 1..500")
    return WorklistFilter(flagged=_flag(params.get("flagged"), "flagged"),
                          reviewed=_flag(params.get("reviewed"), "reviewed"), state=state,
                          since=_date(params.get("since"), "since"),
                          until=_date(params.get("until"), "until"),
                          model_version=params.get("model_version", "") or "", page=page, per_page=per_page)


def fill_details(session: Session, study_uids: list[str]) -> None:
    """Read the patient details of studies that do not have them yet from one stored header."""
    for study_id, path in studies_without_details(session, study_uids):
        values: dict[str, str] = {}
        try:
            ds = read_dataset(path, stop_before_pixels=True)
            values = {"patient_name": str(ds.get("PatientName", "")),
                      "patient_id": str(ds.get("PatientID", "")),
                      "accession_number": str(ds.get("AccessionNumber", "")),
                      "study_date": str(ds.get("StudyDate", "")),
                      "study_description": str(ds.get("StudyDescription", ""))}
        except (InvalidInputError, OSError):
            logger.warning("study header unreadable; details left empty", extra={"study_id": study_id})
        record_details(session, study_id, **values)


def worklist_view(session: Session, user_id: int, params: dict[str, str],
                  escalate_after: timedelta) -> dict[str, Any]:
    f = parse_filter(params)
    items, total = worklist(session, user_id, f, escalate_after)
    missing = [i["study_uid"] for i in items if i["patient_id"] is None]
    if missing:
        fill_details(session, missing)
        items, total = worklist(session, user_id, f, escalate_after)
    pages = max(1, -(-total // f.per_page))
    query = {k: v for k, v in params.items() if v and k != "page"}
    versions = sorted({v.version for v in session.query(ModelVersion).all()})
    return {"items": items, "total": total, "page": f.page, "pages": pages, "per_page": f.per_page,
            "filters": {k: params.get(k, "") for k in ("flagged", "reviewed", "state", "since", "until",
                                                       "model_version")},
            "model_versions": versions, "states": STATES,
            "escalation_minutes": escalate_after.total_seconds() / 60,
            "prev_url": f"?{urlencode({**query, 'page': f.page - 1})}" if f.page > 1 else None,
            "next_url": f"?{urlencode({**query, 'page': f.page + 1})}" if f.page < pages else None}


def _heatmap_paths(session: Session, study: Study) -> dict[str, str]:
    """Stored heat map images of the current result, by source SOP Instance UID."""
    version = session.get(ModelVersion, study.model_version_id) if study.model_version_id else None
    if version is None:
        return {}
    info = ModelInfo(version.name, version.version, "", version.device_uid, version.weights_sha256)
    exports = {e.sr_sop_instance_uid: e.path for e in session.query(SrExport).filter(
        SrExport.study_id == study.id, SrExport.kind == ExportKind.HEATMAP,
        SrExport.model_version_id == version.id).all()}
    out = {}
    for image in study_images(session, study):
        _, sop_uid = heatmap_uids(image["sop_instance_uid"], study.study_uid, info)
        if sop_uid in exports:
            out[image["sop_instance_uid"]] = exports[sop_uid]
    return out


def study_view(session: Session, study_uid: str, user_id: int, viewer_template: str,
               live_sha256: str = "") -> dict[str, Any] | None:
    """`live_sha256`: weights the app can compute heat maps with, for results whose worker stored
    no heatmap (CXRTRIAGE_HEATMAPS off)."""
    study = find_study(session, study_uid)
    if study is None:
        return None
    fill_details(session, [study_uid])
    details = study_view_details(session, study)
    version = session.get(ModelVersion, study.model_version_id) if study.model_version_id else None
    heatmaps = _heatmap_paths(session, study)
    live = bool(version and live_sha256 and version.weights_sha256 == live_sha256)
    images = []
    base = f"/studies/{quote(study_uid)}/images"
    for image in study_images(session, study):
        uid = image.pop("sop_instance_uid")
        image.pop("path")
        images.append({"sop_instance_uid": uid, **image, "image_url": f"{base}/{quote(uid)}.png",
                       "heatmap_url": f"{base}/{quote(uid)}/heatmap.png"
                       if uid in heatmaps or (live and image["probabilities"]) else None})
    export = latest_export(session, study.id)
    feedback = study_feedback(session, study)
    mine = next((f for f in feedback if f["username"] == _username(session, user_id)), None)
    return {
        "study_uid": study.study_uid, "state": study.state, "reason": study.reason, "flagged": study.flagged,
        "received_at": iso(study.created_at), "finished_at": iso(study.finished_at), **details,
        "model_name": version.name if version else None,
        "model_version": version.version if version else None,
        "flag_label": version.manifest.get("flag_label") if version else None,
        "threshold": version.manifest.get("threshold") if version else None,
        "images": images,
        "sr": {"state": export.state, "kind": export.kind, "sop_instance_uid": export.sr_sop_instance_uid,
               "attempts": export.attempts, "sent_at": iso(export.sent_at)} if export else None,
        "viewer_url": viewer_template.replace("{study_uid}", quote(study_uid)) if viewer_template else None,
        "has_result": study.model_version_id is not None and study.flagged is not None,
        "feedback": feedback, "my_verdict": mine["verdict"] if mine else None,
        "my_comment": mine["comment"] if mine else "", "verdicts": VERDICTS,
    }


def _username(session: Session, user_id: int) -> str:
    from cxrtriage.db.models import User

    user = session.get(User, user_id)
    return user.username if user else ""


def study_view_details(session: Session, study: Study) -> dict[str, Any]:
    from cxrtriage.db.models import StudyDetails

    details = session.get(StudyDetails, study.id)
    fields = ("patient_name", "patient_id", "accession_number", "study_date", "study_description")
    return {k: getattr(details, k) if details else "" for k in fields}


def instance_paths(session: Session, study_uid: str, sop_uid: str) -> tuple[str | None, str | None, str]:
    """(stored image path, stored heatmap path, weights sha256 of the current result) of one
    image of the study."""
    study = find_study(session, study_uid)
    if study is None:
        return None, None, ""
    from cxrtriage.db.models import Instance

    instance = session.query(Instance).filter(Instance.study_id == study.id,
                                              Instance.sop_instance_uid == sop_uid).one_or_none()
    if instance is None:
        return None, None, ""
    version = session.get(ModelVersion, study.model_version_id) if study.model_version_id else None
    classified = instance.state == "classified"
    return (instance.path, _heatmap_paths(session, study).get(sop_uid),
            version.weights_sha256 if version and classified else "")


def dashboard_view(session: Session, with_plots: bool = True) -> dict[str, Any]:
    from cxrtriage.web.plots import operating_point, summarise, version_figure

    stats = {(s["model_name"], s["model_version"]): s for s in model_stats(session)}
    reads = version_reads(session)
    versions = []
    for version in reads:
        summary = summarise(version)
        entry = {**stats[(version.name, version.version)], **summary,
                 "registered_at": iso(as_utc(version.registered_at))}
        if with_plots:
            entry["figure"] = version_figure(version, summary)
        versions.append(entry)
    return {"versions": list(reversed(versions)), "operating_points": operating_point(reads)}
