"""Logging for entry points: JSON lines with job ids and UIDs bound through contextvars.

Only UIDs, ids and reasons we wrote ourselves are ever logged; never patient attributes.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

job_id: ContextVar[str] = ContextVar("job_id", default="")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
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
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "highdicom", "alembic", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
