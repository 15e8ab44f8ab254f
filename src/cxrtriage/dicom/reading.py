"""Reading DICOM files defensively: every failure becomes an InvalidInputError with a reason."""

from __future__ import annotations

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
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInputError(f"DICOM file cannot be parsed: {type(exc).__name__}",
                                Reason.UNREADABLE_FILE) from exc
    if len(ds) == 0 or "SOPInstanceUID" not in ds:
        raise InvalidInputError("not a DICOM file: no SOPInstanceUID", Reason.UNREADABLE_FILE)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds
