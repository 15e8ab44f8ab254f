"""When a new model version ships, `cxrtriage reprocess` (the nightly job) reads finished studies
again with it, and the new SR supersedes the old one."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.factory import radiograph, random_package, write_study
from tests.peers import echoscu, storescu
from tests.servers import wait_for


def _row(service, study_uid: str) -> dict | None:  # type: ignore[no-untyped-def]
    rows = json.loads(service.cli("studies", "--json"))["studies"]
    return next((r for r in rows if r["study_uid"] == study_uid), None)


@pytest.mark.slow
def test_new_model_version_reprocesses_finished_studies(tmp_path: Path, service_factory,
                                                        tiny_package) -> None:
    service = service_factory({"CXRTRIAGE_MODEL": str(tiny_package), "CXRTRIAGE_HEATMAPS": "false"})
    service.start("serve-v1", "serve")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    study_uid = generate_uid()
    assert storescu(service.port, write_study(tmp_path / "s", [radiograph(study_uid)])).returncode == 0
    first = wait_for(lambda: (r := _row(service, study_uid)) and r["state"] == "done" and r, 60, "v1 result")
    service.stop()

    service.env["CXRTRIAGE_MODEL"] = str(random_package(tmp_path / "v2", seed=7))
    service.start("serve-v2", "serve")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)
    assert "1 studies queued" in service.cli("reprocess")

    def reprocessed() -> dict | None:
        row = _row(service, study_uid)
        return row if row and row["state"] == "done" and row["sr_uid"] != first["sr_uid"] else None  # type: ignore[index]

    second = wait_for(reprocessed, 60, "the v2 result")
    sr = pydicom.dcmread(second["sr_path"])  # type: ignore[index]
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["sr_uid"]  # type: ignore[index]
    assert "0 studies queued" in service.cli("reprocess"), "a study already read by v2 is not redone"
    service.stop()
    service.check_logs()
