import logging

from cxrtriage.logs import JsonFormatter, RedactTaskFailures


def _record(name: str, level: int, message: str, exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except type(exc):
        import sys

        record = logging.LogRecord(name, level, __file__, 1, "Task %(name)s raised: %(exc)s",
                                   ({"name": "x", "exc": message},), sys.exc_info())
    record.__dict__["data"] = {"id": "job-42", "exc": message, "traceback": message}
    return record


def test_celery_task_failures_keep_only_job_id_and_exception_type():
    record = _record("celery.app.trace", logging.ERROR, "PatientName=SENTINEL^LEAK",
                     ValueError("PatientName=SENTINEL^LEAK"))
    assert RedactTaskFailures().filter(record)
    text = JsonFormatter().format(record)
    assert "SENTINEL" not in text
    assert "ValueError" in text and "job-42" in text


def test_other_records_pass_unchanged():
    record = logging.LogRecord("cxrtriage.worker", logging.ERROR, __file__, 1, "study %s failed",
                               ("1.2.3",), None)
    RedactTaskFailures().filter(record)
    assert record.getMessage() == "study 1.2.3 failed"
