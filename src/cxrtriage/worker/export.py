"""Sending a stored SR to the configured destination, one recorded attempt at a time."""

from __future__ import annotations

import logging
import ssl

from cxrtriage.config import Destination, Settings
from cxrtriage.db.models import SrExport
from cxrtriage.db.results import record_attempt
from cxrtriage.dicom.sender import send_file
from cxrtriage.dicom.tls import client_context
from cxrtriage.domain import ExportState
from cxrtriage.errors import TransientError
from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)


def sender_tls(settings: Settings) -> ssl.SSLContext | None:
    if not settings.sr_tls or not (settings.tls_certificate and settings.tls_key and settings.tls_ca):
        return None
    return client_context(settings.tls_certificate, settings.tls_key, settings.tls_ca)


def export_sr(rt: Runtime, export_id: int) -> str:
    with rt.db.session() as session:
        row = session.get(SrExport, export_id)
        if row is None or row.state != ExportState.PENDING:
            return "nothing to do"
        path, destination = row.path, Destination(row.destination)
    error = ""
    try:
        send_file(path, destination.ae_title, destination.host, destination.port,
                  rt.settings.sr_calling_ae, ssl_context=sender_tls(rt.settings))
    except TransientError as exc:
        error = str(exc)
    except (OSError, ValueError, RuntimeError) as exc:
        error = f"sending failed: {type(exc).__name__}: {exc}"
    with rt.db.session() as session:
        row = record_attempt(session, export_id, error, rt.settings.sr_max_attempts,
                             rt.settings.sr_retry_base_seconds)
        state, attempts = row.state, row.attempts
    logger.info("SR export attempt", extra={"export_id": export_id, "state": state,
                                            "attempt": attempts, "error": error})
    return state
