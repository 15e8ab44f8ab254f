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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

logger = logging.getLogger(__name__)

DELIVERED = (0x0000, 0xB000, 0xB006, 0xB007)  # success, and the warnings that still store
ASSOCIATION_REPLY_SECONDS = 30.0  # a PACS answers an A-ASSOCIATE-RQ in well under this


@dataclass(frozen=True)
class Delivery:
    """One file's outcome: the peer's C-STORE status, or why it was not delivered."""

    status: int | None
    error: str = ""


def send_files(paths: Sequence[str | Path], ae_title: str, host: str, port: int, calling_ae: str, *,
               connect_timeout: float = 10.0, deadline: float = 120.0,
               ssl_context: ssl.SSLContext | None = None) -> list[Delivery]:
    """C-STORE the files, in order, over one association: an SR and its heatmaps cost one
    association, not one each. Returns each file's Delivery; a file the peer did not store
    (refused, association lost, past `deadline` seconds for the whole association) has an error."""
    if connect_timeout <= 0 or deadline <= 0:
        raise ValueError(f"connect_timeout and deadline must be > 0, got {connect_timeout}, {deadline}")
    datasets = [_read(path) for path in paths]
    readable = [ds for ds in datasets if isinstance(ds, Dataset)]
    if not readable:
        return [d for d in datasets if isinstance(d, Delivery)]
    peer = f"{ae_title}@{host}:{port}"
    start = time.monotonic()
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = connect_timeout
    ae.acse_timeout = min(deadline, ASSOCIATION_REPLY_SECONDS)  # a silent peer is given up early
    ae.dimse_timeout = ae.network_timeout = deadline
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in readable):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (ssl_context, host) if ssl_context is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        elapsed = time.monotonic() - start
        refused = Delivery(None, f"association with {peer} was not established ({elapsed:.1f} s)")
        return [refused if isinstance(ds, Dataset) else ds for ds in datasets]
    remaining = deadline - (time.monotonic() - start)
    expired = threading.Event()

    def _expire() -> None:
        expired.set()
        assoc.abort()

    timer = threading.Timer(max(remaining, 0.0), _expire)
    timer.daemon = True
    timer.start()
    out = []
    try:
        for ds in datasets:
            if isinstance(ds, Delivery):
                out.append(ds)
            elif assoc.is_established and not expired.is_set():
                out.append(_store(assoc, ds, peer))
            else:
                out.append(Delivery(None, f"association with {peer} ended before sending"))
    finally:
        timer.cancel()
        if assoc.is_established:
            assoc.release()
    if expired.is_set():
        late = f"sending to {peer} ran past its deadline of {deadline:.0f} s"
        out = [d if d.status in DELIVERED else Delivery(None, late) for d in out]
    return out


def _read(path: str | Path) -> Dataset | Delivery:
    try:
        return dcmread(path)
    except (OSError, ValueError) as exc:
        return Delivery(None, f"sending failed: {type(exc).__name__}")


def _store(assoc: Association, ds: Dataset, peer: str) -> Delivery:
    try:
        status = assoc.send_c_store(ds)
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. no accepted context for its class
        return Delivery(None, f"sending failed: {type(exc).__name__}")
    code = int(status.Status) if status and "Status" in status else None
    if code is None:
        return Delivery(None, f"no C-STORE response from {peer}")
    if code not in DELIVERED:
        return Delivery(code, f"{peer} answered C-STORE status 0x{code:04X}")
    logger.info("sent", extra={"sop_instance_uid": str(ds.SOPInstanceUID), "status": hex(code)})
    return Delivery(code)
