"""The receiver's index does each instance's work once: one transaction, and the row already
indexed under the SOP Instance UID read once, for both the conflict check and the update."""

from __future__ import annotations

from dataclasses import astuple, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from cxrtriage.db.models import Instance, Series, Study, StudyDetails
from cxrtriage.db.session import Database, upgrade
from cxrtriage.db.studies import record_instance_outcomes, update_series_states
from cxrtriage.domain import InstanceState, SeriesState, StoredInstance, StudyHeader, StudyState
from cxrtriage.errors import InstanceConflictError
from cxrtriage.worker.receiving import DatabaseIndex

DX = "1.2.840.10008.5.1.4.1.1.1.1"
ASSOCIATION = "a" * 32


class Counted:
    """Transactions begun and statements that read `instances`, on one engine."""

    def __init__(self, db: Database) -> None:
        self.transactions, self.instance_reads = 0, 0
        event.listen(db.engine, "begin", self._begin)
        event.listen(db.engine, "before_cursor_execute", self._statement)

    def _begin(self, _connection: Any) -> None:
        self.transactions += 1

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM instances" in statement:
            self.instance_reads += 1

    def reset(self) -> None:
        self.transactions, self.instance_reads = 0, 0


def _stored(tmp_path: Path, patient: str = "P1", study: str = "1.2.3") -> StoredInstance:
    return StoredInstance(ASSOCIATION, study, f"{study}.1", "1.2.3.9", DX, "DX", "1.2.840.10008.1.2.1",
                          str(tmp_path / "i.dcm"), 10, "ab" * 32, patient)


@pytest.fixture
def index(tmp_path: Path) -> tuple[DatabaseIndex, Counted]:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    db = Database(url)
    index = DatabaseIndex(db, "rx")
    index.association_opened(ASSOCIATION, "MOD", "127.0.0.1:1")
    return index, Counted(db)


@pytest.mark.parametrize("label", ["new", "sent again"])
def test_one_transaction_and_one_read_of_the_instance_row(tmp_path, index, label):
    idx, counted = index
    if label == "sent again":
        idx.instance_stored(_stored(tmp_path), lambda: None)
    counted.reset()
    idx.instance_stored(_stored(tmp_path), lambda: None)
    assert (counted.transactions, counted.instance_reads) == (1, 1)


@pytest.mark.parametrize(("patient", "study"), [("P2", "1.2.3"), ("P1", "1.2.4")])
def test_a_conflict_is_found_by_that_one_read(tmp_path, index, patient, study):
    idx, counted = index
    idx.instance_stored(_stored(tmp_path), lambda: None)
    counted.reset()
    placed: list[bool] = []
    with pytest.raises(InstanceConflictError):
        idx.instance_stored(_stored(tmp_path, patient, study), lambda: placed.append(True))
    assert placed == [] and (counted.transactions, counted.instance_reads) == (1, 1)


def test_states_come_back_as_their_enums_and_are_stored_as_before(tmp_path, index):
    idx, _ = index
    idx.instance_stored(_stored(tmp_path), lambda: None)
    with idx.db.session() as session:
        study_state = session.scalar(select(Study.state))
        instance_state = session.scalar(select(Instance.state))
        raw = session.execute(text("SELECT state FROM studies")).scalar_one()
    assert type(study_state) is StudyState and study_state is StudyState.RECEIVED
    assert type(instance_state) is InstanceState and instance_state is InstanceState.STORED
    assert type(raw) is str and raw == "received", "the stored strings are unchanged"


@pytest.mark.parametrize(("outcome", "series_state"), [(InstanceState.CLASSIFIED, SeriesState.CLASSIFIED),
                                                       (InstanceState.SKIPPED, SeriesState.SKIPPED)])
def test_recorded_outcomes_give_the_series_its_state(tmp_path, index, outcome, series_state):
    idx, _ = index
    idx.instance_stored(_stored(tmp_path), lambda: None)
    with idx.db.session() as session:
        instance_id, study_id = session.execute(select(Instance.id, Instance.study_id)).one()
        record_instance_outcomes(session, {instance_id: (outcome, "why")})
        update_series_states(session, study_id)
    with idx.db.session() as session:
        assert session.execute(select(Instance.state, Instance.reason)).one() == (outcome, "why")
        assert session.scalar(select(Series.state)) is series_state


def test_the_worklist_details_are_recorded_at_arrival_in_the_same_transaction(tmp_path, index):
    """The review app reads them from the table; it never parses a header during a request."""
    idx, counted = index
    first = StudyHeader("SENTINEL^PATIENT", "P1", "ACC1", "20261205", "CHEST PA")
    idx.instance_stored(replace(_stored(tmp_path), details=first), lambda: None)
    counted.reset()
    later = replace(_stored(tmp_path), sop_instance_uid="1.2.3.10", details=StudyHeader("OTHER^NAME", "P1"))
    idx.instance_stored(later, lambda: None)
    assert counted.transactions == 1
    with idx.db.session() as session:
        row = session.execute(select(StudyDetails.patient_name, StudyDetails.patient_id,
                                     StudyDetails.accession_number, StudyDetails.study_date,
                                     StudyDetails.study_description)).one()
    assert tuple(row) == astuple(first), "the study's first instance gives its details"


def test_over_long_details_are_cut_to_their_columns(tmp_path, index):
    idx, _ = index
    header = StudyHeader("N" * 300, "I" * 70, "A" * 70, "D" * 20, "S" * 300)
    idx.instance_stored(replace(_stored(tmp_path), details=header), lambda: None)
    with idx.db.session() as session:
        row = session.execute(select(StudyDetails.patient_name, StudyDetails.patient_id,
                                     StudyDetails.accession_number, StudyDetails.study_date,
                                     StudyDetails.study_description)).one()
    assert [len(v) for v in row] == [256, 64, 64, 16, 256]
