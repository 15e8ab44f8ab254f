"""Ingest rate of the cxrtriage receiver against dcmtk's storescp and Orthanc, on the same
uncompressed 1024 px 16-bit DX files (2 MiB of pixels each), over one association and over four
parallel ones (four storescu processes at once, on disjoint quarters of a second set of files).

Each round sends instances the server has not seen, and afterwards every instance is counted as
stored (files on disk for storescp and the receiver, /statistics for Orthanc). The receiver runs
alone (`cxrtriage receiver --no-scheduler`); it fsyncs each file and commits its index row before
it answers. It runs on the embedded SQLite file, and again on PostgreSQL (one process and a group
of two), since production indexes into PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from tests.peers import echoscu
from tests.servers import LOOPBACK, Orthanc, Proc, binary, free_port, port_open, start_postgres, wait_for

from benchmarks.corpus import all_paths, make_studies
from benchmarks.pipeline import cli_env
from benchmarks.report import peak_rss_mb


@dataclass(frozen=True)
class Rates:
    one: float  # instances/s over one association
    four: float  # ... over four at once
    peak_rss_mb: float | None = None


def make_sets(folder: Path, count: int) -> tuple[list[Path], list[Path]]:
    studies = make_studies(folder, 2 * count // 4 + 2, seed=11, images_per_study=4,
                           syntaxes=[ExplicitVRLittleEndian], prefix="I")
    paths = all_paths(studies)
    return paths[:count], paths[count: 2 * count]


def send_parallel(port: int, called: str, chunks: list[list[Path]]) -> float:
    """Seconds from starting one storescu per chunk to the last one's exit; each must succeed."""
    command = [binary("storescu"), "-aec", called, "-aet", "DCMTKSCU", LOOPBACK, str(port)]
    start = time.perf_counter()
    procs = [subprocess.Popen([*command, *map(str, chunk)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for chunk in chunks]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    seconds = time.perf_counter() - start
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err[-500:]}")
    return seconds


def _rates(port: int, called: str, one: list[Path], four: list[Path],
           stored: Callable[[], int]) -> tuple[float, float]:
    single = send_parallel(port, called, [one])
    if stored() != len(one):
        raise RuntimeError(f"{called}: {stored()} of {len(one)} instances stored")
    quarters = [four[i::4] for i in range(4)]
    parallel = send_parallel(port, called, quarters)
    if stored() != len(one) + len(four):
        raise RuntimeError(f"{called}: {stored()} of {len(one) + len(four)} instances stored")
    return len(one) / single, len(four) / parallel


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _stored_by_receiver(storage: Path) -> int:
    """Instance files in the receiver's storage, not counting refused ones or temporaries."""
    return sum(1 for p in storage.rglob("*") if p.is_file() and p.suffix in ("", ".dcm")
               and "rejected" not in p.parts)


def storescp(work: Path, one: list[Path], four: list[Path]) -> Rates:
    port = free_port()
    folder = work / "scp"
    folder.mkdir(parents=True)
    scp = Proc("storescp", [binary("storescp"), "-od", str(folder), str(port)], work)
    try:
        wait_for(lambda: port_open(port), 30, "storescp")
        return Rates(*_rates(port, "ANY", one, four, lambda: _files(folder)))
    finally:
        scp.stop()


def orthanc(work: Path, one: list[Path], four: list[Path]) -> Rates:
    pacs = Orthanc(work / "orthanc", work, "UNUSED", 1)
    try:
        def stored() -> int:
            return int(pacs.get("/statistics")["CountInstances"])  # type: ignore[index]

        rates = _rates(pacs.dicom_port, pacs.ae_title, one, four, stored)
        return Rates(*rates, peak_rss_mb(pacs.proc.proc.pid))
    finally:
        pacs.proc.stop()


def receiver(work: Path, one: list[Path], four: list[Path], processes: int = 1,
             database_url: str | None = None) -> Rates:
    """`processes` receivers sharing the port (a group, SO_REUSEPORT); peak RSS is the sum.
    `database_url`: an empty database to index into (default: the embedded SQLite file)."""
    port = free_port()
    folder = work / "rx"
    folder.mkdir(parents=True)
    env = cli_env({"CXRTRIAGE_PORT": str(port),
                   **({"CXRTRIAGE_DATABASE_URL": database_url} if database_url else {})})
    command = [sys.executable, "-m", "cxrtriage.cli"]
    subprocess.run([*command, "db", "upgrade"], cwd=folder, env={**os.environ, **env}, check=True,
                   stdout=subprocess.DEVNULL)  # once, before the group starts
    procs = [Proc(f"receiver-{i}", [*command, "receiver", "--no-scheduler", "--group-size", str(processes),
                                    "--group-index", str(i)], work, cwd=folder, env=env)
             for i in range(processes)]
    try:
        wait_for(lambda: all(p.alive() for p in procs) and echoscu(port), 120, "cxrtriage receiver",
                 interval=0.5)
        rates = _rates(port, "CXRTRIAGE", one, four,
                       lambda: _stored_by_receiver(folder / "var" / "storage"))
        rss = [peak_rss_mb(p.proc.pid) for p in procs]
        return Rates(*rates, sum(r for r in rss if r is not None) or None)
    finally:
        for proc in procs:
            proc.stop()


def postgres_databases(log_dir: Path, names: list[str]) -> tuple[Proc, dict[str, str]]:
    """A PostgreSQL server on a free loopback port, with one empty database per name (each round
    indexes into its own, since every round sends the same instances)."""
    import psycopg

    proc, url = start_postgres(log_dir)
    base, _ = url.rsplit("/", 1)
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        for name in names:
            connection.execute(f"CREATE DATABASE {name}")
    return proc, {name: f"{base}/{name}" for name in names}


def durable_floor(work: Path, files: list[Path]) -> float:
    """The machine's durable-write floor: files/s of a plain loop that writes each file to a temporary
    name, fsyncs it, renames it into place and fsyncs the folder (what the receiver does per instance,
    without DICOM, the network or the index)."""
    folder = work / "floor"
    folder.mkdir(parents=True)
    datas = [p.read_bytes() for p in files]
    start = time.perf_counter()
    for n, data in enumerate(datas):
        temporary, final = folder / f".{n}.tmp", folder / f"{n}.dcm"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(datas) / (time.perf_counter() - start)
