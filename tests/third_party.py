"""A corpus of DICOM files that other software wrote, for the receiver and the pipeline.

Sources:
- the test files shipped inside the pydicom wheel (`pydicom/data/test_files`), each given fresh
  Study, Series and SOP Instance UIDs (several share UIDs across encodings) with its pixel encoding
  kept exactly as written;
- dcmtk conversions: `img2dcm` of a training JPEG, then `dcmdjpeg`, `dcmcjpeg`, `dcmcjpls`, `dcmcrle`;
- GDCM conversions (`gdcmconv`) of the same image;
- anonymised variants of a radiograph, as real research exports are: type 2 attributes left
  out, type 3 attributes dropped, malformed dates, ages and names, and one file with no file meta;
- a JPEG-LS file whose codestream is damaged, which parses but cannot be decoded.
Each entry records how a real sender should send it.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.data
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from cxrtriage.dicom.contexts import ACCEPTED_SOP_CLASSES, ACCEPTED_TRANSFER_SYNTAXES, RADIOGRAPH_SOP_CLASSES
from tests.servers import binary

REPO = Path(__file__).resolve().parents[1]
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
TRAINING_JPEG = next((REPO / "tests/data/kermany-subset").rglob("*.jpeg"))
SAMPLE = REPO / "samples/pneumonia-1.dcm"  # an 8-bit MONOCHROME2 DX radiograph


@dataclass(frozen=True)
class CorpusFile:
    name: str
    source: str  # pydicom, dcmtk, gdcm, anonymised, damaged
    path: Path
    sop_class: str
    transfer_syntax: str  # "" when the file has no file meta
    sender: str = "dcmsend"  # or "storescu" for a bare data set

    @property
    def radiograph(self) -> bool:
        return self.sop_class in RADIOGRAPH_SOP_CLASSES


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _entry(name: str, source: str, path: Path, sender: str = "dcmsend") -> CorpusFile:
    ds = _read(path)
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""
    return CorpusFile(name, source, path, str(ds.SOPClassUID), syntax, sender)


def _fresh_uids(ds: Dataset) -> Dataset:
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def pydicom_files(out: Path) -> list[CorpusFile]:
    """Every shipped file with pixel data in a SOP class and transfer syntax we accept."""
    entries = []
    for path in sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file()):
        try:
            ds = _read(path)
        except Exception:  # not DICOM: the wheel ships other test data too
            continue
        meta = getattr(ds, "file_meta", None)
        if ("PixelData" not in ds or str(ds.get("SOPClassUID", "")) not in ACCEPTED_SOP_CLASSES
                or meta is None or str(meta.get("TransferSyntaxUID", "")) not in ACCEPTED_TRANSFER_SYNTAXES):
            continue
        target = out / f"pydicom-{path.stem}.dcm"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _fresh_uids(ds).save_as(target)  # the original encoding, byte for byte in the pixels
        except (TypeError, ValueError):  # a few deliberately broken files pydicom cannot write back
            target.unlink(missing_ok=True)
            continue
        entries.append(_entry(path.name, "pydicom", target))
    return entries


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=120)


def dcmtk_files(out: Path) -> list[CorpusFile]:
    base = out / "dcmtk-img2dcm.dcm"
    _run(binary("img2dcm"), "-k", "PatientID=SENTINELPID4711", "-k", "PatientName=SENTINELNAME^LEAKCHECK",
         "-k", "Modality=OT", "-k", "BodyPartExamined=CHEST", TRAINING_JPEG, base)
    raw = out / "dcmtk-dcmdjpeg.dcm"
    _run(binary("dcmdjpeg"), base, raw)
    gray = out / "gray.dcm"  # the source of the conversions below, which dcmtk writes
    shutil.copy(SAMPLE, gray)
    conversions: dict[str, tuple[str, ...]] = {
        "dcmcjpeg-sv1": ("dcmcjpeg", "+e1"), "dcmcjpeg-lossless": ("dcmcjpeg", "+el"),
        "dcmcjpeg-baseline": ("dcmcjpeg", "+eb"), "dcmcjpeg-extended": ("dcmcjpeg", "+ee"),
        "dcmcjpls-lossless": ("dcmcjpls", "+el"), "dcmcjpls-near": ("dcmcjpls", "+en"),
        "dcmcrle": ("dcmcrle",),
    }
    entries = [_entry("img2dcm", "dcmtk", base), _entry("dcmdjpeg", "dcmtk", raw)]
    for name, (tool, *options) in conversions.items():
        target = out / f"dcmtk-{name}.dcm"
        _run(binary(tool), *options, gray, target)
        _retag(target)
        entries.append(_entry(name, "dcmtk", target))
    return entries


def _retag(path: Path) -> None:
    """A fresh SOP Instance UID and study for each conversion, changing nothing else, with dcmtk."""
    _run(binary("dcmodify"), "-nb", "-gin", "-gst", "-gse", path)


def gdcm_files(out: Path, source: Path) -> list[CorpusFile]:
    if shutil.which("gdcmconv") is None:
        raise RuntimeError("gdcmconv not found: run `make system-deps` (Debian package libgdcm-tools)")
    entries = []
    for name, options in {"j2k": ("--j2k",), "j2k-lossy": ("--j2k", "--lossy"), "jpegls": ("--jpegls",),
                          "jpeg": ("--jpeg",), "rle": ("--rle",), "raw": ("--raw",)}.items():
        target = out / f"gdcm-{name}.dcm"
        _run("gdcmconv", *options, source, target)
        _retag(target)
        entries.append(_entry(f"gdcmconv {name}", "gdcm", target))
    return entries


TYPE2 = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
TYPE3 = ("ViewPosition", "BodyPartExamined", "PatientAge", "SeriesDescription", "StudyDescription",
         "InstitutionName", "Manufacturer")
VARIANTS: dict[str, Callable[[Dataset], None]] = {
    "no type 2": lambda ds: [delattr(ds, k) for k in TYPE2 if k in ds],  # type: ignore[func-returns-value]
    "no type 3": lambda ds: [delattr(ds, k) for k in TYPE3 if k in ds],  # type: ignore[func-returns-value]
    "empty type 2": lambda ds: [setattr(ds, k, "") for k in TYPE2],  # type: ignore[func-returns-value]
    "malformed": lambda ds: ds.update({"StudyDate": "20231345", "PatientBirthDate": "1.2.1990",
                                       "StudyTime": "256199", "PatientAge": "62",
                                       "PatientName": "SENTINELNAME^" + "X" * 70,
                                       "AccessionNumber": "SENTINELACC42-TOO-LONG"}),
    "latin-1": lambda ds: ds.update({"SpecificCharacterSet": "ISO_IR 100",
                                     "PatientName": "SENTINELNAME^Jörg"}),
}


def anonymised_files(out: Path, source: Path) -> list[CorpusFile]:
    entries = []
    for name, change in VARIANTS.items():
        ds = _fresh_uids(_read(source))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            change(ds)
            target = out / f"anon-{name.replace(' ', '-')}.dcm"
            ds.save_as(target)
        entries.append(_entry(name, "anonymised", target))
    bare = _fresh_uids(_read(source))
    target = out / "anon-no-meta.dcm"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, bare)  # a bare data set: no preamble, no file meta
    target.write_bytes(fp.getvalue())
    entries.append(CorpusFile("no file meta", "anonymised", target, str(bare.SOPClassUID), "", "storescu"))
    return entries


def damaged_files(out: Path, compressed: Path) -> list[CorpusFile]:
    """A dcmtk-compressed file whose codestream was damaged in storage: it parses, and only the
    decoder finds out."""
    data = bytearray(compressed.read_bytes())
    start = data.rindex(b"\xff\xd8")  # the last fragment's start-of-image marker
    data[start:start + 64] = bytes(64)  # the codestream header is gone
    target = out / "damaged-jpegls.dcm"
    target.write_bytes(bytes(data))
    _retag(target)
    return [_entry("damaged JPEG-LS codestream", "damaged", target)]


def build_corpus(out: Path) -> list[CorpusFile]:
    out.mkdir(parents=True, exist_ok=True)
    dcmtk = dcmtk_files(out)
    gray = out / "gray.dcm"
    return (pydicom_files(out) + dcmtk + gdcm_files(out, gray) + anonymised_files(out, gray)
            + damaged_files(out, out / "dcmtk-dcmcjpls-lossless.dcm"))
