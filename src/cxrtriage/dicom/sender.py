"""The storage SCU that sends our SRs back to the PACS.

Every attempt is bounded: the TCP connect (and TLS handshake) by `connect_timeout`, and the whole
attempt, from connect to release, by `deadline`. A PACS that refuses, drops or never answers
costs one bounded attempt, never a blocked worker.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from cxrtriage.errors import TransientError

logger = logging.getLogger(__name__)

DELIVERED = (0x0000, 0xB000, 0xB006, 0xB007)  # success, and the warnings that still store
ASSOCIATION_REPLY_SECONDS = 30.0  # a PACS answers an A-ASSOCIATE-RQ in well under this


def send_file(path: str | Path, ae_title: str, host: str, port: int, calling_ae: str, *,
              connect_timeout: float = 10.0, deadline: float = 120.0,
              ssl_context: ssl.SSLContext | None = None) -> int:
    """C-STORE one file and return the peer's status; any failure to deliver, including running
    past `deadline` seconds, is a TransientError with a readable reason."""
    if connect_timeout <= 0 or deadline <= 0:
        raise ValueError(f"connect_timeout and deadline must be > 0, got {connect_timeout}, {deadline}")
    ds = dcmread(path)
    peer = f"{ae_title}@{host}:{port}"
    start = time.monotonic()
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = connect_timeout
    ae.acse_timeout = min(deadline, ASSOCIATION_REPLY_SECONDS)  # a silent peer is given up early
    ae.dimse_timeout = ae.network_timeout = deadline
    ae.add_requested_context(str(ds.SOPClassUID), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (ssl_context, host) if ssl_context is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        elapsed = time.monotonic() - start
        raise TransientError(f"association with {peer} was not established ({elapsed:.1f} s)")
    remaining = deadline - (time.monotonic() - start)
    expired = threading.Event()

    def _expire() -> None:
        expired.set()
        assoc.abort()

    timer = threading.Timer(max(remaining, 0.0), _expire)
    timer.daemon = True
    timer.start()
    try:
        status = assoc.send_c_store(ds)
    finally:
        timer.cancel()
        if assoc.is_established:
            assoc.release()
    if expired.is_set():
        raise TransientError(f"sending to {peer} ran past its deadline of {deadline:.0f} s")
    code = int(status.Status) if status and "Status" in status else None
    if code is None:
        raise TransientError(f"no C-STORE response from {peer}")
    if code not in DELIVERED:
        raise TransientError(f"{peer} answered C-STORE status 0x{code:04X}")
    logger.info("sent", extra={"sop_instance_uid": str(ds.SOPInstanceUID), "status": hex(code)})
    return code
