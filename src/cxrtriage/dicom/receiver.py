"""The storage SCP. The C-STORE handler validates, stores durably, indexes and answers; nothing
heavier. Its collaborators (index, association bookkeeping) are passed in, not imported.

Data sets are received in chunks into a spool on the storage volume (pynetdicom's
STORE_RECV_CHUNKED_DATASET), never whole in memory, and stored by rename. New instances are
refused with 0xA700 while the volume is past its watermark. With TLS, the handshake runs in each
connection's own thread with a timeout, after the peer allow-list check, so an idle or slow
client never blocks the accept loop.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, dimse_messages, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxrtriage.dicom.contexts import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES
from cxrtriage.dicom.preprocess import check_pixel_contract
from cxrtriage.dicom.storage import InstanceStore, Watermark, make_dirs
from cxrtriage.dicom.tls import DeferredHandshake
from cxrtriage.dicom.uids import is_valid_uid, require_uid
from cxrtriage.domain import RefusedInstance, StoredInstance
from cxrtriage.errors import InstanceConflictError, InvalidInputError

logger = logging.getLogger(__name__)

# Never log identifiers that pynetdicom would otherwise print at debug level.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
# Our own code in the "cannot understand" range: the SOP Instance UID is already stored under
# another study or another patient. Storing it would let one patient's result reach another.
UID_CONFLICT = 0xC211

NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                   "1.2.840.10008.1.2.2"}


class ReceiverIndex(Protocol):
    """What the receiver needs from the rest of the system (the database, in practice)."""

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None: ...
    def association_closed(self, association_id: str) -> None: ...
    def associations_alive(self, association_ids: list[str]) -> None: ...
    def conflicts(self, study_uid: str, sop_instance_uid: str, patient_id: str) -> bool: ...
    def instance_stored(self, stored: StoredInstance) -> None: ...
    def instance_rejected(self, refused: RefusedInstance) -> None: ...


@dataclass(frozen=True)
class ReceiverLimits:
    max_instance_bytes: int = 256 * 1024 * 1024
    max_associations: int = 10
    max_pdu_size: int = 262144
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    tls_handshake_timeout: float = 10.0
    heartbeat_seconds: float = 30.0  # association liveness, retried closes, spool cleaning


@dataclass(frozen=True)
class AccessPolicy:
    """Who may associate: calling AE titles (empty = any) and peer networks (empty = any)."""

    calling_aes: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()

    def peer_allowed(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.networks)


def _expected_native_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: Y Y Cb Cr for every two pixels (PS3.3 C.7.6.3.1.2)
    return (int(ds.Rows) * int(ds.Columns) * frames * samples * bits + 7) // 8


@dataclass(frozen=True)
class Inspection:
    status: int
    reason: str
    dataset: Dataset | None


def inspect_payload(raw: bytes, transfer_syntax: str, request_sop_class: str, request_sop_uid: str,
                    max_bytes: int) -> Inspection:
    """Parse and check the bytes of one C-STORE data set. Never raises: every outcome is a
    status and a reason a person can read."""
    syntax = UID(transfer_syntax)
    return _inspect(len(raw), lambda: decode(BytesIO(raw), syntax.is_implicit_VR,
                                             syntax.is_little_endian, syntax.is_deflated),
                    transfer_syntax, request_sop_class, request_sop_uid, max_bytes)


def inspect_file(path: Path, transfer_syntax: str, request_sop_class: str, request_sop_uid: str,
                 max_bytes: int) -> Inspection:
    """As inspect_payload, for a data set spooled to a file with its file meta."""
    return _inspect(path.stat().st_size, lambda: dcmread(path), transfer_syntax, request_sop_class,
                    request_sop_uid, max_bytes)


def _inspect(size: int, load: Callable[[], Dataset], transfer_syntax: str, request_sop_class: str,
             request_sop_uid: str, max_bytes: int) -> Inspection:
    if size > max_bytes:
        return Inspection(OUT_OF_RESOURCES, f"instance of {size} bytes exceeds the limit of "
                                            f"{max_bytes}", None)
    try:
        ds = load()
        status, reason = validate_dataset(ds, request_sop_class, request_sop_uid, transfer_syntax)
    except InvalidInputError as exc:
        return Inspection(CANNOT_UNDERSTAND, str(exc), None)
    except Exception as exc:  # any parse failure of sender-controlled bytes
        return Inspection(CANNOT_UNDERSTAND, f"dataset cannot be parsed: {type(exc).__name__}", None)
    return Inspection(status, reason, ds if status == SUCCESS else None)


def validate_dataset(ds: Dataset, request_sop_class: str, request_sop_uid: str,
                     transfer_syntax: str) -> tuple[int, str]:
    """A status and reason for a parsed dataset; SUCCESS with an empty reason when acceptable."""
    for element in ds.iterall():  # forces every deferred element to parse now, not in the worker
        _ = element.value
    sop_uid = require_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    require_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
    require_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != request_sop_class:
        return DATASET_MISMATCH, "SOPClassUID in the dataset differs from the C-STORE request"
    if sop_uid != request_sop_uid:
        return DATASET_MISMATCH, "SOPInstanceUID in the dataset differs from the C-STORE request"
    check_pixel_contract(ds)
    if transfer_syntax in NATIVE_SYNTAXES:
        expected, actual = _expected_native_bytes(ds), len(ds.PixelData)
        if actual < expected:
            return CANNOT_UNDERSTAND, f"pixel data is {actual} bytes, expected {expected}"
    return SUCCESS, ""



def _sha256(path: Path) -> str:
    """Of the spooled file: the same data set sent again in the same syntax hashes the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        self._ids: dict[int, str] = {}  # open associations: id(assoc) -> our association id
        self._unrecorded: set[str] = set()  # opened, but the database write failed
        self._unclosed: set[str] = set()  # closed, but the database write failed; retried
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._pynetdicom_defaults: tuple[bool, Any] | None = None
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = self.limits.max_associations
        self.ae.maximum_pdu_size = self.limits.max_pdu_size
        self.ae.acse_timeout = self.limits.acse_timeout
        self.ae.dimse_timeout = self.limits.dimse_timeout
        self.ae.network_timeout = self.limits.network_timeout
        if self.access.calling_aes:
            self.ae.require_calling_aet = list(self.access.calling_aes)
        self.ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        self._server: Any = None

    def handlers(self) -> Any:
        return [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self.handle_store),
                (evt.EVT_ACCEPTED, self._opened), (evt.EVT_RELEASED, self._closed),
                (evt.EVT_ABORTED, self._closed), (evt.EVT_CONN_CLOSE, self._closed),
                (evt.EVT_REJECTED, self._rejected_association)]

    def start(self, host: str, port: int) -> None:
        self._use_spool()
        self._server = self.ae.start_server((host, port), block=False, evt_handlers=self.handlers(),
                                            ssl_context=self.ssl_context)
        server = self._server
        server.verify_request = self._verify_peer  # socketserver's per-connection hook
        if self.ssl_context is not None:  # handshake per connection, not in the accept loop
            DeferredHandshake(self.ssl_context, self.limits.tls_handshake_timeout,
                              self.limits.max_associations).install(server)
        self._heartbeat = threading.Thread(target=self._beat, name="receiver-heartbeat", daemon=True)
        self._heartbeat.start()
        logger.info("receiver listening", extra={"ae_title": self.ae.ae_title, "port": port,
                                                 "tls": self.ssl_context is not None})

    def _use_spool(self) -> None:
        """Receive C-STORE data sets into files under the storage root, not into memory."""
        make_dirs(self.store.spool, 0o700)
        self.store.clean_spool(older_than_seconds=4 * self.limits.network_timeout)
        self._pynetdicom_defaults = (pynetdicom_config.STORE_RECV_CHUNKED_DATASET,
                                     dimse_messages.NamedTemporaryFile)
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[assignment]
            tempfile.NamedTemporaryFile, dir=str(self.store.spool), prefix="cstore-")

    def _verify_peer(self, _request: Any, client_address: tuple[str, int]) -> bool:
        allowed = self.access.peer_allowed(client_address[0])
        if not allowed:
            logger.warning("connection refused: peer address not allowed",
                           extra={"peer": client_address[0]})
        return allowed

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

    def association_id(self, assoc: Any) -> str:
        with self._lock:
            return self._ids.setdefault(id(assoc), uuid.uuid4().hex)

    def _record_opened(self, event: Any, assoc_id: str) -> bool:
        requestor = event.assoc.requestor
        try:
            self.index.association_opened(assoc_id, str(requestor.ae_title).strip(),
                                          f"{requestor.address}:{requestor.port}")
        except Exception as exc:  # the association may go on; its stores wait for this record
            logger.error("could not record an opened association",
                         extra={"association_id": assoc_id, "error": type(exc).__name__})
            with self._lock:
                self._unrecorded.add(assoc_id)
            return False
        with self._lock:
            self._unrecorded.discard(assoc_id)
        return True

    def _opened(self, event: Any) -> None:
        assoc_id = self.association_id(event.assoc)
        if self._record_opened(event, assoc_id):
            logger.info("association accepted", extra={
                "association_id": assoc_id, "calling_ae": str(event.assoc.requestor.ae_title).strip()})

    def _closed(self, event: Any) -> None:
        """Record the close first; forget the association only once that is written. A failed
        write is retried by the heartbeat, and liveness expiry covers a receiver that dies."""
        with self._lock:
            assoc_id = self._ids.get(id(event.assoc))
        if not assoc_id:
            return
        try:
            self.index.association_closed(assoc_id)
        except Exception as exc:
            logger.error("could not record a closed association; will retry",
                         extra={"association_id": assoc_id, "error": type(exc).__name__})
            with self._lock:
                self._unclosed.add(assoc_id)
        with self._lock:
            self._ids.pop(id(event.assoc), None)
            self._unrecorded.discard(assoc_id)
        logger.info("association closed", extra={"association_id": assoc_id})

    def beat(self) -> None:
        """Vouch for the open associations, retry failed close records, clean the spool."""
        with self._lock:
            alive = sorted(set(self._ids.values()) - self._unrecorded)
            unclosed = sorted(self._unclosed)
        try:
            self.index.associations_alive(alive)
        except Exception as exc:
            logger.warning("association heartbeat failed", extra={"error": type(exc).__name__})
        for assoc_id in unclosed:
            try:
                self.index.association_closed(assoc_id)
            except Exception:
                break  # the database is still away; next beat
            with self._lock:
                self._unclosed.discard(assoc_id)
        try:
            self.store.clean_spool(older_than_seconds=4 * self.limits.network_timeout)
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
        assoc_id = self.association_id(event.assoc)
        request = event.request
        request_uid = str(request.AffectedSOPInstanceUID or "")
        safe_uid = request_uid if is_valid_uid(request_uid) else None
        if assoc_id in self._unrecorded and not self._record_opened(event, assoc_id):
            return OUT_OF_RESOURCES  # unrecorded, its study could be queued mid-association
        spooled = Path(event.dataset_path)
        if reason := self.watermark.refusal(self.store.root):
            return self._reject(event, assoc_id, OUT_OF_RESOURCES, reason, None, safe_uid)
        transfer_syntax = str(event.context.transfer_syntax)
        inspection = inspect_file(spooled, transfer_syntax, str(request.AffectedSOPClassUID),
                                  request_uid, self.limits.max_instance_bytes)
        ds = inspection.dataset
        if inspection.status != SUCCESS or ds is None:
            kept = spooled if inspection.status != OUT_OF_RESOURCES else None
            return self._reject(event, assoc_id, inspection.status, inspection.reason, kept, safe_uid)
        study_uid, patient_id = str(ds.StudyInstanceUID), str(ds.get("PatientID", "") or "")
        try:
            conflict = self.index.conflicts(study_uid, request_uid, patient_id)
        except Exception:
            logger.exception("index lookup failed", extra={"sop_instance_uid": request_uid})
            return OUT_OF_RESOURCES
        if conflict:  # checked before writing: the stored file of the other study stays untouched
            return self._reject(event, assoc_id, UID_CONFLICT, str(InstanceConflictError()), spooled,
                                safe_uid)
        try:
            size, digest = spooled.stat().st_size, _sha256(spooled)
            path = self.store.adopt(spooled, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        except OSError as exc:
            logger.error("storage write failed", extra={"sop_instance_uid": request_uid,
                                                        "error": type(exc).__name__})
            return OUT_OF_RESOURCES
        stored = StoredInstance(assoc_id, study_uid, str(ds.SeriesInstanceUID),
                                request_uid, str(ds.SOPClassUID), str(ds.get("Modality", "")),
                                transfer_syntax, str(path), size, digest, patient_id)
        try:
            self.index.instance_stored(stored)
        except InstanceConflictError as exc:  # lost a race with another association
            return self._reject(event, assoc_id, UID_CONFLICT, str(exc), None, safe_uid)
        except Exception:  # the file is kept; the sender will retry and we index it then
            logger.exception("indexing failed", extra={"sop_instance_uid": request_uid})
            return OUT_OF_RESOURCES
        logger.info("instance stored", extra={"association_id": assoc_id,
                                              "study_uid": stored.study_uid,
                                              "sop_instance_uid": request_uid})
        return SUCCESS
