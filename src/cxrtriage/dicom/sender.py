"""The storage SCU that sends our SRs back to the PACS."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from cxrtriage.errors import TransientError

logger = logging.getLogger(__name__)


def send_file(path: str | Path, ae_title: str, host: str, port: int, calling_ae: str,
              timeout: float = 30.0, ssl_context: ssl.SSLContext | None = None) -> None:
    """C-STORE one file; any failure to deliver is a TransientError with a readable reason."""
    ds = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(str(ds.SOPClassUID), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (ssl_context, host) if ssl_context is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        raise TransientError(f"association with {ae_title}@{host}:{port} was not established")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code is None:
        raise TransientError(f"no C-STORE response from {ae_title}@{host}:{port}")
    if code not in (0x0000, 0xB000, 0xB007, 0xB006):
        raise TransientError(f"{ae_title}@{host}:{port} answered C-STORE status 0x{code:04X}")
    logger.info("sent", extra={"sop_instance_uid": str(ds.SOPInstanceUID), "status": hex(code)})
