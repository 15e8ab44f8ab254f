import logging

import pytest

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


SECRET = "SENTINELBADDATE"


def _configured(capsys):  # type: ignore[no-untyped-def]
    from cxrtriage.logs import configure_logging

    configure_logging("DEBUG", "json")
    return capsys


def test_pydicom_validation_warnings_never_quote_malformed_values(capsys):
    import warnings

    from pydicom.dataset import Dataset

    from tests.factory import MALFORMED_SENTINELS, SENTINEL_STRINGS

    _configured(capsys)
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for keyword, value in MALFORMED_SENTINELS.items():
            setattr(ds, keyword, value)  # pydicom warns (and logs) quoting the value
    logging.getLogger("highdicom.sr").warning("bad value %s", MALFORMED_SENTINELS["PatientName"])
    err = capsys.readouterr().err
    assert "withheld" in err and "UserWarning" in err, "the warnings were not logged at all"
    assert not any(s in err for s in SENTINEL_STRINGS), err


@pytest.mark.parametrize(("error", "kept"), [
    (ValueError(f"Invalid value for VR DA: {SECRET!r}"), False),  # a library's message
    (KeyError(SECRET), False),
])
def test_foreign_exception_messages_are_withheld(capsys, error, kept):
    _configured(capsys)
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError(f"wrapped: {SECRET}") from inner
    except RuntimeError:
        logging.getLogger("cxrtriage.worker").exception("study failed")
    err = capsys.readouterr().err
    assert "study failed" in err and type(error).__name__ in err and "RuntimeError" in err
    assert ("SENTINEL" in err) is kept


def test_our_own_error_messages_are_kept(capsys):
    from cxrtriage.errors import InvalidInputError

    _configured(capsys)
    try:
        raise InvalidInputError("BitsStored must be 1-16, got 40")
    except InvalidInputError:
        logging.getLogger("cxrtriage.worker").exception("image refused")
    assert "BitsStored must be 1-16, got 40" in capsys.readouterr().err
