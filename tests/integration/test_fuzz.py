"""Fuzzing the receiver's parse path and the worker's read-and-preprocess path with hypothesis,
for a bounded time. Any exception other than our InvalidInputError is a crash, and a failure."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrtriage.dicom.contexts import DX_PRESENTATION
from cxrtriage.dicom.gating import gate_image
from cxrtriage.dicom.preprocess import dataset_to_gray
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.dicom.receiver import SUCCESS, inspect_file
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.model_input import fit_to_square
from tests.factory import radiograph
from tests.peers import encode_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on every bad byte
SEED = radiograph()
SEED_BYTES = encode_dataset(SEED)
SEED_FILE = io.BytesIO()
SEED.save_as(SEED_FILE, enforce_file_format=True)
BUDGET = dict(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1500")), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _mutate(data: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        position %= max(len(out), 1)
        if kind == 0:
            out[position] = value
        elif kind == 1:
            out[position:position] = bytes([value]) * (value % 9 + 1)
        else:
            del out[position : position + value % 64 + 1]
    return bytes(out[:cut]) if cut is not None else bytes(out)


def _spooled(work: Path, payload: bytes, syntax: str) -> Path:
    """`payload` as pynetdicom spools a C-STORE data set: preamble and file meta, then the bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = SEED.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    path = work / "cstore-fuzz"
    path.write_bytes(fp.getvalue() + payload)
    return path


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2**31), st.integers(0, 255)), max_size=12)
CUTS = st.one_of(st.none(), st.integers(0, len(SEED_BYTES)))


@settings(**BUDGET)
@given(edits=EDITS, cut=CUTS, syntax=st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
def test_receiver_parse_never_crashes(edits, cut, syntax):
    payload = _mutate(SEED_BYTES, edits, cut)
    with tempfile.TemporaryDirectory() as work:
        result = inspect_file(_spooled(Path(work), payload, syntax), syntax, DX_PRESENTATION,
                              str(SEED.SOPInstanceUID), 10**8)
    assert isinstance(result.status, int) and (result.status == SUCCESS or result.reason)


def _worker_path(data: bytes) -> None:
    try:
        ds = read_dataset(io.BytesIO(data))
        if gate_image(ds).accepted:
            fit_to_square(dataset_to_gray(ds), 64)
    except InvalidInputError:
        pass


@settings(**BUDGET)
@given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, len(SEED_FILE.getvalue()))))
def test_worker_read_and_preprocess_never_crash(edits, cut):
    _worker_path(_mutate(SEED_FILE.getvalue(), edits, cut))


@pytest.mark.parametrize("attribute", ["Rows", "Columns", "BitsAllocated", "BitsStored",
                                       "PixelRepresentation", "SamplesPerPixel", "WindowWidth",
                                       "RescaleSlope", "NumberOfFrames", "HighBit"])
@settings(**{**BUDGET, "max_examples": 40})
@given(value=st.one_of(st.integers(-2**31, 2**31), st.just(0), st.just(65535)))
def test_absurd_pixel_attributes_are_refused_not_crashed(attribute, value):
    ds = radiograph()
    try:
        setattr(ds, attribute, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    except Exception:  # pydicom cannot encode it, so no peer could send it either
        return
    _worker_path(buffer.getvalue())
