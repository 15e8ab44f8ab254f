"""Each view computes one plain data object from db/ records. The HTML page (a Jinja template)
and the JSON answer render that same object, so the page and the API cannot drift apart. Views
read only the database: no file is opened and no header parsed while a page is computed (the
patient details were recorded when the study arrived)."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy.orm import Session

from cxrtriage.db.accounts import close_windows
from cxrtriage.db.feedback import study_feedback
from cxrtriage.db.monitoring import model_stats, version_reads
from cxrtriage.db.review import (
    VERDICTS,
    WorklistFilter,
    audit_events,
    iso,
    model_version_names,
    sent_exports,
    worklist,
)
from cxrtriage.db.study_records import current_sr, find_study, study_details, study_images, study_version
from cxrtriage.web.errors import FilterError

logger = logging.getLogger(__name__)
STATES = ("", "in_progress", "done", "skipped", "failed", "received", "queued", "processing")
AUDIT_PAGE = 200


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


def worklist_view(session: Session, user_id: int, params: dict[str, str],
                  escalate_after: timedelta) -> dict[str, Any]:
    """The page; /api/worklist answers its `items`, with `total` in X-Total-Count."""
    f = parse_filter(params)
    items, total = worklist(session, user_id, f, escalate_after)
    pages = max(1, -(-total // f.per_page))
    query = {k: v for k, v in params.items() if v and k != "page"}
    return {"items": items, "total": total, "page": f.page, "pages": pages, "per_page": f.per_page,
            "filters": {k: params.get(k, "") for k in ("flagged", "reviewed", "state", "since", "until",
                                                       "model_version")},
            "model_versions": model_version_names(session), "states": STATES,
            "escalation_minutes": escalate_after.total_seconds() / 60,
            "prev_url": f"?{urlencode({**query, 'page': f.page - 1})}" if f.page > 1 else None,
            "next_url": f"?{urlencode({**query, 'page': f.page + 1})}" if f.page < pages else None}


def study_view(session: Session, study_uid: str, username: str,
               viewer_template: str) -> dict[str, Any] | None:
    """One study: details, result, images (true-geometry image URLs, and the heat map the worker
    stored for the current result), the current SR and the verdicts. None for an unknown study."""
    study = find_study(session, study_uid)
    if study is None:
        return None
    version = study_version(session, study)
    base = f"/studies/{quote(study_uid)}/images"
    images = []
    for image in study_images(session, study):
        has_heatmap = image.pop("has_heatmap")
        url = f"{base}/{quote(image['sop_instance_uid'])}"
        images.append({**image, "image_url": f"{url}.png", "full_image_url": f"{url}.png?size=full",
                       "heatmap_url": f"{url}/heatmap.png" if has_heatmap else None})
    feedback = study_feedback(session, study.id, study.model_version_id)
    mine = next((f for f in feedback if f["username"] == username), None)
    return {
        "study_uid": study.study_uid, "state": study.state, "reason": study.reason, "flagged": study.flagged,
        "received_at": iso(study.received_at), "finished_at": iso(study.finished_at),
        **study_details(session, study.id),
        "model_name": version.name if version else None,
        "model_version": version.version if version else None,
        "flag_label": version.flag_label if version else None,
        "threshold": version.threshold if version else None,
        "images": images, "sr": current_sr(session, study.id),
        "viewer_url": viewer_template.replace("{study_uid}", quote(study_uid)) if viewer_template else None,
        "has_result": study.has_result,
        "feedback": feedback, "my_verdict": mine["verdict"] if mine else None,
        "my_comment": mine["comment"] if mine else "", "verdicts": VERDICTS,
    }


def dashboard_view(session: Session, with_plots: bool = True) -> dict[str, Any]:
    from cxrtriage.web.plots import operating_point, summarise, version_figure

    stats = {(s["model_name"], s["model_version"]): s for s in model_stats(session)}
    reads = version_reads(session)
    versions = []
    for version in reads:
        summary = summarise(version)
        entry = {**stats[(version.name, version.version)], **summary,
                 "registered_at": iso(version.registered_at)}
        if with_plots:
            entry["figure"] = version_figure(version, summary)
        versions.append(entry)
    return {"versions": list(reversed(versions)), "operating_points": operating_point(reads)}


def audit_view(session: Session, offset: int, window_seconds: float) -> dict[str, Any]:
    """The append-only audit log, with SR exports (recorded by the workers) alongside. Sign-in
    failure windows that have passed are summarised into the log first, so the page is complete."""
    if close_windows(session, window_seconds):
        session.commit()
    offset = max(offset, 0)
    return {"events": audit_events(session, limit=AUDIT_PAGE, offset=offset), "offset": offset,
            "exports": sent_exports(session)}
