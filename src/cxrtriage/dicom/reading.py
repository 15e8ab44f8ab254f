"""Reading DICOM files defensively: every failure becomes an InvalidInputError with a reason."""

from __future__ import annotations

import functools
import hashlib
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError


def read_dataset(source: str | Path | BinaryIO, stop_before_pixels: bool = False) -> Dataset:
    """Parse a DICOM file; files without preamble or file meta are accepted (force=True)."""
    try:
        ds = pydicom.dcmread(source, force=True, stop_before_pixels=stop_before_pixels)
        for element in ds.iterall():  # parse every element now: pydicom defers, and may raise later
            _ = element.value
    except InvalidDicomError as exc:
        raise InvalidInputError("not a DICOM file", Reason.UNREADABLE_FILE) from exc
    except MemoryError:  # under a decoder's memory limit: its caller says so (dicom/sandbox.py)
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInputError(f"DICOM file cannot be parsed: {type(exc).__name__}",
                                Reason.UNREADABLE_FILE) from exc
    if len(ds) == 0 or "SOPInstanceUID" not in ds:
        raise InvalidInputError("not a DICOM file: no SOPInstanceUID", Reason.UNREADABLE_FILE)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


def read_verified(path: str | Path, sha256: str, stop_before_pixels: bool = False) -> Dataset:
    """Parse a stored file only if it is still the file that was indexed: its sha256 is computed
    over the open handle and the same handle is parsed, so a file replaced meanwhile (by rename)
    cannot be the one read. An empty `sha256` (an index row from before digests) is not checked."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after hashing and parsing
    except OSError as exc:
        raise InvalidInputError("the stored file cannot be read", Reason.UNREADABLE_FILE) from exc
    with handle:
        if sha256:
            digest = hashlib.sha256()
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
            if digest.hexdigest() != sha256:
                raise InvalidInputError("the stored file differs from the one received and indexed",
                                        Reason.STORED_FILE_CHANGED)
            handle.seek(0)
        return read_dataset(handle, stop_before_pixels=stop_before_pixels)


def read_upload_header(data: bytes, max_inflated_bytes: int) -> Dataset:
    """The header of an uploaded file (no pixels). A Deflated Explicit VR data set is first
    counted by a streaming inflater that stops at `max_inflated_bytes`, since pydicom inflates
    the whole data set in memory before it reads a single element."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    from cxrtriage.dicom.inspection import inflated_size  # pynetdicom: not for the decoder child

    stream = BytesIO(data)
    try:
        read_preamble(stream, True)
        syntax = str(_read_file_meta_info(stream).get("TransferSyntaxUID", ""))
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInputError(f"DICOM file cannot be parsed: {type(exc).__name__}",
                                Reason.UNREADABLE_FILE) from exc
    if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        inflated_size(stream.read, max_inflated_bytes)
    return read_dataset(BytesIO(data), stop_before_pixels=True)
