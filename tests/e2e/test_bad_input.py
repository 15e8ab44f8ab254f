"""Every input a hospital can send gets a clear answer, and the receiver keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from cxrtriage.dicom.contexts import CR, CT, DX_PRESENTATION
from cxrtriage.domain import Reason
from tests.factory import radiograph, write_study
from tests.peers import echoscu, encode_dataset, send_raw, storescu
from tests.servers import wait_for

SIZE_LIMIT = 3_000_000


def _statuses(port: int, work: Path) -> dict[str, int]:
    good = radiograph()
    full = encode_dataset(good)
    no_pixels = radiograph()
    del no_pixels.PixelData
    bad_uid = radiograph()
    bad_uid.StudyInstanceUID = "1.2.3/../../etc"
    short = radiograph()
    short.PixelData = short.PixelData[: len(short.PixelData) // 3]
    huge = radiograph()
    huge.Rows = huge.Columns = 60000
    mismatch = radiograph(sop_class_uid=CR, modality="CR")  # file meta below says DX
    big = radiograph()
    big.Rows, big.Columns = 2000, 1600  # 3.2 MB of 8-bit pixels
    big.PixelData = bytes(2000 * 1600)
    payloads = {  # case: (bytes sent after a valid file meta, SOP instance UID in the request)
        "non-DICOM": (b"MZ\x90\x00 this is not DICOM " * 64, generate_uid()),
        "truncated": (full[: len(full) // 2], str(good.SOPInstanceUID)),
    }
    for case, ds in {"no pixel data": no_pixels, "invalid UID": bad_uid, "short pixel data": short,
                     "60000 x 60000": huge, "SOP class mismatch": mismatch,
                     "over the size limit": big}.items():
        payloads[case] = (encode_dataset(ds), str(ds.SOPInstanceUID))
    return {case: send_raw(port, payload, DX_PRESENTATION, uid, work)
            for case, (payload, uid) in payloads.items()}


EXPECTED = {"non-DICOM": 0xC210, "truncated": 0xC210, "no pixel data": 0xC210, "invalid UID": 0xC210,
            "short pixel data": 0xC210, "60000 x 60000": 0xC210, "SOP class mismatch": 0xA900,
            "over the size limit": 0xC212}


@pytest.mark.slow
def test_bad_input_is_refused_or_skipped_with_reasons(tmp_path: Path, service_factory, tiny_package) -> None:
    service = service_factory({"CXRTRIAGE_MODEL": str(tiny_package),
                               "CXRTRIAGE_MAX_INSTANCE_BYTES": str(SIZE_LIMIT)})
    service.start("serve", "serve")
    wait_for(lambda: echoscu(service.port), 60, "receiver C-ECHO", interval=0.5)

    statuses = _statuses(service.port, tmp_path)
    for case, status in statuses.items():
        assert status == EXPECTED[case], f"{case}: status 0x{status:04X}"
    assert echoscu(service.port), "the receiver stopped serving after bad input"

    ct = radiograph(modality="CT", sop_class_uid=CT, view="", body_part="CHEST")
    lateral = radiograph(view="LL")
    adult = radiograph(PatientAge="045Y")
    files = write_study(tmp_path / "send", [ct, lateral, adult])
    sent = storescu(service.port, files)
    assert sent.returncode == 0, sent.stderr

    def skipped() -> list[dict]:
        rows = json.loads(service.cli("studies", "--json"))["studies"]
        mine = [r for r in rows if r["study_uid"] in (ct.StudyInstanceUID, lateral.StudyInstanceUID)]
        return mine if len(mine) == 2 and all(r["state"] == "skipped" for r in mine) else []

    rows = {r["study_uid"]: r for r in wait_for(skipped, 60, "CT and lateral to be skipped")}  # type: ignore[union-attr]
    assert rows[ct.StudyInstanceUID]["reason_code"] == Reason.NOT_RADIOGRAPH
    assert rows[ct.StudyInstanceUID]["sr_uid"] is None, "a CT study routed here gets no SR by default"
    assert rows[lateral.StudyInstanceUID]["reason_code"] == Reason.NO_FRONTAL_CHEST_IMAGE
    assert rows[lateral.StudyInstanceUID]["sr_uid"], "a skipped radiograph study still gets an SR saying why"

    def adult_done() -> dict | None:
        rows = json.loads(service.cli("studies", "--json"))["studies"]
        return next((r for r in rows if r["study_uid"] == adult.StudyInstanceUID and r["state"] == "done"),
                    None)

    adult_row = wait_for(adult_done, 60, "the adult study to be classified")
    [result] = adult_row["image_results"].values()  # type: ignore[index]
    assert "age outside intended population (1-5 years)" in result["warnings"]

    table = service.cli("studies")
    for reason in ("dataset has no PixelData", "is not a valid DICOM UID", "pixel data is",
                   "exceeds the limit of 268435456", "differs from the C-STORE request",
                   f"exceeds the limit of {SIZE_LIMIT}",
                   Reason.NOT_RADIOGRAPH.text, Reason.NO_FRONTAL_CHEST_IMAGE.text):
        assert reason in table, f"`cxrtriage studies` does not show: {reason}"
    refused = json.loads(service.cli("studies", "--json"))["rejections"]
    assert len(refused) == len(statuses)
    kept = [r for r in refused if "CXRTRIAGE_MAX_INSTANCE_BYTES" not in r["reason"]]
    assert len(kept) == len(statuses) - 1
    assert all(r["quarantine_path"] and Path(r["quarantine_path"]).is_file() for r in kept), \
        "refused payloads are kept, not lost (except those over the size limit)"
    service.stop()
    service.check_logs()
