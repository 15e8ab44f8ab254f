"""The patient and study attributes that our SRs and heatmaps copy from a source image, made valid.

Real exports drop type 2 attributes and carry malformed values, and highdicom copies whatever it
finds (or fails on what is missing). So the writers are given a clean header instead of the
source: the identifying UIDs, every type 2 attribute present (empty where the source lacks it or
its value is invalid), and type 3 attributes only when valid. PatientID is kept exactly as
received: it is what the PACS matches on.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cxrtriage.dicom.uids import require_uid

IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Patient and General Study modules, type 2: present, possibly empty.
TYPE2 = {"PatientName": "PN", "PatientBirthDate": "DA", "PatientSex": "CS", "StudyDate": "DA",
         "StudyTime": "TM", "ReferringPhysicianName": "PN", "StudyID": "SH", "AccessionNumber": "SH"}
# Type 3: copied only when valid.
OPTIONAL = {"PatientAge": "AS", "StudyDescription": "LO"}
_TIME = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")
_AGE = re.compile(r"^\d{3}[DWMY]$")
_SEX = {"M", "F", "O"}
_MAX_LENGTH = {"SH": 16, "LO": 64, "CS": 16}
_CS = re.compile(r"^[A-Z0-9 _]*$")


def _valid_text(vr: str, text: str) -> bool:
    """Length and character rules of PS3.5 6.2, checked here rather than by pydicom, whose
    validation warnings quote the value (patient data) into the log."""
    if "\\" in text or any(ord(c) < 32 and c != "\x1b" for c in text):
        return False
    if vr == "PN":
        return all(len(group) <= 64 for group in text.split("="))
    if vr == "CS" and not _CS.match(text):
        return False
    return len(text) <= _MAX_LENGTH.get(vr, 64)


def _valid(vr: str, value: object) -> bool:
    if isinstance(value, MultiValue | list | tuple):
        return False  # every attribute kept here has VM 1
    text = str(value)
    if vr == "DA":
        try:
            datetime.strptime(text, "%Y%m%d")
        except ValueError:
            return False
        return len(text) == 8
    if vr == "TM":
        return bool(_TIME.match(text))
    if vr == "AS":
        return bool(_AGE.match(text))
    return _valid_text(vr, text)


def _clean_value(name: str, vr: str, source: Dataset) -> object | None:
    """The source's value when valid, else None."""
    element = source.get(name)
    if element in (None, ""):
        return None
    if name == "PatientSex" and str(element) not in _SEX:
        return None
    return element if _valid(vr, element) else None


def clean_header(source: Dataset, minimal: bool = False) -> Dataset:
    """A valid header of `source` for the SR and heatmap writers. `minimal` keeps only the UIDs
    and PatientID (type 2 attributes empty): the fallback when a writer refused the full header.
    Raises InvalidInputError (naming the attribute, never its value) for a missing or invalid UID."""
    header = Dataset()
    for name in IDENTIFYING_UIDS:
        setattr(header, name, require_uid(source.get(name), name))
    header.PatientID = str(source.get("PatientID", "") or "")
    for name, vr in TYPE2.items():
        value = None if minimal else _clean_value(name, vr, source)
        setattr(header, name, value if value is not None else "")
    for name, vr in ({} if minimal else OPTIONAL).items():
        value = _clean_value(name, vr, source)
        if value is not None:
            setattr(header, name, value)
    # Values are decoded text by now; UTF-8 can carry any of them.
    if any(not str(element.value).isascii() for element in header if element.VR in ("PN", "LO", "SH")):
        header.SpecificCharacterSet = "ISO_IR 192"
    return header
