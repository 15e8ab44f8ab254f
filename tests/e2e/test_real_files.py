"""Files and senders that nobody here wrote, through the real receiver and worker to Orthanc.

One service and one Orthanc serve the module: the third-party corpus, the sender matrix and the
wrong-patient scenario. Every study ends with exactly one current SR at the PACS, or a failure
status with a recorded reason; no result ever crosses patients.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from cxrtriage.dicom.contexts import ACCEPTED_SOP_CLASSES
from cxrtriage.dicom.preprocess import check_pixel_contract
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError
from tests.conftest import Service
from tests.factory import COMPREHENSIVE_3D_SR, radiograph, write_study
from tests.peers import storescu
from tests.servers import LOOPBACK, Orthanc, binary, wait_for
from tests.third_party import CorpusFile, _fresh_uids, _read, build_corpus

FINAL = {"done", "skipped", "failed"}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, tiny_package: Path) -> Iterator[tuple[Service, Orthanc]]:
    work = tmp_path_factory.mktemp("real-files")
    service = Service(work, {"CXRTRIAGE_MODEL": str(tiny_package), "CXRTRIAGE_HEATMAPS": "false"})
    orthanc = Orthanc(work / "pacs", work, "CXRTRIAGE", service.port)
    service.env["CXRTRIAGE_SR_DESTINATION"] = f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"
    service.procs.append(orthanc.proc)
    service.start("serve", "serve")
    try:
        wait_for(lambda: _echo(service.port), 60, "the receiver")
        yield service, orthanc
        service.check_logs()
    except BaseException:
        service.dump()
        raise
    finally:
        service.stop()


def _echo(port: int) -> bool:
    return subprocess.run([binary("echoscu"), "-aec", "CXRTRIAGE", LOOPBACK, str(port)],
                          capture_output=True, timeout=30).returncode == 0


def dcmsend(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    """dcmtk's dcmsend with its default options (one context per file's own syntax, with an
    uncompressed fallback for lossless files)."""
    return subprocess.run([binary("dcmsend"), "-aec", "CXRTRIAGE", "-nh", LOOPBACK, str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=600)


def studies(service: Service) -> tuple[dict[str, dict], list[dict]]:
    data = json.loads(service.cli("studies", "--json", "--limit", "100000"))
    return {s["study_uid"]: s for s in data["studies"]}, data["rejections"]


def orthanc_srs(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {
        "StudyInstanceUID": study_uid, "SOPClassUID": COMPREHENSIVE_3D_SR}})
    return [pydicom.dcmread(BytesIO(orthanc.get(f"/instances/{i}/file")))  # type: ignore[arg-type]
            for i in found]  # type: ignore[union-attr]


def current(srs: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Our SRs that no other SR of ours supersedes."""
    superseded = {str(ref.ReferencedSOPInstanceUID) for sr in srs
                  for study in sr.get("PredecessorDocumentsSequence", [])
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    return [sr for sr in srs if str(sr.SOPInstanceUID) not in superseded]


def referenced(sr: pydicom.Dataset) -> set[str]:
    return {str(ref.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}


def dciodvfy_errors(ds: pydicom.Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run([binary("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_third_party_corpus_ends_in_a_refusal_or_one_valid_current_sr(pacs, tmp_path):
    service, orthanc = pacs
    corpus = build_corpus(tmp_path / "corpus")
    by_sender: dict[str, list[CorpusFile]] = {}
    for entry in corpus:
        by_sender.setdefault(entry.sender, []).append(entry)
    dcmsend(service.port, [e.path for e in by_sender["dcmsend"]])
    for entry in by_sender["storescu"]:
        storescu(service.port, [entry.path])
    uids = {e.name: (str(_read(e.path).StudyInstanceUID), str(_read(e.path).SOPInstanceUID)) for e in corpus}

    def settled() -> tuple[dict[str, dict], list[dict]] | None:
        rows, refused = studies(service)
        refused_uids = {r["sop_instance_uid"] for r in refused}
        for e in corpus:
            study_uid, sop_uid = uids[e.name]
            if sop_uid in refused_uids:
                continue
            row = rows.get(study_uid)
            if row is None or row["state"] not in FINAL or (row["sr_uid"] and row["sr_state"] != "sent"):
                return None
        return rows, refused

    rows, refused = wait_for(settled, 420, "every corpus study to settle", interval=2)  # type: ignore[misc]
    refused_by_uid = {r["sop_instance_uid"]: r for r in refused}
    problems = []
    outcomes: Counter[tuple[str, str, str, str]] = Counter()
    for e in corpus:
        study_uid, sop_uid = uids[e.name]
        row = rows.get(study_uid, {})
        outcome = (refused_by_uid[sop_uid]["status"] if sop_uid in refused_by_uid
                   else f"{row.get('state')} {row.get('reason_code') or ''}".strip())
        outcomes[(e.source, ACCEPTED_SOP_CLASSES[e.sop_class], e.transfer_syntax or "no meta", outcome)] += 1
    print("\ncorpus (source, SOP class, transfer syntax, outcome): files")
    for key, count in sorted(outcomes.items()):
        print("  " + " | ".join(key) + f": {count}")
    for e in corpus:
        study_uid, sop_uid = uids[e.name]
        if sop_uid in refused_by_uid:
            rejection = refused_by_uid[sop_uid]
            if not rejection["reason"] or not rejection["status"].startswith(("0xC", "0xA")):
                problems.append(f"{e.name}: refused without a reason")
            continue
        row = rows[study_uid]
        srs = current(orthanc_srs(orthanc, study_uid))
        if not e.radiograph:
            if row["reason_code"] != Reason.NOT_RADIOGRAPH or srs:
                problems.append(f"{e.name}: a {row['reason_code']} non-radiograph study with {len(srs)} SRs")
            continue
        if len(srs) != 1:
            problems.append(f"{e.name}: {len(srs)} current SRs at the PACS")
            continue
        if sop_uid not in referenced(srs[0]):
            problems.append(f"{e.name}: the SR does not reference its image")
        if errors := dciodvfy_errors(srs[0], tmp_path / "sr.dcm"):
            problems.append(f"{e.name}: dciodvfy: {errors[:3]}")
    assert not problems, "\n".join(problems)
    assert len(refused_by_uid.keys() & {sop for _, sop in uids.values()}) < len(corpus) / 4


# The matrix: every compressed syntax of the conformance statement, and how each sender proposes it.
STORESCU_OPTION = {"1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
                   "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt",
                   "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
                   "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr"}
COMPRESSED = [*STORESCU_OPTION, "1.2.840.10008.1.2.4.57"]
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def _pynetdicom_send(port: int, path: Path, combined: bool) -> int:
    ds = pydicom.dcmread(path)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    ae = AE(ae_title="PYNETDICOM")
    if combined:  # one context offering the file's syntax and the uncompressed ones
        ae.add_requested_context(ds.SOPClassUID, [syntax, *UNCOMPRESSED])
    else:  # one context per syntax; the SCU then uses the one that matches the data set
        for offered in [syntax, *UNCOMPRESSED]:
            ae.add_requested_context(ds.SOPClassUID, [offered])
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def _acceptable(path: Path) -> bool:
    try:
        check_pixel_contract(pydicom.dcmread(path))
    except InvalidInputError:
        return False
    return True


def test_sender_matrix_keeps_each_files_own_compression(pacs, tmp_path):
    service, orthanc = pacs
    sources = {}
    for entry in build_corpus(tmp_path / "corpus"):
        # A file whose codestream header is damaged is refused at C-STORE (another test); this
        # one is about each sender's compression, so it takes files the receiver accepts.
        if entry.transfer_syntax in COMPRESSED and entry.radiograph and _acceptable(entry.path):
            sources.setdefault(entry.transfer_syntax, entry.path)
    assert set(sources) == set(COMPRESSED), f"corpus lacks {set(COMPRESSED) - set(sources)}"
    sent: dict[tuple[str, str], str] = {}  # (sender, syntax) -> SOP Instance UID

    def copy(syntax: str, sender: str) -> Path:
        ds = _fresh_uids(_read(sources[syntax]))
        path = tmp_path / f"{sender}-{syntax}.dcm"
        ds.save_as(path)
        sent[(sender, syntax)] = str(ds.SOPInstanceUID)
        return path

    for syntax in COMPRESSED:
        assert dcmsend(service.port, [copy(syntax, "dcmsend")]).returncode == 0
        if syntax in STORESCU_OPTION:
            result = storescu(service.port, [copy(syntax, "storescu")], extra=(STORESCU_OPTION[syntax],))
            assert result.returncode == 0, result.stderr
        for combined, name in ((False, "pynetdicom, a context per syntax"),
                               (True, "pynetdicom, syntaxes in one context")):
            assert _pynetdicom_send(service.port, copy(syntax, name), combined) == 0
        path = copy(syntax, "orthanc")
        orthanc_id = orthanc.post("/instances", path.read_bytes())["ID"]  # type: ignore[index]
        orthanc.post("/modalities/cxrtriage/store", {"Resources": [orthanc_id], "Synchronous": True})

    rows, _ = studies(service)
    negotiated = {uid: state["transfer_syntax"] for row in rows.values()
                  for uid, state in row["instance_states"].items()}
    table = [(sender, syntax, negotiated.get(uid, "not stored")) for (sender, syntax), uid in sent.items()]
    print("\nsender matrix (sender, file syntax, negotiated):")
    for line in table:
        print("  " + " | ".join(line))
    assert all(found == syntax for _, syntax, found in table), table


def test_a_sop_instance_uid_reused_by_another_patient_never_mixes_results(pacs, tmp_path):
    service, orthanc = pacs
    study_a, study_b = generate_uid(), generate_uid()
    a = [radiograph(study_a, "pneumonia-1", PatientID="SENTINELPID4711"),
         radiograph(study_a, "normal-1", PatientID="SENTINELPID4711")]
    ids = [orthanc.post("/instances", _bytes(ds))["ID"] for ds in a]  # type: ignore[index]
    orthanc.post("/modalities/cxrtriage/store", {"Resources": ids, "Synchronous": True})
    first = wait_for(lambda: current(orthanc_srs(orthanc, study_a)), 120, "patient A's SR", 0.5)

    # Patient B's study: one image reuses a SOP Instance UID of patient A's study.
    b = [radiograph(study_b, "pneumonia-2", PatientID="OTHERPATIENT2"),
         radiograph(study_b, "normal-2", PatientID="OTHERPATIENT2", SOPInstanceUID=a[0].SOPInstanceUID)]
    b[1].file_meta.MediaStorageSOPInstanceUID = a[0].SOPInstanceUID
    dcmsend(service.port, write_study(tmp_path / "b", b[:1]) + write_study(tmp_path / "b-dup", b[1:]))
    srs_b = wait_for(lambda: current(orthanc_srs(orthanc, study_b)), 120, "patient B's SR", 0.5)
    _, refused = studies(service)
    conflict = [r for r in refused if r["sop_instance_uid"] == str(a[0].SOPInstanceUID)]
    assert conflict and conflict[0]["status"] == "0xC211", refused
    assert "SENTINEL" not in conflict[0]["reason"] and "OTHERPATIENT" not in conflict[0]["reason"]

    # A late image makes A be read again, from A's own files only.
    late = radiograph(study_a, "pneumonia-2", PatientID="SENTINELPID4711")
    assert storescu(service.port, write_study(tmp_path / "late", [late])).returncode == 0

    def superseded() -> list[pydicom.Dataset] | None:
        srs = orthanc_srs(orthanc, study_a)
        return current(srs) if len(srs) == 2 else None

    [newest] = wait_for(superseded, 120, "A's superseding SR", 0.5)  # type: ignore[misc]
    assert newest.SOPInstanceUID != first[0].SOPInstanceUID  # type: ignore[index]
    assert newest.PatientID == "SENTINELPID4711"
    assert referenced(newest) == {str(ds.SOPInstanceUID) for ds in [*a, late]}
    [sr_b] = srs_b  # type: ignore[misc]
    assert sr_b.PatientID == "OTHERPATIENT2" and referenced(sr_b) == {str(b[0].SOPInstanceUID)}
    for sr in orthanc_srs(orthanc, study_a):
        assert sr.PatientID == "SENTINELPID4711" and str(b[0].SOPInstanceUID) not in referenced(sr)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
