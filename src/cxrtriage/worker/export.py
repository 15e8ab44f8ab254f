"""Sending a stored SR to the configured destination, one claimed and recorded attempt at a time.

Exports run on their own queue (EXPORT_QUEUE), so a PACS that is down never holds up
classification. Retries are driven by the database (db/exports.py), not by broker ETAs.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from cxrtriage.config import Destination, Settings
from cxrtriage.db.exports import RetryPolicy, claim_export, record_attempt
from cxrtriage.db.models import SrExport
from cxrtriage.dicom.sender import send_file
from cxrtriage.dicom.tls import client_context
from cxrtriage.domain import ExportState
from cxrtriage.errors import TransientError

if TYPE_CHECKING:  # the scheduler imports this module and must not load the model stack
    from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
CLAIM_SLACK_SECONDS = 30.0


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


def export_sr(rt: Runtime, export_id: int) -> str:
    settings = rt.settings
    with rt.db.session() as session:
        attempt = claim_export(session, export_id, claim_seconds(settings))
        if attempt is None:
            return "nothing to do"
        attempt_id = attempt.id
        row = session.get(SrExport, export_id)
        assert row is not None  # claimed just now, in this transaction
        path, destination, resend = row.path, Destination(row.destination), attempt.resend
    error, status = "", None
    try:
        status = send_file(path, destination.ae_title, destination.host, destination.port,
                           settings.sr_calling_ae, connect_timeout=settings.sr_connect_timeout_seconds,
                           deadline=settings.sr_send_deadline_seconds, ssl_context=sender_tls(settings))
    except TransientError as exc:
        error = str(exc)
    except (OSError, ValueError, RuntimeError) as exc:
        error = f"sending failed: {type(exc).__name__}"
    with rt.db.session() as session:
        row = record_attempt(session, attempt_id, error, status, retry_policy(settings))
        state, attempts = row.state, row.attempts
    level = logging.WARNING if state == ExportState.FAILED else logging.INFO
    logger.log(level, "SR export attempt", extra={"export_id": export_id, "state": state,
                                                  "attempt": attempts, "resend": resend, "error": error})
    return state
