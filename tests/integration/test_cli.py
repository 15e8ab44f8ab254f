"""The command-line tool: --help everywhere, predict with heatmaps, evaluate reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factory import SAMPLES

DATA = Path(__file__).resolve().parents[1] / "data" / "kermany-subset"
COMMANDS = [[], ["serve"], ["receiver"], ["scheduler"], ["worker"], ["predict"], ["studies"], ["db"],
            ["db", "upgrade"], ["train"], ["package"], ["evaluate"], ["reprocess"], ["models"]]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxrtriage.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cxrtriage")
def test_help(command):
    result = _run(*command, "--help")
    assert result.returncode == 0 and "usage: cxrtriage" in result.stdout


def test_version_names_package_and_bundled_model():
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("cxrtriage 0.1.0\nbundled model cxrtriage-pneumonia-resnet18 ")


def test_predict_json_and_heatmaps(tmp_path, tiny_package):
    for sample in ("normal-1.dcm", "pneumonia-1.dcm"):
        (tmp_path / sample).write_bytes((SAMPLES / sample).read_bytes())
    image = DATA / "NORMAL" / sorted(p.name for p in (DATA / "NORMAL").iterdir())[0]
    (tmp_path / "single.jpeg").write_bytes(image.read_bytes())
    result = _run("predict", str(tmp_path), "--model", str(tiny_package), "--json", "--heatmap")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 3
    for row in rows:
        assert set(row["probabilities"]) == {"NORMAL", "PNEUMONIA"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert Path(row["heatmap"]).is_file()
    table = _run("predict", str(tmp_path / "single.jpeg"), "--model", str(tiny_package))
    assert "single.jpeg" in table.stdout and "probability" in table.stdout


def test_predict_reports_unreadable_files(tmp_path, tiny_package):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    rows = json.loads(_run("predict", str(bad), "--model", str(tiny_package), "--json").stdout)
    assert rows[0]["error"].startswith("not a DICOM file")


@pytest.mark.parametrize("fmt", ["markdown", "html"])
def test_evaluate_writes_report_and_plots(tmp_path, tiny_package, fmt):
    result = _run("evaluate", str(tiny_package), str(DATA), "--output", str(tmp_path), "--format", fmt)
    assert result.returncode == 0, result.stderr
    report = tmp_path / ("report.html" if fmt == "html" else "report.md")
    text = report.read_text()
    for plot in ("confusion_matrix.png", "roc.png", "precision_recall.png", "reliability.png"):
        assert (tmp_path / plot).stat().st_size > 1000 and plot in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 16 and metrics["n_positive"] == 8
    assert metrics["auroc_95ci"][0] <= metrics["auroc"] <= metrics["auroc_95ci"][1]


def test_evaluate_adds_the_shifted_validation(tmp_path, tiny_package):
    """Each picture re-acquired as DICOM and read back by the serving path; cached for reuse."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ("evaluate", str(tiny_package), str(DATA), "--output", str(out), "--shifted",
            "--variants", "2", "--cache-dir", str(cache))
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 16
    assert metrics["shifted_validation"]["n_images"] == 32
    assert metrics["shifted_validation"]["n_positive"] == 16
    factors = {(r["factor"], r["level"]) for r in metrics["shifted_factors"]}
    assert ("photometric", "MONOCHROME1") in factors or ("photometric", "MONOCHROME2") in factors
    text = (out / "report.md").read_text()
    assert "shifted validation" in text and "Shifted validation by factor" in text
    assert (out / "shifted" / "roc.png").stat().st_size > 1000
    assert len(list(cache.glob("shifted-64-*/images.npy"))) == 1
    again = _run(*args)  # from the cache, same figures
    assert again.returncode == 0, again.stderr
    rerun = json.loads((out / "metrics.json").read_text())
    assert rerun["shifted_validation"] == metrics["shifted_validation"]


def test_the_receiver_process_does_not_load_torch():
    """The receiver only validates, stores and indexes: it must not pay for torch."""
    code = ("import sys, cxrtriage.cli as cli, cxrtriage.dicom.receiver, cxrtriage.worker.receiving, "
            "cxrtriage.worker.scheduler, cxrtriage.worker.app, cxrtriage.dicom.tls; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
