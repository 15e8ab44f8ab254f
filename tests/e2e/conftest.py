"""A failed end-to-end test shows the logs of every server still running (cxr-triage's own,
Orthanc's, PostgreSQL's, Redis's) in its report, also for servers a module-scoped fixture started:
a fixture's finaliser never learns that one of its tests failed."""

from __future__ import annotations

import pytest

from tests.servers import running_logs


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        report.sections.extend(running_logs())
    return report
