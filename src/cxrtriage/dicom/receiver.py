"""The storage SCP. The C-STORE handler validates, stores durably, indexes and answers; nothing
heavier. Its index is passed in, not imported; which associations are open, and the records of
them still owed to the index, are kept by `associations`.

Data sets are received in chunks into a spool on the storage volume (pynetdicom's
STORE_RECV_CHUNKED_DATASET), never whole in memory, and stored by rename once their index entry
has won. What a peer may make us spend (PDU sizes and deadlines, connections still negotiating,
bytes spooled, the volume's watermark) is bounded as the bytes arrive by `netguard`; what a data
set says of itself (inflated and decoded sizes, the pixel contract) by `inspection`. With TLS,
the handshake runs in each connection's own thread with a timeout, after the peer allow-list
check, so an idle or slow client never blocks the accept loop.

Statuses: 0x0000 stored; 0xA700 temporary shortage (volume past its watermark, database away,
storage write failed), retry later; 0xA900 data set does not match the request; 0xC210 cannot be
parsed or breaks the pixel contract; 0xC211 SOP Instance UID stored under another study or
patient; 0xC212 over a size limit (sent, inflated or decoded). Every 0xA9xx/0xC2xx is permanent.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import AE, dimse_messages, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cxrtriage.dicom.associations import AssociationIndex, Associations
from cxrtriage.dicom.contexts import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES
from cxrtriage.dicom.inspection import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    LIMIT_EXCEEDED,
    OUT_OF_RESOURCES,
    SUCCESS,
    UID_CONFLICT,
    inspect_file,
    study_header,
    validate_dataset,
)
from cxrtriage.dicom.netguard import ConnectionGuard, PeerLimits
from cxrtriage.dicom.storage import InstanceStore, Watermark, make_dirs, sync_file
from cxrtriage.dicom.tls import DeferredHandshake
from cxrtriage.dicom.uids import is_valid_uid
from cxrtriage.domain import RefusedInstance, StoredInstance
from cxrtriage.errors import InstanceConflictError

logger = logging.getLogger(__name__)

# Never log identifiers that pynetdicom would otherwise print at debug level.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

__all__ = ["CANNOT_UNDERSTAND", "DATASET_MISMATCH", "LIMIT_EXCEEDED", "OUT_OF_RESOURCES", "SUCCESS",
           "UID_CONFLICT", "AccessPolicy", "Receiver", "ReceiverIndex", "ReceiverLimits",
           "inspect_file", "validate_dataset"]


class SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, binding with SO_REUSEPORT so that receiver processes share a
    port; the kernel spreads new connections among them."""

    def server_bind(self) -> None:
        if self.socket is not None:  # made by socketserver before it binds
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class ReceiverIndex(AssociationIndex, Protocol):
    """What the receiver needs from the rest of the system (the database, in practice)."""

    def instance_stored(self, stored: StoredInstance, place: Callable[[], None]) -> None:
        """Record `stored` and, in the same transaction once its entry has won (no other study or
        patient holds the SOP Instance UID), call `place` to move the file to `stored.path`.
        Raises InstanceConflictError, leaving the file where it was, when the entry loses."""
        ...

    def instance_rejected(self, refused: RefusedInstance) -> None: ...


@dataclass(frozen=True)
class ReceiverLimits:
    max_instance_bytes: int = 256 * 1024 * 1024
    max_decoded_bytes: int = 256 * 1024 * 1024
    max_associations: int = 10
    max_associations_per_peer: int = 5  # ... of them from one address
    max_pending_connections: int = 20  # not yet associated, from all peers ...
    max_pending_per_peer: int = 4  # ... and from one address
    max_pdu_size: int = 262144
    max_associate_rq_bytes: int = 65536
    pdu_timeout: float = 60.0  # a whole PDU, from its first byte
    negotiation_timeout: float = 10.0  # the A-ASSOCIATE-RQ, from its first byte
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    tls_handshake_timeout: float = 10.0
    heartbeat_seconds: float = 30.0  # association liveness, retried closes, spool cleaning

    def peer_limits(self) -> PeerLimits:
        return PeerLimits(self.max_associations, self.max_pending_connections, self.max_pending_per_peer,
                          self.max_pdu_size, self.max_associate_rq_bytes, self.pdu_timeout,
                          self.negotiation_timeout, self.max_instance_bytes,
                          max_associations_per_peer=self.max_associations_per_peer)


@dataclass(frozen=True)
class AccessPolicy:
    """Who may associate: calling AE titles (empty = any), peer networks (empty = any), the called
    AE titles we answer to besides our own, and (with TLS, optional) for each calling AE title the
    certificate names (subject CN or SAN) that may claim it."""

    calling_aes: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    called_ae_aliases: tuple[str, ...] = ()
    tls_identities: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def peer_allowed(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.networks)


def _sha256(path: Path) -> str:
    """Of the spooled file: the same data set sent again in the same syntax hashes the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _current_association() -> Any:
    """The association whose DUL thread is running (pynetdicom writes data sets from it)."""
    return getattr(threading.current_thread(), "assoc", None)


class Receiver:
    """A pynetdicom storage SCP bound to an index and a store."""

    def __init__(self, ae_title: str, store: InstanceStore, index: ReceiverIndex,
                 limits: ReceiverLimits | None = None, access: AccessPolicy | None = None,
                 ssl_context: ssl.SSLContext | None = None, watermark: Watermark | None = None) -> None:
        self.store = store
        self.index = index
        self.limits = limits or ReceiverLimits()
        self.access = access or AccessPolicy()
        self.ssl_context = ssl_context
        self.watermark = watermark or Watermark()
        self.associations = Associations(index)
        self._spooling: dict[str, int] = {}  # spool files being written -> id(assoc)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._pynetdicom_defaults: tuple[bool, Any] | None = None
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = self.limits.max_pdu_size
        self.ae.acse_timeout = self.limits.acse_timeout
        self.ae.dimse_timeout = self.limits.dimse_timeout
        self.ae.network_timeout = self.limits.network_timeout
        if self.access.calling_aes:
            self.ae.require_calling_aet = list(self.access.calling_aes)
        self.guard = ConnectionGuard(self.limits.peer_limits(), (ae_title, *self.access.called_ae_aliases),
                                     space_refusal=lambda: self.watermark.refusal(self.store.root),
                                     tls_identities=self.access.tls_identities)
        self.guard.install(self.ae)
        self.ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        self._server: Any = None

    def handlers(self) -> Any:
        return [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self.handle_store),
                (evt.EVT_ACCEPTED, self._opened), (evt.EVT_RELEASED, self._closed),
                (evt.EVT_ABORTED, self._closed), (evt.EVT_CONN_CLOSE, self._connection_closed),
                (evt.EVT_REJECTED, self._rejected_association)]

    def start(self, host: str, port: int, shared_port: bool = False) -> None:
        """Listen on (host, port). With `shared_port`, several receiver processes bind the same
        port (SO_REUSEPORT) and the kernel spreads new connections among them."""
        self._use_spool()
        server_class = SharedPortServer if shared_port else ThreadedAssociationServer
        server: Any = self.ae.make_server((host, port), evt_handlers=self.handlers(),
                                          ssl_context=self.ssl_context, server_class=server_class)
        self._server = server
        server.verify_request = self._verify_peer  # socketserver's per-connection hook
        if self.ssl_context is not None:  # handshake per connection, not in the accept loop
            DeferredHandshake(self.ssl_context, self.limits.tls_handshake_timeout,
                              self.limits.max_pending_connections).install(server)
        # Accepting starts once the hooks are in place: no connection gets past them. Registered
        # with the AE as start_server does, so that the server's shutdown finds itself there.
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="receiver-acceptor", daemon=True).start()
        self._heartbeat = threading.Thread(target=self._beat, name="receiver-heartbeat", daemon=True)
        self._heartbeat.start()
        logger.info("receiver listening", extra={"ae_title": self.ae.ae_title, "port": port,
                                                 "tls": self.ssl_context is not None})

    def _use_spool(self) -> None:
        """Receive C-STORE data sets into files under the storage root, not into memory."""
        make_dirs(self.store.spool, 0o700)
        self.store.clean_spool(older_than_seconds=2 * self.limits.pdu_timeout)
        self._pynetdicom_defaults = (pynetdicom_config.STORE_RECV_CHUNKED_DATASET,
                                     dimse_messages.NamedTemporaryFile)
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = self._spool_file  # type: ignore[assignment]

    def _spool_file(self, **kwargs: Any) -> Any:
        """pynetdicom's temporary file for one data set, in our spool, known to be live."""
        handle = tempfile.NamedTemporaryFile(dir=str(self.store.spool), prefix="cstore-", **kwargs)
        with self._lock:
            self._spooling[handle.name] = id(_current_association())
        return handle

    def _verify_peer(self, _request: Any, client_address: tuple[str, int]) -> bool:
        if not self.access.peer_allowed(client_address[0]):
            logger.warning("connection refused: peer address not allowed",
                           extra={"peer": client_address[0]})
            return False
        return self.guard.admit(client_address)

    def _rejected_association(self, event: Any) -> None:
        requestor = event.assoc.requestor
        logger.warning("association rejected", extra={"calling_ae": str(requestor.ae_title).strip(),
                                                      "peer": requestor.address})

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
        self.beat()  # record what closed during shutdown
        if self._pynetdicom_defaults is not None:  # process-wide settings, as they were
            chunked, factory = self._pynetdicom_defaults
            pynetdicom_config.STORE_RECV_CHUNKED_DATASET = chunked
            dimse_messages.NamedTemporaryFile = factory  # type: ignore[misc]
            self._pynetdicom_defaults = None

    def _opened(self, event: Any) -> None:
        assoc_id = self.associations.id_for(event.assoc)
        if self.associations.record_opened(event.assoc, assoc_id):
            logger.info("association accepted", extra={
                "association_id": assoc_id, "calling_ae": str(event.assoc.requestor.ae_title).strip()})

    def _connection_closed(self, event: Any) -> None:
        """Free the connection's slot and remove what it left half-received in the spool."""
        self.guard.forget(event.assoc)
        with self._lock:
            unfinished = [name for name, owner in self._spooling.items() if owner == id(event.assoc)]
            for name in unfinished:
                del self._spooling[name]
        for name in unfinished:
            Path(name).unlink(missing_ok=True)
        self._closed(event)

    def _closed(self, event: Any) -> None:
        self.associations.record_closed(event.assoc)

    def beat(self) -> None:
        """Vouch for the open associations, retry failed close records, clean the spool."""
        self.associations.beat()
        try:
            with self._lock:
                live = set(self._spooling)
            # Not a file a live transfer here is writing, however slowly; nor one written within
            # two PDU deadlines (another receiver on this volume may be writing it).
            self.store.clean_spool(older_than_seconds=2 * self.limits.pdu_timeout, keep=live)
        except OSError:
            logger.warning("spool cleaning failed")

    def _beat(self) -> None:
        while not self._stop.wait(self.limits.heartbeat_seconds):
            self.beat()

    def _reject(self, event: Any, assoc_id: str, status: int, reason: str, spooled: Path | None,
                sop_uid: str | None) -> int:
        quarantine = None
        if spooled is not None:
            try:
                quarantine = str(self.store.quarantine_file(spooled))
            except OSError:
                logger.exception("could not quarantine a refused payload")
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            self.index.instance_rejected(RefusedInstance(assoc_id, calling, status, reason, sop_uid,
                                                         quarantine))
        except Exception:  # the sender still gets its failure status; the log keeps the reason
            logger.exception("could not record a refusal", extra={"association_id": assoc_id})
        logger.warning("instance refused", extra={"association_id": assoc_id, "status": hex(status),
                                                  "reason": reason})
        return status

    def handle_store(self, event: Any) -> int:
        """The C-STORE handler. Whatever escapes the steps below is a temporary failure (0xA700):
        pynetdicom would answer 0xC211, a permanent one, which is our UID-conflict code."""
        spooled = Path(event.dataset_path)
        try:
            return self._store(event, spooled)
        except Exception as exc:
            logger.error("C-STORE failed unexpectedly", extra={"error": type(exc).__name__})
            return OUT_OF_RESOURCES
        finally:
            with self._lock:
                self._spooling.pop(str(spooled), None)

    def _store(self, event: Any, spooled: Path) -> int:
        assoc_id = self.associations.id_for(event.assoc)
        request = event.request
        request_uid = str(request.AffectedSOPInstanceUID or "")
        safe_uid = request_uid if is_valid_uid(request_uid) else None
        if refusal := self.guard.take_refusal(event.assoc):  # refused while it arrived; data dropped
            return self._reject(event, assoc_id, refusal[0], refusal[1], None, safe_uid)
        if not self.associations.is_recorded(assoc_id) and not self.associations.record_opened(
                event.assoc, assoc_id):
            return OUT_OF_RESOURCES  # unrecorded, its study could be queued mid-association
        if reason := self.watermark.refusal(self.store.root):
            return self._reject(event, assoc_id, OUT_OF_RESOURCES, reason, None, safe_uid)
        transfer_syntax = str(event.context.transfer_syntax)
        inspection = inspect_file(spooled, transfer_syntax, str(request.AffectedSOPClassUID),
                                  request_uid, self.limits.max_instance_bytes,
                                  self.limits.max_decoded_bytes)
        ds = inspection.dataset
        if inspection.status != SUCCESS or ds is None:
            kept = spooled if inspection.status not in (OUT_OF_RESOURCES, LIMIT_EXCEEDED) else None
            return self._reject(event, assoc_id, inspection.status, inspection.reason, kept, safe_uid)
        return self._index(event, assoc_id, spooled, ds, transfer_syntax)

    def _index(self, event: Any, assoc_id: str, spooled: Path, ds: Dataset, transfer_syntax: str) -> int:
        """The index entry first, then the file to its final path, in one transaction: a loser of
        a race for the same SOP Instance UID never touches the winner's file."""
        request_uid = str(ds.SOPInstanceUID)
        try:
            size, digest = spooled.stat().st_size, _sha256(spooled)
            # Its data on the disk now, outside the index transaction, which otherwise holds its
            # locks (SQLite's one writer) through the flush: parallel associations queue there.
            sync_file(spooled)
            path = self.store.path_for_content(ds.StudyInstanceUID, ds.SeriesInstanceUID, request_uid,
                                               digest)
        except OSError as exc:
            logger.error("storage read failed", extra={"sop_instance_uid": request_uid,
                                                       "error": type(exc).__name__})
            return OUT_OF_RESOURCES
        stored = StoredInstance(assoc_id, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                request_uid, str(ds.SOPClassUID), str(ds.get("Modality", "")),
                                transfer_syntax, str(path), size, digest, str(ds.get("PatientID", "") or ""),
                                study_header(ds))
        try:
            self.index.instance_stored(stored, lambda: self.store.move_into(spooled, path))
        except InstanceConflictError as exc:  # checked before the file moved: the other stays
            return self._reject(event, assoc_id, UID_CONFLICT, str(exc), spooled, request_uid)
        except Exception as exc:  # nothing acknowledged; the sender will retry and we index it then
            logger.error("indexing or storing failed", extra={"sop_instance_uid": request_uid,
                                                              "error": type(exc).__name__})
            return OUT_OF_RESOURCES
        logger.info("instance stored", extra={"association_id": assoc_id, "study_uid": stored.study_uid,
                                              "sop_instance_uid": request_uid})
        return SUCCESS
