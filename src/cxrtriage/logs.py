"""Logging for entry points: JSON lines with job ids and UIDs bound through contextvars.

Only UIDs, ids and reasons we wrote ourselves are ever logged; never patient attributes.
Third-party text that may quote attribute values never reaches a log line:
- records of the pydicom and highdicom loggers, and Python warnings (pydicom's validation
  warnings quote the invalid value), keep their logger, level and category only;
- an exception's message is written only for our own errors (cxrtriage.errors), which never
  carry patient data; any other exception shows its type and stack, not its message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from contextvars import ContextVar
from typing import Any

job_id: ContextVar[str] = ContextVar("job_id", default="")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


_OURS = "cxrtriage."
_THIRD_PARTY = ("pydicom", "highdicom", "py.warnings")
_WARNING_CATEGORY = re.compile(r":\s*([A-Za-z_]\w*(?:Warning|Error))\s*:")


def format_exception_safely(exc_info: Any) -> str:
    """A traceback whose exception messages are kept only for our own error types."""
    _, exc, _ = exc_info
    if exc is None:
        return ""
    lines: list[str] = []
    seen: set[int] = set()
    chain: list[BaseException] = []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for item in reversed(chain):
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        kind = type(item)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if kind.__module__.startswith(_OURS):
            lines.append(f"{name}: {item}\n")
        else:
            lines.append(f"{name}: (message withheld from logs)\n")
    return "".join(lines).rstrip("\n")


class RedactThirdParty(logging.Filter):
    """pydicom and highdicom log, and warn, with attribute values in the text. Keep who said it
    and how loudly, never what."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in _THIRD_PARTY or record.name.split(".")[0] in _THIRD_PARTY:
            text = record.getMessage() if record.name == "py.warnings" else ""
            match = _WARNING_CATEGORY.search(text)
            what = match.group(1) if match else "message"
            record.msg, record.args = "%s %s withheld from logs (may quote patient data)", (
                record.name, what)
            record.exc_info = record.exc_text = record.stack_info = None
        return True


class SafeTextFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return format_exception_safely(ei)


class JsonFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return format_exception_safely(ei)

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        if job_id.get():
            data["job_id"] = job_id.get()
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class RedactTaskFailures(logging.Filter):
    """Celery logs a failed task with its exception message and traceback, which may quote a
    third-party error that carries attribute values. Keep the task id and exception type only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("celery") and record.levelno >= logging.ERROR:
            kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "error"
            record.msg, record.args = "task failed: %s (details withheld from logs)", (kind,)
            record.exc_info = record.exc_text = record.stack_info = None
            data = record.__dict__.pop("data", None)  # Celery's context: args, repr, traceback
            if isinstance(data, dict) and data.get("id"):
                record.__dict__["task_id"] = data["id"]
        return True


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTaskFailures())
    handler.addFilter(RedactThirdParty())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         SafeTextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.captureWarnings(True)  # warnings become py.warnings records, redacted above
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "highdicom", "alembic", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
