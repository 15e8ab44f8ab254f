"""UID validation and derivation. Only validated UIDs ever become parts of file paths."""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

from cxrtriage.errors import InvalidInputError

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
UID_ROOT = "1.2.826.0.1.3680043.10.1367."


def is_valid_uid(value: object) -> bool:
    """A DICOM UID per PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.match(value))


def require_uid(value: object, name: str) -> str:
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not is_valid_uid(text):
        # The value itself may be attacker-controlled or hold patient text; report only its length.
        raise InvalidInputError(f"{name} is not a valid DICOM UID (length {len(text)})")
    return text


def derive_uid(*parts: str) -> str:
    """A deterministic UID under our root, so re-running the same work reuses the same UID."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=list(parts))
