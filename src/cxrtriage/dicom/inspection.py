"""What the receiver checks in one received data set before it may be stored: each outcome is a
C-STORE status and a reason a person can read, never an exception.

Limits come first, on what the bytes say about themselves: the size on the wire, then (for
Deflated Explicit VR Little Endian) the size once inflated, counted by a streaming inflater
that stops at the limit, and only then the header is parsed and the pixel contract checked,
which bounds what the pixels would decode to.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cxrtriage.dicom.preprocess import MAX_DECODED_BYTES, check_pixel_contract
from cxrtriage.dicom.uids import require_uid
from cxrtriage.domain import StudyHeader
from cxrtriage.errors import InvalidInputError, LimitExceededError

# C-STORE statuses (PS3.4 Annex B.2.3; the 0xC2xx codes are ours, in "cannot understand").
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # temporary: the volume is full or the database is away; retry later
DATASET_MISMATCH = 0xA900  # the data set does not match the request's SOP Class or Instance
CANNOT_UNDERSTAND = 0xC210  # the data set cannot be parsed, or breaks the pixel contract
UID_CONFLICT = 0xC211  # the SOP Instance UID is stored under another study or patient
LIMIT_EXCEEDED = 0xC212  # over a size limit: sent, inflated or decoded bytes

NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                   "1.2.840.10008.1.2.2"}
INFLATE_CHUNK = 1 << 20


@dataclass(frozen=True)
class Inspection:
    status: int
    reason: str
    dataset: Dataset | None


def _expected_native_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: Y Y Cb Cr for every two pixels (PS3.3 C.7.6.3.1.2)
    return (int(ds.Rows) * int(ds.Columns) * frames * samples * bits + 7) // 8


def inflated_size(read: Callable[[int], bytes], limit: int) -> int:
    """Bytes a raw deflate stream inflates to, counted INFLATE_CHUNK of output at a time and
    never kept: a stream that would inflate past `limit` raises LimitExceededError as soon as
    it does."""
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    while chunk := read(INFLATE_CHUNK):
        while chunk:
            total += len(inflater.decompress(chunk, min(INFLATE_CHUNK, limit + 1 - total)))
            if total > limit:
                raise LimitExceededError(f"instance inflates past the limit of {limit} bytes "
                                         "(CXRTRIAGE_MAX_INSTANCE_BYTES)")
            chunk = inflater.unconsumed_tail
        if inflater.eof:
            break
    return total + len(inflater.flush())


def _dataset_offset(handle: BinaryIO) -> int:
    """Where the data set starts in a spooled file, after the preamble and file meta."""
    read_preamble(handle, False)
    _read_file_meta_info(handle)
    return handle.tell()


def inspect_file(path: Path, transfer_syntax: str, request_sop_class: str, request_sop_uid: str,
                 max_bytes: int, max_decoded_bytes: int = MAX_DECODED_BYTES) -> Inspection:
    """Parse and check one C-STORE data set spooled to a file with its file meta, opened once.
    The limit counts the data set's bytes as sent, as the receiver counted them while they
    arrived."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise OSError("spooled file cannot be read") from exc
    with handle:
        try:
            offset = _dataset_offset(handle)
            size = os.fstat(handle.fileno()).st_size
        except Exception as exc:  # the meta is ours (pynetdicom writes it), so this is the disk's fault
            raise OSError("spooled file cannot be read") from exc

        def load() -> Dataset:
            if transfer_syntax == DeflatedExplicitVRLittleEndian:
                handle.seek(offset)
                inflated_size(handle.read, max_bytes)
            handle.seek(0)
            return dcmread(handle)

        return _inspect(size - offset, load, transfer_syntax, request_sop_class, request_sop_uid,
                        max_bytes, max_decoded_bytes)


def _inspect(size: int, load: Callable[[], Dataset], transfer_syntax: str, request_sop_class: str,
             request_sop_uid: str, max_bytes: int, max_decoded_bytes: int) -> Inspection:
    if size > max_bytes:
        return Inspection(LIMIT_EXCEEDED, f"instance of {size} bytes exceeds the limit of {max_bytes} "
                                          "(CXRTRIAGE_MAX_INSTANCE_BYTES)", None)
    try:
        ds = load()
        status, reason = validate_dataset(ds, request_sop_class, request_sop_uid, transfer_syntax,
                                          max_decoded_bytes)
    except LimitExceededError as exc:
        return Inspection(LIMIT_EXCEEDED, str(exc), None)
    except InvalidInputError as exc:
        return Inspection(CANNOT_UNDERSTAND, str(exc), None)
    except Exception as exc:  # any parse failure of sender-controlled bytes
        return Inspection(CANNOT_UNDERSTAND, f"dataset cannot be parsed: {type(exc).__name__}", None)
    return Inspection(status, reason, ds if status == SUCCESS else None)


def validate_dataset(ds: Dataset, request_sop_class: str, request_sop_uid: str,
                     transfer_syntax: str, max_decoded_bytes: int = MAX_DECODED_BYTES) -> tuple[int, str]:
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
    check_pixel_contract(ds, max_decoded_bytes, transfer_syntax=transfer_syntax)
    if transfer_syntax in NATIVE_SYNTAXES:
        expected, actual = _expected_native_bytes(ds), len(ds.PixelData)
        if actual < expected:
            return CANNOT_UNDERSTAND, f"pixel data is {actual} bytes, expected {expected}"
    return SUCCESS, ""


def study_header(ds: Dataset) -> StudyHeader:
    """The worklist's patient and study details, as the header gives them ("" when absent)."""

    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "")

    return StudyHeader(patient_name=text("PatientName"), patient_id=text("PatientID"),
                       accession_number=text("AccessionNumber"), study_date=text("StudyDate"),
                       study_description=text("StudyDescription"))
