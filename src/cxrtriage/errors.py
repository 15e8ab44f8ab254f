"""Error hierarchy. Messages name the argument and the expected value, never patient data."""


class CxrTriageError(Exception):
    """Base class for every error this package raises on purpose."""


class InvalidInputError(CxrTriageError):
    """The input can never be processed as sent; retrying will not help."""


class TransientError(CxrTriageError):
    """A resource was unavailable; the same work may succeed later."""


class ModelError(CxrTriageError):
    """A model package is missing, corrupt or inconsistent."""


class ConfigError(CxrTriageError):
    """The configuration is invalid or unsafe for the chosen environment."""
