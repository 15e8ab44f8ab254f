"""A corpus of the same radiograph in the encodings hospitals send. Each entry says whether the
encoding keeps the picture exactly ("same") or only approximately ("close")."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxrtriage.dicom.contexts import CR, DX_PROCESSING, SECONDARY_CAPTURE
from cxrtriage.dicom.wrap import wrap_image
from tests.servers import binary


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[np.ndarray, Path], Path]
    expect: str  # "same": within 1e-3 of the PNG; "close": within 0.05


def _save(ds: Dataset, path: Path, **kwargs: object) -> Path:
    ds.save_as(path, enforce_file_format=True, **kwargs)
    return path


def _exact_window(ds: Dataset, low: float, high: float) -> Dataset:
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = (low + high) / 2, high - low, "LINEAR_EXACT"
    return ds


def _bits(bits: int) -> Callable[[np.ndarray, Path], Path]:
    def build(px: np.ndarray, path: Path) -> Path:
        shift = bits - 8
        ds = wrap_image((px.astype(np.uint16) << shift).astype(np.uint16), bits_stored=bits)
        return _save(_exact_window(ds, 0, 255 << shift), path)
    return build


def _signed(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image(px.astype(np.uint16))
    ds.PixelRepresentation = 1
    ds.PixelData = (px.astype(np.int16) - 128).tobytes()
    ds.RescaleIntercept = 128
    return _save(_exact_window(ds, 0, 255), path)


def _rescale(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image((px.astype(np.uint16) * 2).astype(np.uint16))
    ds.RescaleSlope = 0.5
    return _save(_exact_window(ds, 0, 255), path)


def _modality_lut(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image((255 - px).astype(np.uint8))
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    item = Dataset()
    item.LUTDescriptor, item.ModalityLUTType = [256, 0, 8], "US"
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData
    ds.ModalityLUTSequence = [item]
    return _save(_exact_window(ds, 0, 255), path)


def _voi_lut(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image((px.astype(np.uint16) << 4).astype(np.uint16), bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [(s >> 4) * 257 for s in range(4096)])  # LUTData
    ds.VOILUTSequence = [item]
    return _save(ds, path)


def _multiple_windows(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image(px)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = [127.5, 40], [255, 30], "LINEAR_EXACT"
    return _save(ds, path)


def _inverse(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image((255 - px).astype(np.uint8))
    ds.PresentationLUTShape = "INVERSE"
    return _save(ds, path)


def _compressed(syntax: str, **kwargs: object) -> Callable[[np.ndarray, Path], Path]:
    def build(px: np.ndarray, path: Path) -> Path:
        ds = wrap_image(px)
        ds.compress(syntax, **kwargs)
        return _save(ds, path)
    return build


def _dcmcjpeg(flag: str) -> Callable[[np.ndarray, Path], Path]:
    def build(px: np.ndarray, path: Path) -> Path:
        source = _save(wrap_image(px), path.with_suffix(".src.dcm"))
        subprocess.run([binary("dcmcjpeg"), flag, str(source), str(path)], check=True, capture_output=True)
        source.unlink()
        return path
    return build


def _syntax(uid: str) -> Callable[[np.ndarray, Path], Path]:
    def build(px: np.ndarray, path: Path) -> Path:
        ds = wrap_image(px)
        ds.file_meta.TransferSyntaxUID = uid
        return _save(ds, path, implicit_vr=uid == ImplicitVRLittleEndian)
    return build


def _no_file_meta(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image(px)
    del ds.file_meta
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    path.write_bytes(buffer.getvalue())
    return path


def _sop(sop_class: str, modality: str, **attrs: object) -> Callable[[np.ndarray, Path], Path]:
    def build(px: np.ndarray, path: Path) -> Path:
        return _save(wrap_image(px, sop_class_uid=sop_class, modality=modality, **attrs), path)
    return build


def _multiframe(px: np.ndarray, path: Path) -> Path:
    ds = wrap_image(px)
    ds.NumberOfFrames = 2
    ds.PixelData = px.tobytes() + (255 - px).tobytes()
    return _save(ds, path)


def _colour(ybr: bool) -> Callable[[np.ndarray, Path], Path]:
    def build(px: np.ndarray, path: Path) -> Path:
        ds = wrap_image(px, sop_class_uid=SECONDARY_CAPTURE, modality="OT")
        rgb = np.repeat(px[..., None], 3, axis=-1).astype(np.uint8)
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        del ds.PresentationLUTShape
        ds.PhotometricInterpretation = "YBR_FULL" if ybr else "RGB"
        ds.PixelData = (convert_color_space(rgb, "RGB", "YBR_FULL") if ybr else rgb).tobytes()
        return _save(ds, path)
    return build


CORPUS = [
    Entry("MONOCHROME2 8-bit", lambda px, p: _save(wrap_image(px), p), "same"),
    Entry("MONOCHROME1 8-bit", lambda px, p: _save(wrap_image(px, monochrome1=True), p), "same"),
    Entry("10 bits stored, window", _bits(10), "same"),
    Entry("12 bits stored, window", _bits(12), "same"),
    Entry("14 bits stored, window", _bits(14), "same"),
    Entry("16 bits stored, no window",
          lambda px, p: _save(wrap_image((px.astype(np.uint16) * 257).astype(np.uint16)), p), "same"),
    Entry("12 bits stored, no window (full stored range)",
          lambda px, p: _save(wrap_image((px.astype(np.uint16) << 4).astype(np.uint16), bits_stored=12), p),
          "close"),
    Entry("signed pixels", _signed, "same"),
    Entry("rescale slope and intercept", _rescale, "same"),
    Entry("modality LUT sequence", _modality_lut, "same"),
    Entry("VOI LUT sequence", _voi_lut, "same"),
    Entry("several windows", _multiple_windows, "same"),
    Entry("PresentationLUTShape INVERSE", _inverse, "same"),
    Entry("PixelPaddingValue", lambda px, p: _save(wrap_image(px, PixelPaddingValue=0), p), "same"),
    Entry("JPEG baseline", _dcmcjpeg("+eb"), "close"),
    Entry("JPEG lossless SV1", _dcmcjpeg("+e1"), "same"),
    Entry("JPEG lossless", _dcmcjpeg("+el"), "same"),
    Entry("JPEG-LS lossless", _compressed(JPEGLSLossless), "same"),
    Entry("JPEG-LS near-lossless", _compressed(JPEGLSNearLossless, jls_error=2), "close"),
    Entry("JPEG 2000 lossless", _compressed(JPEG2000Lossless), "same"),
    Entry("JPEG 2000 lossy", _compressed(JPEG2000, j2k_cr=[15]), "close"),
    Entry("RLE lossless", _compressed(RLELossless), "same"),
    Entry("deflated explicit VR", _syntax(DeflatedExplicitVRLittleEndian), "same"),
    Entry("implicit VR", _syntax(ImplicitVRLittleEndian), "same"),
    Entry("no preamble or file meta", _no_file_meta, "same"),
    Entry("Secondary Capture 8-bit", _sop(SECONDARY_CAPTURE, "OT"), "same"),
    Entry("CR", _sop(CR, "CR"), "same"),
    Entry("DX for processing", _sop(DX_PROCESSING, "DX", PresentationIntentType="FOR PROCESSING"), "same"),
    Entry("multi-frame (first frame)", _multiframe, "same"),
    Entry("RGB", _colour(ybr=False), "same"),
    Entry("YBR_FULL", _colour(ybr=True), "same"),
]
NOT_CLASSIFIED = [("CT image", _sop(CTImageStorage, "CT"))]
