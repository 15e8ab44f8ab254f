"""Durable instance storage: temp file, fsync, rename, fsync of the directory.

Paths are built only from validated UIDs, so nothing a sender controls can escape the root.
Files are readable by their owner and group only (0640; folders 0750): they hold patient data.
The C-STORE spool lives under the root too, on the same volume, so that the free-space
watermark counts it and a spooled instance is stored by a rename, not a copy.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.dicom.uids import require_uid

FILE_MODE = 0o640
DIR_MODE = 0o750


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` and its missing parents with `mode` (not the process umask's default)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(folder, mode)


def write_durably(target: Path, chunks: list[bytes]) -> None:
    make_dirs(target.parent)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def sync_file(path: Path) -> None:
    """Flush a file's data to the disk (the rename that makes it durable comes later)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_durably(source: Path, target: Path) -> None:
    """Make a file written elsewhere on the same volume durable under `target`, by rename."""
    make_dirs(target.parent)
    sync_file(source)  # quick when the caller synced it already (nothing left to flush)
    os.chmod(source, FILE_MODE)
    os.replace(source, target)
    _fsync_dir(target.parent)


@dataclass(frozen=True)
class Watermark:
    """When the storage volume is too full to accept new instances."""

    min_free_bytes: int = 0
    max_used_percent: float = 100.0

    def refusal(self, path: Path) -> str:
        """Why new instances must be refused now, or an empty string when there is room."""
        usage = shutil.disk_usage(path)
        used_percent = 100.0 * (usage.total - usage.free) / usage.total if usage.total else 100.0
        if usage.free < self.min_free_bytes or used_percent > self.max_used_percent:
            return (f"storage volume is full: {usage.free} bytes free, {used_percent:.1f}% used "
                    f"(watermarks: CXRTRIAGE_MIN_FREE_BYTES={self.min_free_bytes}, "
                    f"CXRTRIAGE_MAX_DISK_USED_PERCENT={self.max_used_percent:g})")
        return ""


class InstanceStore:
    """Files under `root/<study>/<series>/<sop>.<digest>.dcm`; rejected payloads under
    `root/rejected/`; C-STORE data sets being received under `root/spool/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @property
    def spool(self) -> Path:
        return self.root / "spool"

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

    def path_for_content(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> Path:
        """Where a received instance with this content lives. The digest is in the name, so that
        two senders racing with the same SOP Instance UID never write over each other's file."""
        if len(sha256) < 16 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("sha256 must be a lowercase hex digest")
        path = self.path_for(study_uid, series_uid, sop_uid)
        return path.with_name(f"{path.stem}.{sha256[:16]}.dcm")

    def move_into(self, spooled: Path, path: Path) -> None:
        """Make a spooled file (already on this volume) durable at `path`, under the root."""
        if self.root not in path.parents:
            raise ValueError("storage path escaped the storage root")
        move_durably(spooled, path)

    def quarantine_file(self, spooled: Path) -> Path:
        """Keep a refused payload under a random name, so nothing received is lost."""
        path = self.root / "rejected" / f"{uuid.uuid4().hex}.bin"
        move_durably(spooled, path)
        return path

    def clean_old_rejected(self, older_than_seconds: float) -> int:
        """Retention for quarantined payloads."""
        return _remove_older(self.root / "rejected", older_than_seconds)

    def clean_spool(self, older_than_seconds: float, keep: set[str] | None = None) -> int:
        """Remove spool files left by transfers that ended without a handler (aborted, or a
        crash). `keep` names files that live transfers are still writing, however slowly."""
        return _remove_older(self.spool, older_than_seconds, keep or set())


def _remove_older(folder: Path, older_than_seconds: float, keep: set[str] | None = None) -> int:
    if not folder.is_dir():
        return 0
    cutoff, removed, keep = time.time() - older_than_seconds, 0, keep or set()
    for path in folder.iterdir():
        try:
            if str(path) in keep:
                continue
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
