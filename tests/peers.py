"""DICOM peers for tests: dcmtk command-line tools and a raw pynetdicom sender for bad input."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from tests.servers import LOOPBACK, binary


def echoscu(port: int, called: str = "CXRTRIAGE") -> bool:
    result = subprocess.run([binary("echoscu"), "-aec", called, LOOPBACK, str(port)],
                            capture_output=True, timeout=30)
    return result.returncode == 0


def storescu(port: int, files: list[Path], called: str = "CXRTRIAGE",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("storescu"), "-aec", called, "-aet", "DCMTKSCU", *extra, LOOPBACK,
                           str(port), *map(str, files)], capture_output=True, text=True, timeout=120)


def encode_dataset(ds: Dataset) -> bytes:
    """The dataset bytes as a C-STORE carries them: explicit VR little endian, no file meta."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def send_raw(port: int, payload: bytes, sop_class: str, sop_uid: str, work: Path,
             transfer_syntax: str = ExplicitVRLittleEndian, called: str = "CXRTRIAGE") -> int:
    """Send arbitrary bytes as a C-STORE data set, as a broken or hostile modality might: a
    valid preamble and file meta followed by `payload`, which pynetdicom streams undecoded.
    Returns the status the receiver answered."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    path = work / f"raw-{uuid.uuid4().hex}.dcm"
    path.write_bytes(fp.getvalue() + payload)
    ae = AE(ae_title="BADPEER")
    ae.add_requested_context(sop_class, [transfer_syntax])
    assoc = ae.associate(LOOPBACK, port, ae_title=called)
    assert assoc.is_established, "association with the receiver failed"
    try:
        _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file's bytes without decoding them
        status = assoc.send_c_store(path)
        assert "Status" in status, "no C-STORE response"
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
