"""The codestream header check accepts what other software wrote: every compressed file shipped
with pydicom, and dcmtk's and GDCM's conversions of a radiograph, whose first frame pydicom
decodes, passes; the corpus's damaged JPEG-LS file (its header zeroed) does not."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from cxrtriage.dicom.codestream import check_codestream
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError
from tests.third_party import PYDICOM_FILES, SAMPLE, damaged_files, dcmtk_files, gdcm_files


def _read(path: Path) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # not DICOM: the wheel ships other test data too
            return None
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds or syntax is None or not syntax.is_compressed:
        return None
    return ds


def _decodes(ds: Dataset) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixel_array(ds, index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None)
            return True
        except Exception:
            return False


def _check(ds: Dataset) -> None:
    check_codestream(str(ds.file_meta.TransferSyntaxUID), ds.PixelData, int(ds.Rows), int(ds.Columns),
                     int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated))


def _decodable(paths: list[Path]) -> list[Dataset]:
    found = [ds for path in paths if (ds := _read(path)) is not None]
    return [ds for ds in found if _decodes(ds)]


def test_every_compressed_pydicom_test_file_that_decodes_passes() -> None:
    files = _decodable(sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file()))
    assert len(files) >= 30, "pydicom's bundled files changed"
    for ds in files:
        _check(ds)  # raises, naming the header field, on a refusal


@pytest.fixture(scope="module")
def conversions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("conversions")
    gray = out / "gray.dcm"
    entries = dcmtk_files(out)  # writes gray.dcm (the sample) as their source
    assert gray.is_file() and SAMPLE.is_file()
    return [e.path for e in entries + gdcm_files(out, gray)]


def test_dcmtk_and_gdcm_conversions_pass(conversions: list[Path]) -> None:
    files = _decodable(conversions)
    syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in files}
    assert len(syntaxes) >= 6, syntaxes  # JPEG (3 processes), JPEG-LS (2), RLE, JPEG 2000 (2)
    for ds in files:
        _check(ds)


def test_the_damaged_corpus_file_is_refused(conversions: list[Path]) -> None:
    source = next(p for p in conversions if p.name == "dcmtk-dcmcjpls-lossless.dcm")
    [damaged] = damaged_files(source.parent, source)
    ds = _read(damaged.path)
    assert ds is not None
    with pytest.raises(InvalidInputError) as caught:
        _check(ds)
    assert caught.value.reason == Reason.UNDECODABLE_PIXELS
