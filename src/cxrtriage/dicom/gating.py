"""Which images the chest classifier may see.

Rules, in order (docs/conformance.md lists them too):
1. The SOP class must be a radiograph class (CR, DX, Secondary Capture); anything else is skipped.
2. Modality, when present, must be CR, DX or (for Secondary Capture) OT.
3. BodyPartExamined, when present, must be CHEST or THORAX.
4. ViewPosition, or the view code sequence, must be frontal (PA or AP); a lateral view is skipped.
5. ImageLaterality L or R (one side only) without a frontal view is skipped: a whole-chest
   frontal image is B or U, or has no laterality.
   When neither view attribute says, the image is accepted and a warning is recorded with the result.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

from cxrtriage.dicom.contexts import RADIOGRAPH_SOP_CLASSES, SECONDARY_CAPTURE
from cxrtriage.domain import GateDecision, Reason

FRONTAL = {"PA", "AP"}
LATERAL = {"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"}
CHEST = {"CHEST", "THORAX", "LUNG"}
_FRONTAL_MEANINGS = ("postero-anterior", "antero-posterior", "frontal")


def _view_from_codes(ds: Dataset) -> str:
    for item in ds.get("ViewCodeSequence", []):
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "lateral" in meaning:
            return "lateral"
        if any(m in meaning for m in _FRONTAL_MEANINGS):
            return "frontal"
    return ""


def gate_image(ds: Dataset) -> GateDecision:
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        return GateDecision(False, Reason.NOT_RADIOGRAPH)
    allowed = {"CR", "DX", "OT", ""} if sop_class == SECONDARY_CAPTURE else {"CR", "DX", ""}
    if modality not in allowed:
        return GateDecision(False, Reason.NOT_RADIOGRAPH)
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if body_part and body_part not in CHEST:
        return GateDecision(False, Reason.NOT_CHEST)
    view = str(ds.get("ViewPosition", "")).upper()
    coded = _view_from_codes(ds)
    if view in LATERAL or coded == "lateral":
        return GateDecision(False, Reason.NOT_FRONTAL)
    if view and view not in FRONTAL:
        return GateDecision(False, Reason.NOT_FRONTAL)
    laterality = str(ds.get("ImageLaterality", "")).upper()
    if laterality in ("L", "R") and view not in FRONTAL and coded != "frontal":
        return GateDecision(False, Reason.NOT_FRONTAL)
    warnings: list[str] = []
    if not view and not coded:
        warnings.append("view position not recorded; assumed frontal")
    if not body_part:
        warnings.append("body part not recorded; assumed chest")
    return GateDecision(True, None, tuple(warnings))


def radiograph_study(sop_class_uids: Iterable[str]) -> bool:
    """Whether a study is a radiograph study at all, from its indexed SOP classes: one that is
    not is skipped as a whole, and gets an SR only if CXRTRIAGE_SR_FOR_NON_RADIOGRAPH_STUDIES."""
    return any(uid in RADIOGRAPH_SOP_CLASSES for uid in sop_class_uids)
