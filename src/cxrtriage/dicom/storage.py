"""Durable instance storage: temp file, fsync, rename, fsync of the directory.

Paths are built only from validated UIDs, so nothing a sender controls can escape the root.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from cxrtriage.dicom.uids import require_uid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(target: Path, chunks: list[bytes]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


class InstanceStore:
    """Files under `root/<study>/<series>/<sop>.dcm`; rejected payloads under `root/rejected/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        parts = [require_uid(study_uid, "StudyInstanceUID"), require_uid(series_uid, "SeriesInstanceUID"),
                 require_uid(sop_uid, "SOPInstanceUID")]
        path = self.root.joinpath(parts[0], parts[1], parts[2] + ".dcm")
        if self.root not in path.parents:
            raise ValueError("storage path escaped the storage root")
        return path

    def store(self, study_uid: str, series_uid: str, sop_uid: str, chunks: list[bytes]) -> Path:
        path = self.path_for(study_uid, series_uid, sop_uid)
        write_durably(path, chunks)
        return path

    def quarantine(self, chunks: list[bytes]) -> Path:
        """Keep a refused payload under a random name, so nothing received is lost."""
        path = self.root / "rejected" / f"{uuid.uuid4().hex}.bin"
        write_durably(path, chunks)
        return path
