"""Each view computes one plain data object from db/ records. The HTML page (a Jinja template)
and the JSON answer render that same object, so the page and the API cannot drift apart. Views
read only the database: no file is opened and no header parsed while a page is computed (the
patient details were recorded when the study arrived)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy.orm import Session

from cxrtriage.db.accounts import close_windows
from cxrtriage.db.feedback import study_feedback
from cxrtriage.db.monitoring import model_stats, version_reads
from cxrtriage.db.reading_room import neighbours, new_flagged_since
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
CONTEXT = ("flagged", "reviewed", "state", "since", "until", "model_version", "per_page")
UPDATE_SECONDS = 5  # how often the worklist page asks whether new flagged studies came in


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


def worklist_context(params: dict[str, str]) -> str:
    """The worklist's filters as a query string, carried from the worklist to each study page and
    from study to study, so next and previous follow the list the reader was working through."""
    return urlencode({k: params[k] for k in CONTEXT if params.get(k)})


def _study_url(study_uid: str, context: str) -> str:
    return f"/studies/{quote(study_uid)}" + (f"?{context}" if context else "")


def worklist_view(session: Session, user_id: int, params: dict[str, str],
                  escalate_after: timedelta) -> dict[str, Any]:
    """The page; /api/worklist answers its `items`, with `total` in X-Total-Count. Each item's
    `url` is its study page in this list's context; `loaded_at` is where the page's count of new
    flagged studies starts (/api/worklist/updates)."""
    f = parse_filter(params)
    loaded_at = datetime.now(UTC)
    found, total = worklist(session, user_id, f, escalate_after)
    context = worklist_context(params)
    items = [{**item, "url": _study_url(item["study_uid"], context)} for item in found]
    pages = max(1, -(-total // f.per_page))
    query = {k: v for k, v in params.items() if v and k != "page"}
    return {"items": items, "total": total, "page": f.page, "pages": pages, "per_page": f.per_page,
            "loaded_at": iso(loaded_at), "update_seconds": UPDATE_SECONDS,
            "filters": {k: params.get(k, "") for k in ("flagged", "reviewed", "state", "since", "until",
                                                       "model_version")},
            "model_versions": model_version_names(session), "states": STATES,
            "escalation_minutes": escalate_after.total_seconds() / 60,
            "prev_url": f"?{urlencode({**query, 'page': f.page - 1})}" if f.page > 1 else None,
            "next_url": f"?{urlencode({**query, 'page': f.page + 1})}" if f.page < pages else None}


def worklist_updates(session: Session, since: str) -> dict[str, Any]:
    """How many flagged studies got their result after `since` (the worklist page's `loaded_at`)."""
    try:
        start = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FilterError(f"since must be an ISO 8601 time, got {since[:40]!r}") from exc
    start = start if start.tzinfo is not None else start.replace(tzinfo=UTC)
    return {"since": iso(start), "checked_at": iso(datetime.now(UTC)),
            "new_flagged": new_flagged_since(session, start)}


def reading_view(session: Session, study_uid: str, params: dict[str, str],
                 escalate_after: timedelta) -> dict[str, Any]:
    """The study's place in the worklist the reader came from (its filters in `params`): the
    previous and next study pages, the position and the way back to the worklist's page."""
    f = parse_filter(params)
    near = neighbours(session, study_uid, f, escalate_after)
    context = worklist_context(params)
    position, total = (near.position, near.total) if near else (None, 0)
    back = {k: params[k] for k in CONTEXT if params.get(k)}
    if position:
        back["page"] = str((position - 1) // f.per_page + 1)
    return {
        "context": context, "position": position, "total": total,
        "previous_uid": near.previous if near else None, "next_uid": near.next if near else None,
        "previous_url": _study_url(near.previous, context) if near and near.previous else None,
        "next_url": _study_url(near.next, context) if near and near.next else None,
        "worklist_url": "/" + (f"?{urlencode(back)}" if back else ""),
    }


def study_view(session: Session, study_uid: str, username: str, viewer_template: str,
               params: dict[str, str] | None = None,
               escalate_after: timedelta = timedelta(hours=2)) -> dict[str, Any] | None:
    """One study: details, result, images (true-geometry image URLs, the heat map the worker
    stored for the current result, the viewer's metadata and pixel URLs), the current SR, the
    verdicts, and its place in the worklist the reader came from (`reading`, from the worklist's
    filters in `params`). None for an unknown study."""
    study = find_study(session, study_uid)
    if study is None:
        return None
    version = study_version(session, study)
    base = f"/studies/{quote(study_uid)}/images"
    images = []
    for image in study_images(session, study):
        has_heatmap = image.pop("has_heatmap")
        sop = quote(image["sop_instance_uid"])
        url = f"{base}/{sop}"
        images.append({**image, "image_url": f"{url}.png", "full_image_url": f"{url}.png?size=full",
                       "heatmap_url": f"{url}/heatmap.png" if has_heatmap else None,
                       "display_url": f"/api/studies/{quote(study_uid)}/images/{sop}",
                       "pixels_url": f"/api/studies/{quote(study_uid)}/images/{sop}/pixels"})
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
        "reading": reading_view(session, study_uid, params or {}, escalate_after),
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
