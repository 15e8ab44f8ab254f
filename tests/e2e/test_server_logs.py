"""A failed end-to-end test prints the logs of the servers it used, module-scoped ones included
(the wrong-patient test once failed after 120 s with no server log at all)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.servers import REPO

SUITE = '''
import sys
import pytest
from tests.servers import Proc, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = Proc("fake-pacs", [sys.executable, "-c", "print('LOGLINE-7731', flush=True); "
                              "import time; time.sleep(60)"], tmp_path_factory.mktemp("logs"))
    wait_for(lambda: "LOGLINE" in proc.log(), 30, "the server's first line")
    yield proc
    proc.stop()


def test_fails(server):
    assert False, "the SR never came"


def test_passes(server):
    pass
'''


def test_a_failed_test_prints_the_running_servers_logs(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(textwrap.dedent(SUITE))
    hook = "from tests.e2e.conftest import pytest_runtest_makereport  # noqa: F401\n"
    (tmp_path / "conftest.py").write_text(hook)  # the hook under test, as tests/e2e has it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--rootdir", str(tmp_path), str(tmp_path / "test_suite.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 passed" in result.stdout, result.stdout[-3000:]
    failure = result.stdout.split("short test summary")[0]
    assert "fake-pacs log" in failure and "LOGLINE-7731" in failure, result.stdout[-3000:]
    assert result.stdout.count("LOGLINE-7731") == 1, "only the failed test shows it"
