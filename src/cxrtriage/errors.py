"""Error hierarchy. Messages name the argument and the expected value, never patient data."""

from __future__ import annotations

from cxrtriage.domain import Reason


class CxrTriageError(Exception):
    """Base class for every error this package raises on purpose."""


class InvalidInputError(CxrTriageError):
    """The input can never be processed as sent; retrying will not help. `reason` is the coded
    reason that a study's records and SR give for it."""

    def __init__(self, message: str, reason: Reason = Reason.UNSUPPORTED_PIXELS) -> None:
        super().__init__(message)
        self.reason = reason


class LimitExceededError(InvalidInputError):
    """The input is larger than a configured limit allows (bytes sent, inflated or decoded). The
    message names the limit and its setting, never the input's own values beyond its size."""


class ModelError(CxrTriageError):
    """A model package is missing, corrupt or inconsistent."""


class ConfigError(CxrTriageError):
    """The configuration is invalid or unsafe for the chosen environment."""


class InstanceConflictError(InvalidInputError):
    """A SOP Instance UID already stored under another study or another patient. Refused, so that
    no result can ever cross patients; the stored instance stays as it was."""

    def __init__(self) -> None:
        super().__init__("SOP Instance UID is already stored under another study or patient",
                         Reason.PATIENT_IDENTITY_INCONSISTENT)
