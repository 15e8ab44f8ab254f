"""Ingest rate of the receiver against dcmtk's storescp and Orthanc on the same ~2 MB DX files,
and the time from the last instance received to the SR stored at Orthanc.

Run: make benchmark   (or .venv/bin/python -m benchmarks.ingest)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid
from tests.factory import COMPREHENSIVE_3D_SR, sample_pixels
from tests.peers import echoscu, storescu
from tests.servers import Orthanc, Proc, binary, free_port, port_open, wait_for

from cxrtriage.dicom.wrap import wrap_image

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src/cxrtriage/bundled/pneumonia-resnet18"


def make_files(folder: Path, count: int) -> list[Path]:
    """1024 x 1024, 16-bit DX: 2 MiB of pixel data each, from a real sample, upscaled."""
    base = np.kron(sample_pixels("pneumonia-1").astype(np.uint16) * 257, np.ones((5, 5), np.uint16))
    pixels = np.ascontiguousarray(base[:1024, :1024])
    study = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for _ in range(count):
        ds = wrap_image(pixels, study_uid=study)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def timed_send(port: int, files: list[Path], called: str) -> float:
    start = time.perf_counter()
    result = storescu(port, files, called=called)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
    return elapsed


def cxrtriage_proc(work: Path, name: str, args: list[str], env: dict[str, str]) -> Proc:
    work.mkdir(parents=True, exist_ok=True)
    return Proc(name, [sys.executable, "-m", "cxrtriage.cli", *args], work, cwd=work,
                env={"CXRTRIAGE_LOG_LEVEL": "WARNING", **env})


def _stored(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix in ("", ".dcm")
               and "rejected" not in p.parts)


def ingest(work: Path, files: list[Path], rounds: int = 2) -> dict[str, float]:
    """Best of `rounds` sends of all files over one association to each receiver; every round
    checks that each instance was really stored."""
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    results: dict[str, float] = {}
    port = free_port()
    scp_dir = work / "scp"
    scp_dir.mkdir()
    scp = Proc("storescp", [binary("storescp"), "-od", str(scp_dir), str(port)], work)
    try:
        wait_for(lambda: port_open(port), 30, "storescp")
        results["dcmtk storescp"] = min(timed_send(port, files, "ANY") for _ in range(rounds))
        assert len(list(scp_dir.iterdir())) == len(files), "storescp did not store every instance"
    finally:
        scp.stop()
    orthanc = Orthanc(work / "orthanc", work, "UNUSED", 1)
    try:
        results["Orthanc"] = min(timed_send(orthanc.dicom_port, files, orthanc.ae_title)
                                 for _ in range(rounds))
        stats = orthanc.get("/statistics")
        assert stats["CountInstances"] == len(files), "Orthanc did not store every instance"  # type: ignore[index]
    finally:
        orthanc.proc.stop()
    port = free_port()
    receiver = cxrtriage_proc(work / "rx", "receiver", ["receiver", "--no-scheduler"],
                              {"CXRTRIAGE_PORT": str(port)})
    try:
        wait_for(lambda: echoscu(port), 120, "receiver", interval=0.5)
        results["cxrtriage receiver"] = min(timed_send(port, files, "CXRTRIAGE") for _ in range(rounds))
        stored = _stored(work / "rx" / "var" / "storage")
        assert stored == len(files), f"the receiver stored {stored} of {len(files)} instances"
    finally:
        receiver.stop()
    print(f"\nIngest: {len(files)} DX files, {megabytes:.1f} MB, one association (storescu), "
          f"best of {rounds}; every instance verified stored")
    reference = results["dcmtk storescp"]
    for name, seconds in results.items():
        print(f"  {name:20s} {len(files) / seconds:7.1f} instances/s  {megabytes / seconds:7.1f} MB/s"
              f"  time ratio vs storescp {seconds / reference:5.2f}")
    print("  (the cxrtriage receiver fsyncs each file and its directory and commits an index row "
          "before answering)")
    return results


def latency(work: Path, quiet: float) -> float:
    """Seconds from storescu's last instance acknowledged to the SR stored in Orthanc."""
    port = free_port()
    orthanc = Orthanc(work / "orthanc2", work, "CXRTRIAGE", port)
    service = cxrtriage_proc(work / "svc", "serve", ["serve"], {
        "CXRTRIAGE_PORT": str(port), "CXRTRIAGE_STUDY_QUIET_SECONDS": str(quiet),
        "CXRTRIAGE_SWEEP_INTERVAL_SECONDS": "0.1", "CXRTRIAGE_MODEL": str(BUNDLED),
        "CXRTRIAGE_SR_DESTINATION": f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"})
    try:
        wait_for(lambda: echoscu(port), 120, "receiver", interval=0.5)
        study = generate_uid()
        files = []
        for name in ("pneumonia-1", "normal-1"):
            ds = wrap_image(sample_pixels(name), study_uid=study)
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            path = work / f"lat-{ds.SOPInstanceUID}.dcm"
            path.write_bytes(buffer.getvalue())
            files.append(path)
        storescu(port, files)
        sent = time.perf_counter()

        def arrived() -> bool:
            found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {
                "StudyInstanceUID": study, "SOPClassUID": COMPREHENSIVE_3D_SR}})
            return bool(found)

        wait_for(arrived, 120, "SR at Orthanc", interval=0.05)
        return time.perf_counter() - sent
    finally:
        service.stop()
        orthanc.proc.stop()


def main() -> None:
    count = int(os.environ.get("BENCH_FILES", "40"))
    with tempfile.TemporaryDirectory(prefix="cxrtriage-bench-") as tmp:
        work = Path(tmp)
        files = make_files(work / "files", count)
        ingest(work, files)
        quiet = float(os.environ.get("BENCH_QUIET_SECONDS", "1"))
        seconds = latency(work, quiet)
        print(f"\nLast instance received -> SR stored at Orthanc: {seconds:.2f} s "
              f"(of which {quiet:.1f} s is the configured study quiet time; 2-image study, bundled model)")
        print(json.dumps({"sr_latency_s": seconds, "quiet_s": quiet}))


if __name__ == "__main__":
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    main()
