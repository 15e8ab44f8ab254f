"""Heat maps (class activation maps) as DICOM Secondary Capture images in the source image's study, so that a
radiologist can open them in the PACS viewer next to the radiograph.

The picture is the model's square input with the map blended in; every viewer shows it, but its
values are colours. The same map as data, on the radiograph's own pixel grid, is the fractional
Segmentation of heatmap_map.py."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cxrtriage.dicom.uids import derive_uid
from cxrtriage.domain import ModelInfo

SERIES_NUMBER = 9902


def heatmap_uids(source_sop_uid: str, study_uid: str, model: ModelInfo,
                 source_sha256: str = "") -> tuple[str, str]:
    """Series UID per study and model; SOP UID per source image, its content and the model:
    re-runs reuse them, and a replaced source file gets a new one."""
    return (derive_uid(study_uid, "heatmap-series", model.weights_sha256),
            derive_uid(source_sop_uid, "heatmap", model.weights_sha256, source_sha256))


def build_heatmap(source: Dataset, rgb: np.ndarray, model: ModelInfo, instance_number: int,
                  source_sha256: str = "") -> Dataset:
    """`source`: the clean header of the image (sr_header.clean_header). `rgb`: uint8
    [rows, cols, 3] overlay of the preprocessed image and its heat map."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be uint8 [rows, cols, 3], got {rgb.dtype} {rgb.shape}")
    series_uid, sop_uid = heatmap_uids(str(source.SOPInstanceUID), str(source.StudyInstanceUID), model,
                                       source_sha256)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer="cxr-triage",
        patient_orientation=("L", "F"), transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.SeriesDescription = "cxr-triage heatmap (not for diagnostic use)"
    sc.ImageComments = (f"Class activation map of {model.name} {model.version}; "
                        "triage aid, not for diagnostic use")
    sc.BurnedInAnnotation = "NO"
    sc.Laterality = ""  # type 2C: the chest is not a paired structure, so present and empty
    sc.ConversionType = "WSD"
    source_ref = Dataset()
    source_ref.ReferencedSOPClassUID = source.SOPClassUID
    source_ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [source_ref]
    return sc
