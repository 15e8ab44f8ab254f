"""The receiver's association bookkeeping: which associations are open, and the records of
their opening and closing still owed to the index.

A study is held back from the queue while an association that sent to it is open, so these
records matter: an open that could not be written is written again before the association may
store anything, and a close that could not be written is retried by the heartbeat (liveness
expiry covers a receiver that dies). pynetdicom calls in from each association's own thread.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class AssociationIndex(Protocol):
    """The part of the receiver's index that records associations."""

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None: ...
    def association_closed(self, association_id: str) -> None: ...
    def associations_alive(self, association_ids: list[str]) -> None: ...


class Associations:
    """Open associations, keyed by their pynetdicom object, and the records not yet written."""

    def __init__(self, index: AssociationIndex) -> None:
        self.index = index
        self._ids: dict[int, str] = {}  # open associations: id(assoc) -> our association id
        self._live: dict[int, Any] = {}  # id(assoc) -> assoc, to notice those that die unannounced
        self._unrecorded: set[str] = set()  # opened, but the database write failed
        self._unclosed: set[str] = set()  # closed, but the database write failed; retried
        self._lock = threading.Lock()

    def open_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._ids.values())

    def id_for(self, assoc: Any) -> str:
        """Our id for a pynetdicom association, made on first sight."""
        with self._lock:
            self._live[id(assoc)] = assoc
            return self._ids.setdefault(id(assoc), uuid.uuid4().hex)

    def is_recorded(self, assoc_id: str) -> bool:
        with self._lock:
            return assoc_id not in self._unrecorded

    def record_opened(self, assoc: Any, assoc_id: str) -> bool:
        """Write the open; False (and remembered) when the write failed. The association may go
        on, but its stores wait for this record."""
        requestor = assoc.requestor
        try:
            self.index.association_opened(assoc_id, str(requestor.ae_title).strip(),
                                          f"{requestor.address}:{requestor.port}")
        except Exception as exc:
            logger.error("could not record an opened association",
                         extra={"association_id": assoc_id, "error": type(exc).__name__})
            with self._lock:
                if self._ids.get(id(assoc)) == assoc_id:  # not closed meanwhile: its stores wait
                    self._unrecorded.add(assoc_id)
            return False
        with self._lock:
            self._unrecorded.discard(assoc_id)
            closed_meanwhile = self._ids.get(id(assoc)) != assoc_id
        if closed_meanwhile:
            # The connection closed while the open was being written (pynetdicom reports the
            # close from the DUL's thread), so that close found no row to update. Close it now.
            self._write_close(assoc_id)
        return True

    def record_closed(self, assoc: Any) -> None:
        self._record_closed(id(assoc))

    def _record_closed(self, key: int) -> None:
        """Forget the association, then record its close. Forgotten first: an open being written
        at the same moment then sees that it was closed and writes the close itself."""
        with self._lock:
            assoc_id = self._ids.pop(key, None)
            self._live.pop(key, None)
            if assoc_id:
                self._unrecorded.discard(assoc_id)
        if assoc_id:
            self._write_close(assoc_id)

    def _write_close(self, assoc_id: str) -> None:
        """The close record, or a retry owed by the heartbeat when it cannot be written."""
        try:
            self.index.association_closed(assoc_id)
        except Exception as exc:
            logger.error("could not record a closed association; will retry",
                         extra={"association_id": assoc_id, "error": type(exc).__name__})
            with self._lock:
                self._unclosed.add(assoc_id)
        logger.info("association closed", extra={"association_id": assoc_id})

    def _reap(self) -> None:
        """Close the records of associations that pynetdicom ended without a close event (its
        reactor dies on some malformed messages), so they stop holding their studies back."""
        with self._lock:
            dead = [key for key, assoc in self._live.items()
                    if not (assoc.is_alive() and assoc.dul.is_alive())]
        for key in dead:
            self._record_closed(key)

    def beat(self) -> None:
        """Vouch for the open associations and retry failed close records."""
        self._reap()
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
