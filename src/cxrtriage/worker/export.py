"""Sending stored SRs and heatmaps to their destination, each a claimed and recorded attempt;
a study's objects share one association.

Exports run on their own queue (EXPORT_QUEUE), so a PACS that is down never holds up
classification. Retries are driven by the database (db/exports.py), not by broker ETAs.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from cxrtriage.config import Destination, Settings
from cxrtriage.db.exports import ClaimedExport, RetryPolicy, claim_export, record_attempt
from cxrtriage.dicom.sender import Delivery, send_files
from cxrtriage.dicom.tls import client_context
from cxrtriage.domain import ExportState

if TYPE_CHECKING:  # the scheduler imports this module and must not load the model stack
    from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
CLAIM_SLACK_SECONDS = 30.0
NOTHING_TO_DO = "nothing to do"


def sender_tls(settings: Settings) -> ssl.SSLContext | None:
    if not settings.sr_tls or not (settings.tls_certificate and settings.tls_key and settings.tls_ca):
        return None
    return client_context(settings.tls_certificate, settings.tls_key, settings.tls_ca)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(base_seconds=settings.sr_retry_base_seconds,
                       max_interval_seconds=settings.sr_retry_max_interval_seconds,
                       horizon_seconds=settings.sr_retry_horizon_seconds,
                       max_attempts=settings.sr_max_attempts)


def dispatch_hold_seconds(settings: Settings) -> float:
    """How long a dispatched export is not dispatched again: longer than one whole attempt."""
    return settings.sr_send_deadline_seconds + settings.sr_connect_timeout_seconds + CLAIM_SLACK_SECONDS


def claim_seconds(settings: Settings) -> float:
    """How long a worker's claim on an export lasts: one whole attempt, and shorter than the
    dispatch hold, so a dead worker's export is free again when it is next dispatched."""
    return settings.sr_send_deadline_seconds + settings.sr_connect_timeout_seconds + CLAIM_SLACK_SECONDS / 2


def _claim(rt: Runtime, export_ids: list[int]) -> list[ClaimedExport]:
    with rt.db.session() as session:
        claims = [claim_export(session, export_id, claim_seconds(rt.settings)) for export_id in export_ids]
    return [c for c in claims if c is not None]  # None: sent meanwhile, or another worker has it


def export_srs(rt: Runtime, export_ids: list[int]) -> list[str]:
    """One attempt at each export: a study's SR and its heatmaps go out over one association per
    destination. Returns each export's state, in order ("nothing to do" for one not claimed:
    sent meanwhile, or being sent by another worker)."""
    settings = rt.settings
    claimed = _claim(rt, export_ids)
    states = dict.fromkeys(export_ids, NOTHING_TO_DO)
    for destination_text in dict.fromkeys(c.destination for c in claimed):
        group = [c for c in claimed if c.destination == destination_text]
        destination = Destination(destination_text)
        try:
            deliveries = send_files([c.path for c in group], destination.ae_title, destination.host,
                                    destination.port, settings.sr_calling_ae,
                                    connect_timeout=settings.sr_connect_timeout_seconds,
                                    deadline=settings.sr_send_deadline_seconds,
                                    ssl_context=sender_tls(settings))
        except (OSError, ValueError, RuntimeError) as exc:
            deliveries = [Delivery(None, f"sending failed: {type(exc).__name__}")] * len(group)
        with rt.db.session() as session:
            recorded = [(c, record_attempt(session, c.attempt_id, d.error, d.status, retry_policy(settings)))
                        for c, d in zip(group, deliveries, strict=True)]
            outcomes = [(c, outcome.state, outcome.attempts, d.error)
                        for (c, outcome), d in zip(recorded, deliveries, strict=True)]
        for c, state, attempts, error in outcomes:
            level = logging.WARNING if state == ExportState.FAILED else logging.INFO
            logger.log(level, "SR export attempt", extra={"export_id": c.export_id, "state": state,
                                                          "attempt": attempts, "resend": c.resend,
                                                          "error": error})
            states[c.export_id] = state
    return [states[i] for i in export_ids]
