"""Limits on what a DICOM peer can make the receiver spend, checked on the bytes as they arrive.

pynetdicom reads whatever PDU length a peer declares (up to 4 GiB), blocks until it has all
arrived, and runs its timeout per `recv`, so a peer trickling one byte at a time is never cut
off. It counts connections that have not associated yet against `maximum_associations`, so a
few idle sockets lock out every modality. This module replaces the acceptor's PDU reader and
adds checks to association negotiation, for the AEs it is installed on only:

- a PDU's declared length is checked before it is read: an A-ASSOCIATE-RQ against its own
  small cap, a P-DATA-TF against the maximum PDU length we advertised, the rest against the
  size of their fixed fields;
- a whole PDU must arrive within `pdu_timeout`; negotiation must finish within
  `negotiation_timeout` of the first byte;
- connections that have not associated have their own caps (in all and per peer address),
  apart from established associations, which alone count against `max_associations` (and
  `max_associations_per_peer` from one address, so that one host holding idle associations
  cannot take every slot); a connection that closes before its A-ASSOCIATE-RQ ends its thread
  at once, where pynetdicom would keep it waiting `acse_timeout` and count it against its cap;
- a data set is counted fragment by fragment: past `max_instance_bytes`, or while the storage
  volume is past its watermark, its remaining fragments are dropped unread by anyone, and the
  C-STORE is answered with the recorded refusal; past twice the limit the association is
  aborted, so a sender cannot hold a slot by streaming for ever;
- the called AE title must be ours (or an alias), and with TLS a peer's certificate may have
  to name the calling AE title's identity.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import acse, dul, evt

logger = logging.getLogger(__name__)

A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
FIXED_PDU_BYTES = 64 * 1024  # A-ASSOCIATE-AC/RJ, A-RELEASE and A-ABORT are tens of bytes
MAX_COMMAND_BYTES = 64 * 1024  # a DIMSE command set is a few hundred bytes
WATERMARK_CHECK_BYTES = 8 * 1024 * 1024  # a statvfs every this many data set bytes
REJECT_BUSY = (0x02, 0x03, 0x02)  # rejected-transient, presentation, local limit exceeded
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, user, called AE title not recognised
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, user, calling AE title not recognised


@dataclass(frozen=True)
class PeerLimits:
    max_associations: int = 10
    max_pending: int = 20  # connections that have not associated yet, from all peers
    max_pending_per_peer: int = 4  # ... and from any one address
    max_pdu_size: int = 262144
    max_associate_rq_bytes: int = 65536
    pdu_timeout: float = 60.0
    negotiation_timeout: float = 10.0
    max_instance_bytes: int = 256 * 1024 * 1024
    max_associations_per_peer: int = 5  # established, from any one address

    def __post_init__(self) -> None:
        for name in ("max_associations", "max_pending", "max_pending_per_peer", "max_pdu_size",
                     "max_associate_rq_bytes", "max_instance_bytes", "max_associations_per_peer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pdu_timeout <= 0 or self.negotiation_timeout <= 0:
            raise ValueError("pdu_timeout and negotiation_timeout must be > 0")


@dataclass
class _Transfer:
    """What one association has sent of its current DIMSE message."""

    first_byte_at: float
    command_bytes: int = 0
    dataset_bytes: int = 0
    next_watermark_check: int = WATERMARK_CHECK_BYTES
    refusal: tuple[int, str] | None = None  # (status, reason) for the message being received
    cut: bool = False  # a protocol limit was exceeded: the association is being aborted
    done: list[tuple[int, str] | None] = field(default_factory=list)  # refusals of finished ones


class PduTooLarge(Exception):
    """A peer declared a PDU longer than we allow."""


class ConnectionGuard:
    """The limits above, bound to one pynetdicom AE. `space_refusal` is called with no arguments
    while data arrives and returns a reason when the storage volume is too full."""

    def __init__(self, limits: PeerLimits, ae_titles: tuple[str, ...],
                 space_refusal: Callable[[], str] | None = None,
                 tls_identities: dict[str, tuple[str, ...]] | None = None) -> None:
        self.limits = limits
        self.ae_titles = tuple(t.strip() for t in ae_titles)
        self.space_refusal = space_refusal or (lambda: "")
        self.tls_identities = tls_identities or {}
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], float] = {}  # peer (address, port) -> accepted at
        self._admitted: dict[int, Any] = {}  # id(assoc) -> assoc, for established associations
        self._transfers: dict[int, _Transfer] = {}

    def install(self, ae: Any) -> None:
        _patch_pynetdicom()
        ae._cxrtriage_guard = self
        # pynetdicom's own count includes connections still negotiating and threads lingering
        # after their connection died; ours does not, so its cap is only a distant backstop.
        ae.maximum_associations = 10 * (self.limits.max_associations + self.limits.max_pending)

    # --- connections -------------------------------------------------------------------------

    def admit(self, peer: tuple[str, int]) -> bool:
        """At accept, before any thread: whether a connection may start negotiating."""
        now = time.monotonic()
        horizon = self.limits.negotiation_timeout + self.limits.pdu_timeout
        with self._lock:
            for key, since in list(self._pending.items()):
                if now - since > horizon:  # its close event was lost; it is long gone
                    del self._pending[key]
            from_peer = sum(1 for address, _ in self._pending if address == peer[0])
            if len(self._pending) >= self.limits.max_pending:
                reason = "too many connections negotiating"
            elif from_peer >= self.limits.max_pending_per_peer:
                reason = "too many connections negotiating from this address"
            else:
                self._pending[(peer[0], int(peer[1]))] = now
                return True
        logger.warning("connection refused: %s", reason, extra={"peer": peer[0]})
        return False

    def forget(self, assoc: Any) -> None:
        """The connection closed: free its slot, and its thread if no A-ASSOCIATE-RQ came."""
        requestor = assoc.requestor
        with self._lock:
            self._pending.pop((str(requestor.address), int(requestor.port or 0)), None)
            self._admitted.pop(id(assoc), None)
            self._transfers.pop(id(assoc), None)
        if assoc.is_acceptor and requestor.primitive is None:
            # pynetdicom's acceptor thread waits acse_timeout for the request even when the
            # connection is gone, and counts against maximum_associations meanwhile: peers
            # that connect and close, within every limit, locked every modality out. None is
            # what that wait returns when it times out, so the thread ends as it would then.
            assoc.dul.to_user_queue.put(None)

    def _established(self, assoc: Any) -> tuple[int, ...]:
        """Take an association slot; the rejection to send when none is free."""
        requestor = assoc.requestor
        with self._lock:
            self._pending.pop((str(requestor.address), int(requestor.port or 0)), None)
            # A slot is freed by the close event, or, when pynetdicom ended an association without
            # one (its reactor died on a malformed message), as soon as the reactor is gone.
            for key, other in list(self._admitted.items()):
                if not (other.is_alive() and other.dul.is_alive()):
                    del self._admitted[key]
                    self._transfers.pop(key, None)
            if len(self._admitted) >= self.limits.max_associations:
                return REJECT_BUSY
            from_peer = sum(1 for other in self._admitted.values()
                            if str(other.requestor.address) == str(requestor.address))
            if from_peer >= self.limits.max_associations_per_peer:
                logger.warning("association rejected: too many from this address",
                               extra={"peer": str(requestor.address)})
                return REJECT_BUSY
            self._admitted[id(assoc)] = assoc
        return ()

    def check_association(self, assoc: Any, called_ae: str, calling_ae: str) -> tuple[int, ...]:
        """Our checks on an A-ASSOCIATE-RQ; an empty tuple when it may go on to pynetdicom's."""
        if called_ae.strip() not in self.ae_titles:
            logger.warning("association rejected: called AE title is not ours",
                           extra={"calling_ae": calling_ae.strip()})
            return REJECT_CALLED_AE
        if self.tls_identities and not self._certificate_matches(assoc, calling_ae.strip()):
            logger.warning("association rejected: certificate does not name the calling AE title",
                           extra={"calling_ae": calling_ae.strip()})
            return REJECT_CALLING_AE
        return self._established(assoc)

    def _certificate_matches(self, assoc: Any, calling_ae: str) -> bool:
        allowed = self.tls_identities.get(calling_ae, ())
        raw = getattr(assoc.dul.socket, "socket", None)
        if not allowed or not isinstance(raw, ssl.SSLSocket):
            return False
        certificate: dict[str, Any] = dict(raw.getpeercert() or {})
        names = {str(value) for kind, value in certificate.get("subjectAltName", ())
                 if kind in ("DNS", "URI")}
        for rdn in certificate.get("subject", ()):
            names.update(str(value) for key, value in rdn if key == "commonName")
        return any(name in names for name in allowed)

    # --- data sets ---------------------------------------------------------------------------

    def take_refusal(self, assoc: Any) -> tuple[int, str] | None:
        """For the C-STORE handler: why the data set just received was refused while it arrived."""
        with self._lock:
            transfer = self._transfers.get(id(assoc))
            if transfer is None or not transfer.done:
                return None
            return transfer.done.pop(0)

    def _transfer(self, assoc: Any) -> _Transfer:
        with self._lock:
            return self._transfers.setdefault(id(assoc), _Transfer(time.monotonic()))

    def deadline(self, assoc: Any, transfer: _Transfer) -> float:
        now = time.monotonic()
        if getattr(assoc, "is_established", False):
            return now + self.limits.pdu_timeout
        return min(now + self.limits.pdu_timeout, transfer.first_byte_at + self.limits.negotiation_timeout)

    def max_length(self, pdu_type: int) -> int:
        if pdu_type == A_ASSOCIATE_RQ:
            return self.limits.max_associate_rq_bytes
        if pdu_type == P_DATA_TF:
            return self.limits.max_pdu_size
        return FIXED_PDU_BYTES

    def filter_pdata(self, transfer: _Transfer, body: bytearray) -> bytearray:
        """Count each PDV of a P-DATA-TF; drop the data of a data set already refused."""
        out, offset = bytearray(), 0
        while offset + 6 <= len(body):
            (length,) = struct.unpack_from(">L", body, offset)
            end = offset + 4 + length
            if length < 2 or end > len(body):
                return body  # malformed: pynetdicom's decoder rejects it (Evt19)
            control = body[offset + 5]
            data_length = length - 2
            if control & 1:  # command fragment
                transfer.command_bytes += data_length
                if transfer.command_bytes > MAX_COMMAND_BYTES:
                    raise PduTooLarge(f"command set over {MAX_COMMAND_BYTES} bytes")
                out += body[offset:end]
                if control & 2:
                    transfer.command_bytes = 0
            else:
                out += self._count_dataset(transfer, body, offset, data_length, control)
            offset = end
        return out if offset == len(body) else body

    def _count_dataset(self, transfer: _Transfer, body: bytearray, offset: int, data_length: int,
                       control: int) -> bytes:
        transfer.dataset_bytes += data_length
        limit = self.limits.max_instance_bytes
        if transfer.refusal is None and transfer.dataset_bytes > limit:
            transfer.refusal = (LIMIT_EXCEEDED, f"instance exceeds the limit of {limit} bytes "
                                                "(CXRTRIAGE_MAX_INSTANCE_BYTES)")
        if transfer.refusal is None and transfer.dataset_bytes >= transfer.next_watermark_check:
            transfer.next_watermark_check += WATERMARK_CHECK_BYTES
            if reason := self.space_refusal():
                transfer.refusal = (OUT_OF_RESOURCES, reason)
        if transfer.refusal is not None and transfer.dataset_bytes > 2 * limit:
            raise PduTooLarge(f"data set streamed past twice the limit of {limit} bytes")
        refused = transfer.refusal is not None
        if control & 2:  # the data set's last fragment: its outcome waits for the handler
            transfer.done.append(transfer.refusal)
            transfer.refusal, transfer.dataset_bytes = None, 0
            transfer.next_watermark_check = WATERMARK_CHECK_BYTES
        if not refused:
            return bytes(body[offset:offset + 6 + data_length])
        # Refused: keep the PDV (so pynetdicom still sees the message end) without its data.
        return struct.pack(">LBB", 2, body[offset + 4], control)


# Statuses the C-STORE handler answers with; see receiver.py for the full table.
OUT_OF_RESOURCES = 0xA700
LIMIT_EXCEEDED = 0xC212


def _recv_exactly(sock: socket.socket, count: int, deadline: float) -> bytearray:
    """`count` bytes, all of them before `deadline` (time.monotonic), or TimeoutError."""
    buffer = bytearray(count)
    view, received = memoryview(buffer), 0
    previous = sock.gettimeout()
    try:
        while received < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("PDU deadline passed")
            sock.settimeout(remaining)
            got = sock.recv_into(view[received:], min(count - received, 1 << 20))
            if not got:
                raise ConnectionError("peer closed the connection mid-PDU")
            received += got
    finally:
        view.release()
        sock.settimeout(previous)
    return buffer


def _guarded_read_pdu_data(provider: Any) -> None:
    """DULServiceProvider._read_pdu_data for a guarded acceptor (see the module docstring)."""
    assoc = provider.assoc
    guard: ConnectionGuard = assoc.ae._cxrtriage_guard
    transfer = guard._transfer(assoc)
    sock = provider.socket.socket
    if transfer.cut:  # A-ABORT sent; whatever else the peer sends is not read
        provider.event_queue.put("Evt17")
        return
    try:
        deadline = guard.deadline(assoc, transfer)
        header = _recv_exactly(sock, 6, deadline)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            logger.warning("unknown PDU type; aborting", extra={"pdu_type": pdu_type})
            transfer.cut = True
            provider.event_queue.put("Evt19")
            return
        if length > guard.max_length(pdu_type):
            raise PduTooLarge(f"PDU type {pdu_type:#04x} declares {length} bytes, over the limit of "
                              f"{guard.max_length(pdu_type)}")
        body = _recv_exactly(sock, length, deadline)
        if pdu_type == P_DATA_TF:
            body = guard.filter_pdata(transfer, body)
            header[2:6] = struct.pack(">L", len(body))
    except PduTooLarge as exc:
        logger.warning("peer exceeded a protocol limit; aborting", extra={"reason": str(exc)})
        transfer.cut = True
        provider.event_queue.put("Evt19")  # A-ABORT, then close
        return
    except (OSError, TimeoutError) as exc:
        logger.warning("connection closed: PDU not received in time or peer gone",
                       extra={"error": type(exc).__name__})
        provider.event_queue.put("Evt17")
        return
    try:
        pdu, event = provider._decode_pdu(header + body)
    except Exception as exc:  # sender-controlled bytes that pynetdicom cannot decode
        logger.warning("undecodable PDU; aborting", extra={"error": type(exc).__name__})
        transfer.cut = True
        provider.event_queue.put("Evt19")
        return
    provider.event_queue.put(event)
    provider._recv_pdu.put(pdu)


_PATCHED = False
_PATCH_LOCK = threading.Lock()


def _patch_pynetdicom() -> None:
    """Route guarded AEs' acceptors through this module; every other AE keeps pynetdicom's code."""
    global _PATCHED
    with _PATCH_LOCK:
        if _PATCHED:
            return
        original_read = dul.DULServiceProvider._read_pdu_data
        original_negotiate = acse.ACSE._negotiate_as_acceptor

        def read_pdu_data(self: Any) -> None:
            if getattr(self.assoc.ae, "_cxrtriage_guard", None) is not None and self.assoc.is_acceptor:
                _guarded_read_pdu_data(self)
            else:
                original_read(self)

        def negotiate_as_acceptor(self: Any) -> None:
            guard = getattr(self.assoc.ae, "_cxrtriage_guard", None)
            if guard is not None:
                request = self.requestor.primitive
                rejection = guard.check_association(self.assoc, str(request.called_ae_title),
                                                    str(request.calling_ae_title))
                if rejection:
                    self.requestor.ae_title = request.calling_ae_title
                    self.send_reject(*rejection)
                    evt.trigger(self.assoc, evt.EVT_REJECTED, {})
                    self.assoc.kill()
                    return
            original_negotiate(self)

        dul.DULServiceProvider._read_pdu_data = read_pdu_data  # type: ignore[method-assign]
        acse.ACSE._negotiate_as_acceptor = negotiate_as_acceptor  # type: ignore[method-assign]
        _PATCHED = True
