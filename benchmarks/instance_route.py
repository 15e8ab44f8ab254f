"""One instance from C-STORE to the SR sent back, with the database transactions and the reads of
the instance's file counted at each hop (issue 18: work done once on the hot path).

In one process, over real sockets: dcmtk's storescu sends one DX instance to the receiver, the
worker's pipeline processes its study (decoding in its limited child processes), and the SR and
heat map go to dcmtk's storescp. Transactions are counted with SQLAlchemy's `begin` event; file
reads with an audit hook on `open`, in this process and (through a `sitecustomize` on their
PYTHONPATH) in the decoder children; each appends a line to a shared log. Run:
`.venv/bin/python -m benchmarks.instance_route` (ROUTE_VERBOSE=1 lists each read).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event
from tests.factory import radiograph, write_study
from tests.peers import storescu
from tests.servers import LOOPBACK, binary, free_port, port_open, wait_for

from cxrtriage.config import Settings
from cxrtriage.db.exports import due_export_batches
from cxrtriage.db.models import utcnow
from cxrtriage.db.session import Database, upgrade
from cxrtriage.db.studies import queue_quiet_studies
from cxrtriage.dicom.receiver import Receiver, ReceiverLimits
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.worker.export import export_srs
from cxrtriage.worker.processing import process_ready
from cxrtriage.worker.receiving import DatabaseIndex
from cxrtriage.worker.runtime import Runtime

HOOK = """
import os, sys
def _reads(root, log):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    def hook(name, args):
        if name != "open" or not isinstance(args[0], (str, os.PathLike)) or not os.path.exists(log):
            return
        path, mode, flags = str(args[0]), args[1], args[2]
        writes = (any(c in mode for c in "wa+") if isinstance(mode, str)
                  else bool(flags & (os.O_WRONLY | os.O_RDWR)))
        if path.startswith(root) and not writes and not os.path.isdir(path):  # fsync of a folder
            os.write(fd, f"{os.getpid()} {os.path.basename(path)}\\n".encode())
    sys.addaudithook(hook)
if os.environ.get("ROUTE_READS_LOG"):
    _reads(os.environ["ROUTE_READS_ROOT"], os.environ["ROUTE_READS_LOG"])
"""


class FileReads:
    """Opens of files under `root` for reading, by this process and by the decoder children,
    which load the same hook as their `sitecustomize`. Counting stops when the log is removed."""

    def __init__(self, root: Path, work: Path) -> None:
        self.log = work / "reads.log"
        self.log.write_text("")
        (work / "hook").mkdir()
        (work / "hook" / "sitecustomize.py").write_text(HOOK)
        os.environ.update(ROUTE_READS_ROOT=str(root), ROUTE_READS_LOG=str(self.log),
                          PYTHONPATH=os.pathsep.join([str(work / "hook"), os.environ.get("PYTHONPATH", "")]))
        scope: dict[str, Any] = {}
        exec(HOOK, scope)  # noqa: S102 - the same hook, in this process

    def take(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        self.log.write_text("")
        return lines


def _show(lines: list[str]) -> list[str]:
    """Which process read which file (a pid, and the file's name: spool, instance, SR)."""
    if os.environ.get("ROUTE_VERBOSE"):
        for line in lines:
            print("   ", line, file=sys.stderr)
    return lines


def measure(work: Path) -> dict[str, tuple[int, int, int]]:
    """Per hop: (transactions, SQL statements, reads of stored files)."""
    url = f"sqlite:///{work}/db.sqlite"
    upgrade(url)
    pacs_port, port = free_port(), free_port()
    (work / "pacs").mkdir()
    pacs = subprocess.Popen([binary("storescp"), "-aet", "PACS", "-od", str(work / "pacs"), str(pacs_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = Settings(database_url=url, storage_dir=work / "storage",
                        sr_destination=f"PACS@{LOOPBACK}:{pacs_port}", heatmaps=True)
    db = Database(url)
    transactions = Counter[str]()
    hop = ["receive"]
    statements = Counter[str]()
    event.listen(db.engine, "begin", lambda _c: transactions.update([hop[0]]))
    event.listen(db.engine, "before_cursor_execute", lambda *_: statements.update([hop[0]]))
    reads = FileReads(settings.storage_dir, work)
    result: dict[str, tuple[int, int, int]] = {}
    receiver = Receiver("CXRTRIAGE", InstanceStore(settings.storage_dir), DatabaseIndex(db, "rx"),
                        ReceiverLimits(heartbeat_seconds=3600))
    receiver.start(LOOPBACK, port)
    try:
        wait_for(lambda: port_open(pacs_port), 10, "storescp")
        files = write_study(work / "send", [radiograph()])
        assert storescu(port, files).returncode == 0
        wait_for(lambda: not receiver.associations.open_ids(), 10, "the association to end")
        result["C-STORE, index, association close"] = (transactions[hop[0]], statements[hop[0]],
                                                        len(_show(reads.take())))
        hop[0] = "process"
        with db.session() as session:
            [study_uid] = queue_quiet_studies(session, 0, now=utcnow() + timedelta(seconds=1))
        rt = Runtime(settings, db, InstanceStore(settings.storage_dir))
        rt.classifier  # noqa: B018 - the model loads before counting (once per worker, not per study)
        transactions[hop[0]] = statements[hop[0]] = 0
        reads.take()
        states = process_ready(rt, study_uid)
        assert states[study_uid] == "done", states
        result["claim, read, decode, classify, report, record"] = (transactions[hop[0]], statements[hop[0]],
                                                                   len(_show(reads.take())))
        hop[0] = "export"
        with db.session() as session:
            [batch] = due_export_batches(session, hold_seconds=60, study_uid=study_uid)
        assert set(export_srs(rt, batch)) == {"sent"}
        result["dispatch, claim, send, record"] = (transactions[hop[0]], statements[hop[0]],
                                                        len(_show(reads.take())))
        rt.close()
    finally:
        reads.log.unlink()
        receiver.stop()
        pacs.terminate()
        pacs.wait(10)
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        result = measure(Path(folder))
    print(f"{'hop':50} {'transactions':>12} {'statements':>10} {'file reads':>10}")
    for name, (count, sql, reads) in result.items():
        print(f"{name:50} {count:12d} {sql:10d} {reads:10d}")
    total = [sum(values) for values in zip(*result.values(), strict=True)]
    print(f"{'total':50} {total[0]:12d} {total[1]:10d} {total[2]:10d}")


if __name__ == "__main__":
    main()
