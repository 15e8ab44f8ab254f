"""The built wheel is complete: installed on its own (no checkout, no editable install) it finds its
bundled model, runs the migrations and prints its version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.factory import SAMPLES

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "cxrtriage"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{cmd[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the wheel from a copy of the sources (pip builds in the tree it is given), install it
    with --no-deps into a fresh target, beside the running environment's dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", source)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(work / "dist"), str(source)])
    wheels = list((work / "dist").glob("cxrtriage-*.whl"))
    assert len(wheels) == 1
    target = work / "target"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheels[0])])
    return wheels[0], target


def _env(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXRTRIAGE_")}
    env["PYTHONPATH"] = str(target)  # ahead of the editable install of the checkout
    return env


def test_wheel_ships_every_bundled_file_and_the_alembic_template(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"cxrtriage/{p.relative_to(PACKAGE).as_posix()}"
                for p in (PACKAGE / "bundled").rglob("*") if p.is_file()}
    assert any("/regression/" in name for name in expected), "the bundled model has subfolders"
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)[:5]}"
    for needed in ("db/alembic.ini", "db/migrations/script.py.mako", "db/migrations/env.py"):
        assert f"cxrtriage/{needed}" in names
    migrations = {f"cxrtriage/{p.relative_to(PACKAGE).as_posix()}"
                  for p in (PACKAGE / "db/migrations/versions").glob("*.py")}
    assert migrations <= names


def test_installed_wheel_predicts_migrates_and_reports_its_version(installed: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    _, target = installed
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _env(target)
    where = _run([sys.executable, "-c", "import cxrtriage; print(cxrtriage.__file__)"], cwd=outside, env=env)
    assert where.stdout.strip().startswith(str(target)), "the checkout's sources were imported"
    script = target / "bin" / "cxrtriage"
    assert script.is_file(), "the wheel installs the `cxrtriage` command"

    version = _run([str(script), "--version"], cwd=outside, env=env).stdout
    manifest = json.loads((PACKAGE / "bundled/pneumonia-resnet18/manifest.json").read_text())
    bundled = f"bundled model {manifest['name']} {manifest['version']}"
    assert version.splitlines() == ["cxrtriage 0.1.0", bundled]

    shutil.copy(SAMPLES / "pneumonia-1.dcm", outside / "image.dcm")
    rows = json.loads(_run([str(script), "predict", "image.dcm", "--json"], cwd=outside, env=env).stdout)
    assert len(rows) == 1 and set(rows[0]["probabilities"]) == set(manifest["labels"])

    env["CXRTRIAGE_DATABASE_URL"] = f"sqlite:///{outside / 'db' / 'cxrtriage.db'}"
    assert "latest revision" in _run([str(script), "db", "upgrade"], cwd=outside, env=env).stdout
    tables = _run([sys.executable, "-c", "import sqlite3,sys; print(sorted(r[0] for r in sqlite3.connect("
                   "sys.argv[1]).execute(\"select name from sqlite_master where type='table'\")))",
                   str(outside / "db" / "cxrtriage.db")], cwd=outside, env=env).stdout
    assert "studies" in tables and "scheduler_runs" in tables
