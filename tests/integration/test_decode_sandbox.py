"""Pixel decoding runs in child processes under a memory and a time limit, and poison costs only
the poison: a file that exhausts or outlasts its decoder gets `undecodable-pixels` for its own
image, the child is replaced, every other file (and every other study of the batch) is decoded
as usual, and the worker's own memory does not grow by what the hostile file asked for."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid
from sqlalchemy import select

from cxrtriage.config import Settings
from cxrtriage.db.models import Instance, Study
from cxrtriage.db.session import Database, upgrade
from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.dicom.sandbox import DecodeLimits, DecoderPool
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError
from cxrtriage.web import imaging
from cxrtriage.worker.processing import process_ready
from cxrtriage.worker.runtime import Runtime
from tests.factory import radiograph
from tests.hostile_pixels import encoded, lying_j2k, memory_hog, rgb32_giant, save
from tests.received import current, receive, srs

SMALL = 400 * 1024**2  # above a child's ~140 MB of imports; below the hog's ~520 MB
HONEST = [RLELossless, JPEGLSLossless, JPEG2000Lossless, "native"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def hog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return memory_hog(tmp_path_factory.mktemp("hostile") / "hog.dcm")


@pytest.fixture
def pool() -> Iterator[DecoderPool]:
    pool = DecoderPool(2, DecodeLimits(memory_bytes=SMALL, timeout_seconds=30))
    yield pool
    pool.shutdown()


def _honest(tmp_path: Path, syntax: str) -> tuple[Path, np.ndarray]:
    ds = encoded(RLELossless) if syntax == "native" else encoded(syntax)
    if syntax == "native":
        ds.decompress()
    path = save(ds, tmp_path / f"{syntax}.dcm")
    return path, dataset_to_gray(pydicom.dcmread(path))


@pytest.mark.parametrize("syntax", HONEST)
def test_the_child_decodes_exactly_what_the_library_does(pool, tmp_path, syntax) -> None:
    path, expected = _honest(tmp_path, syntax)
    gray, reason, _ = pool.decode(str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    assert reason == "" and gray is not None
    assert gray.dtype == np.float32 and np.array_equal(gray, expected)


def test_each_child_is_limited_and_imports_no_torch(pool, tmp_path) -> None:
    path, _ = _honest(tmp_path, RLELossless)
    pool.decode(str(path))
    for pid in pool.pids():
        limits = Path(f"/proc/{pid}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max address space")]
        assert line.split()[3:5] == [str(SMALL), str(SMALL)]
        assert "torch" not in Path(f"/proc/{pid}/maps").read_text()


def test_a_file_that_exhausts_its_decoder_costs_only_itself(pool, tmp_path, hog) -> None:
    honest = [_honest(tmp_path, syntax) for syntax in HONEST]
    before = rss_mb()
    futures = [pool.submit(str(path)) for path, _ in honest[:2]]
    poisoned = pool.submit(str(hog))
    futures += [pool.submit(str(path)) for path, _ in honest[2:]]
    gray, reason, message = poisoned.result()
    assert gray is None and reason == Reason.UNDECODABLE_PIXELS.value
    assert "memory" in message
    for future, (_, expected) in zip(futures, honest, strict=True):
        image, why, _ = future.result()
        assert why == "" and np.array_equal(image, expected)  # type: ignore[arg-type]
    assert rss_mb() - before < 64, "the worker's memory grew by what the hostile file asked for"
    image, why, _ = pool.decode(str(honest[0][0]))  # the children were replaced and still work
    assert why == "" and image is not None


def test_a_decode_past_the_time_limit_is_killed(tmp_path, hog) -> None:
    pool = DecoderPool(1, DecodeLimits(memory_bytes=2 * 1024**3, timeout_seconds=0.2))
    try:
        path, expected = _honest(tmp_path, JPEG2000Lossless)
        assert pool.decode(str(path))[1] == ""  # started and warm
        start = time.monotonic()
        gray, reason, message = pool.decode(str(hog))  # ~2 s of decoding
        assert time.monotonic() - start < 1.5
        assert gray is None and reason == Reason.UNDECODABLE_PIXELS.value
        assert "CXRTRIAGE_DECODE_TIMEOUT_SECONDS" in message
        image, why, _ = pool.decode(str(path))
        assert why == "" and np.array_equal(image, expected)  # type: ignore[arg-type]
    finally:
        pool.shutdown()


@pytest.mark.parametrize(("make", "reason"), [
    (lying_j2k, Reason.UNDECODABLE_PIXELS),  # SIZ claims 60000 x 60000 under Rows = Columns = 64
    (rgb32_giant, Reason.UNSUPPORTED_PIXELS),  # 3.2 GB by its header, refused before decoding
])
def test_lying_headers_are_refused_before_any_decoder_runs(pool, tmp_path, make, reason) -> None:
    path = save(make(), tmp_path / "hostile.dcm")
    pool.decode(str(_honest(tmp_path, RLELossless)[0]))  # the children started
    start = time.monotonic()
    gray, got, message = pool.decode(str(path))
    assert gray is None and got == reason.value
    assert time.monotonic() - start < 2 and "decoder process died" not in message


def test_a_stored_file_that_changed_is_refused_in_the_child(pool, tmp_path) -> None:
    path, _ = _honest(tmp_path, RLELossless)
    gray, reason, _ = pool.decode(str(path), "0" * 64)
    assert gray is None and reason == Reason.STORED_FILE_CHANGED.value


@pytest.fixture
def rt(tmp_path: Path, tiny_package: Path) -> Iterator[Runtime]:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "storage", model=tiny_package,
                        batch_studies=8, decode_processes=2, decode_memory_bytes=SMALL, heatmaps=False)
    runtime = Runtime(settings, Database(url), InstanceStore(settings.storage_dir))
    yield runtime
    runtime.close()


def _study(rt: Runtime, hostile: pydicom.Dataset | None, patient: str) -> str:
    uid = generate_uid()
    images = [radiograph(uid, PatientID=patient)]
    if hostile is not None:
        hostile.StudyInstanceUID, hostile.PatientID = uid, patient
        images = [hostile]
    return receive(rt, images)


def _state(rt: Runtime, study_uid: str) -> tuple[str, str, int]:
    with rt.db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        return study.state, study.reason_code, study.attempts


def test_poison_in_a_batch_fails_its_own_study_only(rt, hog) -> None:
    warm = _study(rt, None, "PATWARM")  # the model loaded and a batch run once, before measuring
    assert process_ready(rt, warm) == {warm: "done"}
    honest = [_study(rt, None, f"PAT{n}") for n in range(3)]
    poison = {
        _study(rt, pydicom.dcmread(hog), "PATHOG"): Reason.UNDECODABLE_PIXELS,
        _study(rt, lying_j2k(), "PATLIE"): Reason.UNDECODABLE_PIXELS,
        _study(rt, rgb32_giant(), "PATRGB"): Reason.UNSUPPORTED_PIXELS,
    }
    before = rss_mb()
    states = process_ready(rt, honest[0])
    assert rss_mb() - before < 64
    assert {uid: states[uid] for uid in honest} == {uid: "done" for uid in honest}
    for uid, reason in poison.items():
        assert _state(rt, uid)[:2] == ("failed", reason.value)
        [sr] = current(srs(rt, uid))  # its own "not analysed" SR, naming the reason
        assert reason.text in str(pydicom.dcmread(sr.path).ContentSequence)
    for uid in honest:
        assert _state(rt, uid) == ("done", "", 1), "an honest study lost an attempt"


def test_a_changed_stored_file_is_a_coded_reason_not_a_result(rt) -> None:
    uid = generate_uid()
    study_uid = receive(rt, [radiograph(uid, PatientID="PATKEEP"),
                             radiograph(uid, "normal-1", PatientID="PATKEEP")])
    with rt.db.session() as session:
        rows = session.scalars(select(Instance).order_by(Instance.id)).all()
        changed, kept = rows[0], rows[1]
        other = radiograph(uid, "normal-2", PatientID="OTHERPATIENT9")  # another patient's file ...
        other.SOPInstanceUID = changed.sop_instance_uid
        other.save_as(changed.path, enforce_file_format=True)  # ... in its place on disk
    assert process_ready(rt, study_uid)[study_uid] == "done"  # the unchanged image is classified
    with rt.db.session() as session:
        assert session.get(Instance, changed.id).state == "failed"
        assert session.get(Instance, changed.id).reason == Reason.STORED_FILE_CHANGED.text
        assert session.get(Instance, kept.id).state == "classified"
    [sr] = current(srs(rt, study_uid))
    ds = pydicom.dcmread(sr.path)
    assert ds.PatientID == "PATKEEP" and "OTHERPATIENT9" not in str(ds)


def test_the_review_app_decodes_in_a_child(tmp_path, hog) -> None:
    imaging.configure_decoding(1, DecodeLimits(memory_bytes=SMALL))
    try:
        path, _ = _honest(tmp_path, JPEGLSLossless)
        assert imaging.render_instance(str(path), 64).startswith(b"\x89PNG")
        with pytest.raises(InvalidInputError) as caught:
            imaging.render_instance(str(hog), 64)
        assert caught.value.reason == Reason.UNDECODABLE_PIXELS
        assert imaging.render_instance(str(path), 32).startswith(b"\x89PNG")  # replaced child
    finally:
        imaging.configure_decoding()


def test_a_batch_is_decoded_a_few_images_ahead_of_the_worker(pool, tmp_path) -> None:
    """Legal but giant images must not all wait, decoded, in the worker's memory at once."""
    from cxrtriage.worker.prefetch import Ahead

    path, expected = _honest(tmp_path, JPEG2000Lossless)
    ahead, decoding = Ahead(pool), {}
    for key in range(10):
        ahead.add(decoding, key, str(path), "")
    ahead.fill()
    assert len(decoding) == ahead.window == pool.processes + 1
    for key in range(10):
        image, reason, _ = ahead.take(decoding, key, str(path), "").result()
        assert reason == "" and np.array_equal(image, expected)  # type: ignore[arg-type]
        assert len(decoding) <= ahead.window
    assert decoding == {}
