"""Binds the pure DICOM receiver to the database: the ReceiverIndex the receiver is given."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import IntegrityError, OperationalError

from cxrtriage.db import ingest
from cxrtriage.db.session import Database
from cxrtriage.domain import RefusedInstance, StoredInstance
from cxrtriage.errors import InstanceConflictError

logger = logging.getLogger(__name__)


class DatabaseIndex:
    def __init__(self, db: Database, receiver_id: str = "",
                 closed: threading.Event | None = None) -> None:
        self.db = db
        self.receiver_id = receiver_id  # this receiver's association rows are its own
        self.closed = closed  # set when an association closes: wakes the scheduler beside us

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None:
        with self.db.session() as session:
            ingest.open_association(session, association_id, calling_ae, peer, self.receiver_id)

    def associations_alive(self, association_ids: list[str]) -> None:
        with self.db.session() as session:
            ingest.touch_associations(session, association_ids)

    def association_closed(self, association_id: str) -> None:
        with self.db.session() as session:
            ingest.close_association(session, association_id)
        if self.closed is not None:
            self.closed.set()

    def instance_stored(self, stored: StoredInstance, place: Callable[[], None]) -> None:
        """Index, then place the file, then commit: see ReceiverIndex. Two associations creating
        the same study or instance at once collide on a unique UID; the loser retries, and then
        sees the winner's rows."""
        for attempt in range(5):
            try:
                with self.db.session() as session:
                    replaced = ingest.index_instance(session, stored)
                    session.flush()
                    place()
                break
            except InstanceConflictError:
                raise
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        if replaced:  # new content under the same UID: the old file is no longer indexed
            try:
                Path(replaced).unlink(missing_ok=True)
            except OSError:
                logger.warning("could not remove a replaced file",
                               extra={"sop_instance_uid": stored.sop_instance_uid})

    def instance_rejected(self, refused: RefusedInstance) -> None:
        with self.db.session() as session:
            ingest.record_rejection(session, refused)
