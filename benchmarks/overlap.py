"""Batches overlapped: bulk reprocessing in one worker process, where the next batch decodes
while this one runs the network (CXRTRIAGE_BATCH_CHAIN_SECONDS longer than the run: the steady
state of a chain, as on a GPU node doing bulk work), against one batch at a time (0, the
default), the reference, measured in the same run.

One set of one-image studies (1024 px, uncompressed) is received and classified once (its SRs
and heat maps are then stored, as in a reprocessing run with an unchanged model). For each
configuration that store is requeued as bulk work and processed by `process_ready`, task by task
as a worker would be sent them, each in a fresh process:

- served: the worker as `serve` runs it on this machine (torch's threads on every core, the
  default decoder children). On a CPU-only machine the network and the decoders share the cores,
  so the overlap can only move the decoding, not hide it.
- own core: the network on one thread and one decoder child, so that the network has a core of
  its own, as it has a GPU of its own on a GPU node, where the decoding would otherwise stop it.

Printed: studies/s of each, the main thread's time waiting in "preprocess" for its images, and
the ratio of the overlapped rate to the one-batch rate. Run alone:
`BENCH_ONLY=overlap .venv/bin/python -m benchmarks.run`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks.corpus import make_studies
from benchmarks.report import Report

STUDIES = 96  # twelve batches at CXRTRIAGE_BATCH_STUDIES=8
CHAIN_SECONDS = 120.0  # longer than the run here: every batch after the first overlaps
CONFIGS = {"served": (None, None), "own_core": (1, 1)}  # name: (torch threads, decoder children)


def _runtime(folder: Path, chain_seconds: float | None = None, decoders: int | None = None):  # type: ignore[no-untyped-def]
    from cxrtriage.config import Settings
    from cxrtriage.db.session import Database, upgrade
    from cxrtriage.dicom.storage import InstanceStore
    from cxrtriage.worker.runtime import Runtime

    url = f"sqlite:///{folder}/db.sqlite"
    upgrade(url)
    extra = {"batch_chain_seconds": chain_seconds} if chain_seconds is not None else {}
    if decoders is not None:
        extra["decode_processes"] = decoders
    settings = Settings(database_url=url, storage_dir=folder / "storage", **extra)
    return Runtime(settings, Database(url), InstanceStore(settings.storage_dir))


def _process_all(rt, uids: list[str]) -> int:  # type: ignore[no-untyped-def]
    from cxrtriage.worker.processing import process_ready

    return sum(len(process_ready(rt, uid)) for uid in uids)


def _setup(folder: Path, files: Path) -> None:
    """In a child: receive the files as the receiver would, and classify them once."""
    from tests.received import receive

    rt = _runtime(folder)
    uids = [receive(rt, [pydicom.dcmread(path)]) for path in sorted(files.glob("*.dcm"))]
    _process_all(rt, uids)
    rt.close()
    (folder / "uids.json").write_text(json.dumps(uids))


def _measure(folder: Path, chain_seconds: float, threads: int | None,
             decoders: int | None) -> dict[str, float]:
    """In a child: requeue every study as bulk work and process it; rate and time waiting."""
    import torch

    from cxrtriage.db.operations import requeue_finished
    from cxrtriage.worker import pipeline

    if threads is not None:
        torch.set_num_threads(threads)
    rt = _runtime(folder, chain_seconds, decoders)
    uids = json.loads((folder / "uids.json").read_text())
    with rt.db.session() as session:
        for uid in uids:
            requeue_finished(session, uid, ("done",), "benchmark")
    waiting = 0.0
    real = pipeline.preprocess

    def timed(rt_, run) -> None:  # type: ignore[no-untyped-def]
        nonlocal waiting
        start = time.perf_counter()
        real(rt_, run)
        waiting += time.perf_counter() - start

    pipeline.STEPS = tuple(pipeline.Step(s.name, timed, s.failure_reason, s.scope) if s.name == "preprocess"
                           else s for s in pipeline.STEPS)
    assert rt.model_version_id  # the model loaded and registered before the clock starts
    start = time.perf_counter()
    done = _process_all(rt, uids)
    seconds = time.perf_counter() - start
    rt.close()
    if done != len(uids):
        raise RuntimeError(f"{done} of {len(uids)} studies processed")
    return {"studies_per_s": done / seconds, "waiting_s": waiting, "seconds": seconds}


def _child(*args: str) -> str:
    command = [sys.executable, "-m", "benchmarks.overlap", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"benchmarks.overlap {args[0]} exited {result.returncode}: "
                           f"{result.stderr[-2000:]}")
    return result.stdout


def run(report: Report, work: Path) -> None:
    files = work / "files"
    make_studies(files, STUDIES, images_per_study=1, syntaxes=[ExplicitVRLittleEndian], prefix="O")
    base = work / "base"
    base.mkdir(parents=True)
    _child("setup", str(base), str(files))
    report.note(f"overlap: {STUDIES} one-image studies reprocessed in one worker process; the next batch "
                f"decoding during this one's network (one chain for the whole run) against one batch at a "
                "time; 'own_core': the network on one thread, one decoder child (a GPU node in miniature)")
    for name, (threads, decoders) in CONFIGS.items():
        rates = {}
        for label, chain in (("one_batch", 0.0), ("overlapped", CHAIN_SECONDS)):
            figures = json.loads(_child("measure", str(base), str(chain), str(threads or 0),
                                        str(decoders or 0)))
            rates[label] = figures["studies_per_s"]
            report.add(f"overlap_{name}_{label}_studies_per_s", figures["studies_per_s"], 2)
            report.add(f"overlap_{name}_{label}_waiting_for_images_s", figures["waiting_s"], 2)
        report.ratio(f"overlap_{name}_to_one_batch_ratio", rates["overlapped"], rates["one_batch"])


if __name__ == "__main__":
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    if sys.argv[1] == "setup":
        _setup(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        threads_arg, decoders_arg = int(sys.argv[4]) or None, int(sys.argv[5]) or None
        print(json.dumps(_measure(Path(sys.argv[2]), float(sys.argv[3]), threads_arg, decoders_arg)))
