"""Shared fixtures. Every log a test collects is checked for sentinel patient data."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factory import SENTINEL_STRINGS, random_package
from tests.servers import Proc, free_port

BUNDLED = Path(__file__).resolve().parents[1] / "src/cxrtriage/bundled/pneumonia-resnet18"


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # seed 1: its heat maps have content (seed 0's flag-label map is negative everywhere)
    return random_package(tmp_path_factory.mktemp("pkg") / "tiny", seed=1)


def assert_no_patient_data(text: str, where: str) -> None:
    for sentinel in SENTINEL_STRINGS:
        assert sentinel not in text, f"patient data ({sentinel[:4]}...) leaked into {where}"


class Service:
    """cxrtriage processes for a test: one working directory, one set of settings."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = {"CXRTRIAGE_PORT": str(self.port), "CXRTRIAGE_WEB_PORT": str(free_port()),
                    "CXRTRIAGE_STUDY_QUIET_SECONDS": "1",
                    "CXRTRIAGE_SWEEP_INTERVAL_SECONDS": "0.2", "CXRTRIAGE_SR_RETRY_BASE_SECONDS": "0.5",
                    "PYTHONUNBUFFERED": "1", **env}
        self.procs: list[Proc] = []

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc(name, [sys.executable, "-m", "cxrtriage.cli", *args], self.workdir,
                    env=self.env, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> str:
        import subprocess

        result = subprocess.run([sys.executable, "-m", "cxrtriage.cli", *args], cwd=self.workdir,
                                env={**os.environ, **self.env}, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert_no_patient_data(result.stdout + result.stderr, f"`cxrtriage {args[0]}` output")
        return result.stdout

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def check_logs(self) -> None:
        for proc in self.procs:
            assert_no_patient_data(proc.log(), f"the {proc.name} log")

    def dump(self) -> None:
        for proc in self.procs:
            proc.dump()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def service_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[type]:
    made: list[Service] = []

    def make(env: dict[str, str]) -> Service:
        service = Service(tmp_path, env)
        made.append(service)
        return service

    yield make  # type: ignore[misc]
    for service in made:
        service.stop()
        if request.node.stash.get(FAILED, False):
            service.dump()
