"""Heat maps as data: the class activation map as a fractional DICOM Segmentation in the source
image's pixel grid, so that a viewer that reads Segmentations lays it over the radiograph itself
and a program reads the values back (the Secondary Capture, heatmap_writer.py, is a picture).

Why a Segmentation and not a Parametric Map: the Parametric Map IOD requires a Frame of
Reference and each frame's plane position and orientation in the patient (PS3.3 A.75), which a
projection radiograph (DX, CR) does not have; highdicom 0.28 refuses such a source, and dciodvfy
fails the object it makes when forced. The Segmentation IOD allows a source without a Frame of
Reference: its frame is tied to the image by the Derivation Image Sequence with Spatial
Locations Preserved, on the image's own pixel grid. So the map has the source's rows and columns
(highdicom refuses another size without plane positions, and plane positions need a Frame of
Reference), at 8 bits a pixel: 0..255 stands for activation 0..1.

The model saw each image trimmed of uniform edge bands and squashed to its square input
(dicom/geometry.trim_box, models/model_input.fit_to_square). `map_to_source` undoes that: the map
is stretched back to the trimmed box's size (bilinear, as torch resamples with
align_corners=False) and placed in the box, zero outside.
"""

from __future__ import annotations

import re
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from cxrtriage.dicom.geometry import MAX_FRACTIONAL_VALUE, TrimBox
from cxrtriage.dicom.sr_writer import SCHEME
from cxrtriage.dicom.uids import derive_uid
from cxrtriage.domain import ModelInfo

SERIES_NUMBER = 9904  # the SR is 9901, the heat map Secondary Capture 9902, an assessment SR 9903
CATEGORY = hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
DISPLAY_RED = hd.color.CIELabColor(53.24, 80.09, 67.2)  # sRGB (255, 0, 0), as the picture's red
_ORIENTATION = re.compile(r"^[AFHLPR]{1,3}$")


def _linear_weights(size_out: int, size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of `size_out` samples, the two neighbouring input samples and the weight of the
    second, with pixel centres aligned as torch's `interpolate(..., align_corners=False)`."""
    position = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
    position = np.clip(position, 0.0, size_in - 1)
    first = np.floor(position).astype(np.intp)
    second = np.minimum(first + 1, size_in - 1)
    return first, second, (position - first).astype(np.float32)


def map_to_source(cam: np.ndarray, box: TrimBox) -> np.ndarray:
    """The model-input map `cam` ([S, S], or any [h, w]) in the source image's pixel grid:
    float32 [box.rows, box.columns], the map stretched over the trimmed box, 0 outside it."""
    if cam.ndim != 2 or min(cam.shape) < 1:
        raise ValueError(f"cam must be a non-empty 2-D array, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("cam must hold finite values")
    if not (0 <= box.top < box.bottom <= box.rows and 0 <= box.left < box.right <= box.columns):
        raise ValueError(f"box must lie inside its image, got {box.as_dict()}")
    top, bottom, weight = _linear_weights(box.height, cam.shape[0])
    values = cam.astype(np.float32, copy=False)
    rows = values[top] * (1 - weight)[:, None] + values[bottom] * weight[:, None]  # [height, w]
    left, right, weight = _linear_weights(box.width, cam.shape[1])
    out = np.zeros((box.rows, box.columns), dtype=np.float32)
    out[box.top : box.bottom, box.left : box.right] = rows[:, left] * (1 - weight) + rows[:, right] * weight
    return out


def heatmap_segmentation_uids(source_sop_uid: str, study_uid: str, model: ModelInfo,
                              source_sha256: str = "") -> tuple[str, str]:
    """Series UID per study and model; SOP UID per source image, its content and the model (as
    the Secondary Capture's, heatmap_writer.heatmap_uids): a re-run reuses them."""
    return (derive_uid(study_uid, "heatmap-seg-series", model.weights_sha256),
            derive_uid(source_sop_uid, "heatmap-seg", model.weights_sha256, source_sha256))


def _patient_orientation(image: Dataset) -> list[str]:
    """The image's Patient Orientation when it is valid (it holds for our grid too), else empty
    (type 2C: present, and empty when unknown)."""
    value = image.get("PatientOrientation")
    values = [str(v) for v in value] if isinstance(value, MultiValue | list | tuple) else []
    return values if len(values) == 2 and all(_ORIENTATION.match(v) for v in values) else []


def _segment(model: ModelInfo, flag_label: str) -> hd.seg.SegmentDescription:
    finding = PNEUMONIA if flag_label.upper() == "PNEUMONIA" else \
        hd.sr.CodedConcept(flag_label.upper()[:16], SCHEME, flag_label[:64])
    return hd.seg.SegmentDescription(
        segment_number=1, segment_label=f"{flag_label} evidence (activation 0-1)"[:64],
        segmented_property_category=CATEGORY, segmented_property_type=finding,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model.name[:64], family=codes.DCM.ArtificialIntelligence, version=model.version[:64]),
        display_color=DISPLAY_RED)


class _ActivationSegmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, less its range check of a float pixel array: that check sorts
    every value (np.unique: 33 ms of the 47 ms a 1024 px map takes to build) to find its minimum
    and maximum, which build_heatmap_segmentation has checked already (finite, in [0, 1]).
    One segment cannot overlap itself. Any other array gets highdicom's own check."""

    @classmethod
    def _check_and_cast_pixel_array(cls, pixel_array: Any, segment_numbers: Any, segmentation_type: Any,
                                    dtype: type) -> tuple[Any, hd.seg.SegmentsOverlapValues]:
        one_fraction_map = (isinstance(pixel_array, np.ndarray) and pixel_array.dtype == np.float32
                            and pixel_array.ndim == 2 and len(segment_numbers) == 1
                            and segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL)
        if one_fraction_map:
            return pixel_array, hd.seg.SegmentsOverlapValues.NO
        return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)


def build_heatmap_segmentation(source: Dataset, image: Dataset, activation: np.ndarray, model: ModelInfo,
                               flag_label: str, instance_number: int,
                               source_sha256: str = "") -> hd.seg.Segmentation:
    """`source`: the clean header of the image (sr_header.clean_header); `image`: the image's own
    header, for its pixel grid (Rows, Columns, Patient Orientation); `activation`: float [Rows,
    Columns] in [0, 1] (`map_to_source`)."""
    if activation.ndim != 2 or activation.dtype.kind != "f":
        raise ValueError(f"activation must be a float 2-D array, got {activation.dtype} {activation.shape}")
    rows, columns = int(image.get("Rows", 0)), int(image.get("Columns", 0))
    if activation.shape != (rows, columns):
        raise ValueError(f"activation must have the image's {rows} x {columns} pixels, "
                         f"got {activation.shape[0]} x {activation.shape[1]}")
    if not np.isfinite(activation).all() or activation.min() < 0 or activation.max() > 1:
        raise ValueError("activation must hold values in [0, 1]")
    if not flag_label:
        raise ValueError("flag_label must name the label the map is for")
    reference = Dataset()
    reference.update(source)
    reference.Rows, reference.Columns = rows, columns
    series_uid, sop_uid = heatmap_segmentation_uids(str(source.SOPInstanceUID), str(source.StudyInstanceUID),
                                                    model, source_sha256)
    seg = _ActivationSegmentation(
        source_images=[reference], pixel_array=activation.astype(np.float32, copy=False),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE, segment_descriptions=[_segment(model, flag_label)],
        series_instance_uid=series_uid, series_number=SERIES_NUMBER, sop_instance_uid=sop_uid,
        instance_number=instance_number, manufacturer="cxr-triage",
        manufacturer_model_name=model.name[:64], software_versions=model.version[:64],
        device_serial_number=model.device_uid[:64], content_label="HEATMAP",
        content_description=f"Class activation map of {flag_label}, relative 0-1"[:64],
        omit_empty_frames=False, transfer_syntax_uid=ExplicitVRLittleEndian)
    seg.SeriesDescription = "cxr-triage heatmap data (not for diagnostic use)"
    seg.ImageComments = (f"Class activation map of {model.name} {model.version}, scaled to its maximum "
                         "(not a probability); triage aid, not for diagnostic use")
    seg.PatientOrientation = _patient_orientation(image)
    return seg
