"""Binds the pure DICOM receiver to the database: the ReceiverIndex the receiver is given."""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import IntegrityError, OperationalError

from cxrtriage.db import ingest
from cxrtriage.db.session import Database
from cxrtriage.dicom.receiver import Rejection, StoredInstance

logger = logging.getLogger(__name__)


class DatabaseIndex:
    def __init__(self, db: Database, receiver_id: str = "") -> None:
        self.db = db
        self.receiver_id = receiver_id  # this receiver's association rows are its own

    def association_opened(self, association_id: str, calling_ae: str, peer: str) -> None:
        with self.db.session() as session:
            ingest.open_association(session, association_id, calling_ae, peer, self.receiver_id)

    def associations_alive(self, association_ids: list[str]) -> None:
        with self.db.session() as session:
            ingest.touch_associations(session, association_ids)

    def association_closed(self, association_id: str) -> None:
        with self.db.session() as session:
            ingest.close_association(session, association_id)

    def instance_stored(self, stored: StoredInstance) -> None:
        # Two associations creating the same study at once collide on its unique UID; retry.
        for attempt in range(5):
            try:
                with self.db.session() as session:
                    ingest.index_instance(
                        session, association_id=stored.association_id, study_uid=stored.study_uid,
                        series_uid=stored.series_uid, sop_instance_uid=stored.sop_instance_uid,
                        sop_class_uid=stored.sop_class_uid, modality=stored.modality,
                        transfer_syntax=stored.transfer_syntax, path=stored.path,
                        size_bytes=stored.size_bytes)
                return
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def instance_rejected(self, rejection: Rejection) -> None:
        with self.db.session() as session:
            ingest.record_rejection(session, association_id=rejection.association_id,
                                    calling_ae=rejection.calling_ae, status=rejection.status,
                                    reason=rejection.reason,
                                    sop_instance_uid=rejection.sop_instance_uid,
                                    quarantine_path=rejection.quarantine_path)
