"""What a hostile DICOM peer costs `cxrtriage receiver` (embedded defaults), measured while an
honest modality sends beside it: `python -m benchmarks.hostile` (or BENCH_ONLY=hostile make benchmark).

For each attack: the status the attacker got, the seconds until the receiver was done with it
(the time it held a slot), the growth of the receiver's peak resident memory (VmHWM) over its
idle peak, the spool's peak size, and the honest modality's C-STORE time during the attack as a
ratio to the same store on the idle receiver (the reference, measured in the same run).

Attacks: a deflate bomb (3.2 GB of pixels in a few MB of Deflated Explicit VR Little Endian,
sent as stored by a pynetdicom SCU); the same image uncompressed, streamed by dcmtk's dcmsend
(a 1 GiB file: the receiver cuts it at twice its instance limit); fourteen half-open
connections declaring a 2 GiB A-ASSOCIATE-RQ; fourteen trickling a plausible one a byte a second;
an A-ASSOCIATE-RQ of 4 MiB; sixteen peers on eight addresses connecting and closing without a
request for 25 s, the honest store made 20 s into it (by then pynetdicom's cap on acceptor
threads was full, until the receiver ended each such thread at its close).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, _config
from tests.factory import radiograph, write_study
from tests.hostile import DX, closed_by_peer, connect_from, deflate_bomb, oversized_file, pdu_header
from tests.peers import echoscu
from tests.servers import LOOPBACK, Proc, binary, free_port, wait_for

from benchmarks.pipeline import cli_env
from benchmarks.report import peak_rss_mb

MiB = 1024 * 1024


def _honest_store(port: int, folder: Path) -> tuple[float, str]:
    """Seconds for an honest storescu to store one image, and what went wrong when it failed
    (infinite seconds, and storescu's last error line)."""
    files = write_study(folder, [radiograph()])
    start = time.perf_counter()
    result = subprocess.run([binary("storescu"), "-aec", "CXRTRIAGE", "-aet", "MODALITY", LOOPBACK, str(port),
                             *map(str, files)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        errors = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("E:")]
        return float("inf"), errors[-1] if errors else f"storescu exit {result.returncode}"
    return time.perf_counter() - start, "stored"


def _send_deflated(port: int, path: Path) -> str:
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(DX, [DeflatedExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300
    assoc = ae.associate(LOOPBACK, port, ae_title="CXRTRIAGE")
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    if assoc.is_established:
        assoc.release()
    return f"0x{int(status.Status):04X}" if "Status" in status else "abort"


def _dcmsend(port: int, path: Path) -> str:
    result = subprocess.run([binary("dcmsend"), "-aec", "CXRTRIAGE", "-nh", LOOPBACK, str(port), str(path)],
                            capture_output=True, text=True, timeout=600)
    if "Failed sending C-STORE" in result.stderr or "Abort" in result.stderr:
        return "aborted"  # dcmsend exits 0 either way; its messages say what happened
    return "sent" if result.returncode == 0 else f"dcmsend exit {result.returncode}"


def _half_open(port: int, length: int, trickle: bool) -> str:
    socks = [connect_from(f"127.0.0.{2 + i % 4}", port) for i in range(14)]
    for sock in socks:
        sock.sendall(pdu_header(0x01, length) + b"\x00")
    if trickle:
        stop = threading.Event()

        def drip() -> None:
            while not stop.wait(1.0):
                for sock in socks:
                    try:
                        sock.sendall(b"\x00")
                    except OSError:
                        pass

        threading.Thread(target=drip, daemon=True).start()
    closed = [closed_by_peer(sock, within=120) for sock in socks]
    if trickle:
        stop.set()
    return "all closed" if all(c is not None for c in closed) else "some still open"


def _connect_close_flood(port: int, pid: int, seconds: float) -> str:
    stop, count, peak_threads = threading.Event(), [0], 0

    def flood(address: str) -> None:
        while not stop.is_set():
            try:
                connect_from(address, port).close()
                count[0] += 1
            except OSError:
                time.sleep(0.01)

    peers = [threading.Thread(target=flood, args=(f"127.0.0.{2 + i % 8}",), daemon=True) for i in range(16)]
    for peer in peers:
        peer.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak_threads = max(peak_threads, len(os.listdir(f"/proc/{pid}/task")))
        time.sleep(0.5)
    stop.set()
    for peer in peers:
        peer.join()
    return f"{count[0]} connections, receiver at most {peak_threads} threads"


def _big_rq(port: int) -> str:
    sock = connect_from("127.0.0.2", port)
    try:
        sock.sendall(pdu_header(0x01, 4 * MiB) + b"\0" * (4 * MiB))
    except OSError:
        return "cut off mid-send"
    return "closed" if closed_by_peer(sock, within=30) is not None else "still open"


def _attack(name: str, run: Callable[[], str], port: int, pid: int, spool: Path, work: Path,
            idle_s: float, figures: dict[str, float | str], lead_s: float) -> None:
    rss_before = peak_rss_mb(pid) or 0.0
    peak_spool, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                peak_spool[0] = max(peak_spool[0], sum(p.stat().st_size for p in spool.iterdir()))
            except OSError:
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    outcome: list[str] = []
    start = time.perf_counter()
    attacker = threading.Thread(target=lambda: outcome.append(run()))
    attacker.start()
    time.sleep(lead_s)  # the attack is under way
    honest_s, honest_outcome = _honest_store(port, work / f"honest-{name}")
    attacker.join(timeout=900)
    held = time.perf_counter() - start
    stop.set()
    watcher.join()
    figures[f"hostile_{name}_outcome"] = outcome[0] if outcome else "still running"
    figures[f"hostile_{name}_held_s"] = round(held, 2)
    figures[f"hostile_{name}_rss_growth_mb"] = round((peak_rss_mb(pid) or 0.0) - rss_before, 1)
    figures[f"hostile_{name}_spool_peak_mb"] = round(peak_spool[0] / MiB, 1)
    figures[f"hostile_{name}_honest_store_ratio"] = round(honest_s / idle_s, 2)
    figures[f"hostile_{name}_honest_outcome"] = honest_outcome
    if not echoscu(port):
        raise RuntimeError(f"the receiver stopped answering after {name}")


def measure(work: Path) -> dict[str, float | str]:
    port = free_port()
    folder = work / "rx"
    folder.mkdir(parents=True)
    proc = Proc("receiver", [sys.executable, "-m", "cxrtriage.cli", "receiver", "--no-scheduler"], work,
                cwd=folder, env=cli_env({"CXRTRIAGE_PORT": str(port)}))
    figures: dict[str, float | str] = {}
    try:
        wait_for(lambda: echoscu(port), 120, "cxrtriage receiver", interval=0.5)
        idle_s = statistics.median(_honest_store(port, work / f"idle-{i}")[0] for i in range(3))
        figures["hostile_honest_store_idle_s"] = round(idle_s, 3)
        figures["hostile_receiver_idle_peak_rss_mb"] = round(peak_rss_mb(proc.proc.pid) or 0.0, 1)
        bomb = work / "bomb.dcm"
        deflate_bomb(bomb, 16383, 16383)
        figures["hostile_deflate_bomb_file_mb"] = round(bomb.stat().st_size / MiB, 1)
        giant = work / "giant.dcm"
        oversized_file(giant, 1024 * MiB)
        spool = folder / "var" / "storage" / "spool"
        # Each attack, and how long it runs before the honest store is made.
        attacks: dict[str, tuple[Callable[[], str], float]] = {
            "deflate_bomb": (lambda: _send_deflated(port, bomb), 0.2),
            "giant_uncompressed": (lambda: _dcmsend(port, giant), 0.2),
            "half_open_2gib_rq": (lambda: _half_open(port, 2**31, trickle=False), 0.2),
            "trickle_rq": (lambda: _half_open(port, 300, trickle=True), 0.2),
            "rq_4mib": (lambda: _big_rq(port), 0.2),
            "connect_close_flood": (lambda: _connect_close_flood(port, proc.proc.pid, 25), 20),
        }
        for name, (run, lead_s) in attacks.items():
            _attack(name, run, port, proc.proc.pid, spool, work, idle_s, figures, lead_s)
        figures["hostile_receiver_peak_rss_mb"] = round(peak_rss_mb(proc.proc.pid) or 0.0, 1)
    finally:
        proc.stop()
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cxr-hostile-") as folder:
        for key, value in measure(Path(folder)).items():
            print(key, value)
    print("bench_load_avg_1min_end", os.getloadavg()[0])


if __name__ == "__main__":
    main()
