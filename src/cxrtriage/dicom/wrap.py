"""Wrap a grayscale picture as a DICOM radiograph (for samples, tests and benchmarks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from cxrtriage.dicom.contexts import DX_PRESENTATION


def wrap_image(pixels: np.ndarray, *, study_uid: str | None = None, series_uid: str | None = None,
               sop_class_uid: str = DX_PRESENTATION, modality: str = "DX", view: str = "AP",
               body_part: str = "CHEST", monochrome1: bool = False, bits_stored: int | None = None,
               **attributes: Any) -> Dataset:
    """`pixels` is uint8 or uint16 (stored values). MONOCHROME1 stores the inverted values."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    bits_allocated = pixels.itemsize * 8
    bits_stored = bits_stored or bits_allocated
    top = 2**bits_stored - 1
    stored = (top - pixels.astype(np.int64)).astype(pixels.dtype) if monochrome1 else pixels
    now = datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.SOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName = "ANONYMOUS^SAMPLE"
    ds.PatientID = "SAMPLE0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "cxr-triage sample wrapper"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality != "OT" else ["DERIVED", "SECONDARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds
