"""Hostile pixel data, made by the tests: codestreams whose header disagrees with the data set,
32-bit RGB giants (header only), absurd frame counts, and an honest-looking file that needs more
memory than a decoder child is given. Builders return pydicom datasets; nothing here decodes."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from cxrtriage.dicom.wrap import wrap_image
from tests.factory import SENTINELS


def gradient(rows: int = 48, cols: int = 64, bits: int = 12) -> np.ndarray:
    """A non-square picture (rows and columns swapped would show) with every bit in use."""
    top = 2**bits - 1
    ramp = np.add.outer(np.arange(rows) * 7, np.arange(cols) * 13) % (top + 1)
    return ramp.astype(np.uint16 if bits > 8 else np.uint8)


def radiograph(pixels: np.ndarray, bits: int | None = None) -> Dataset:
    return wrap_image(pixels, bits_stored=bits, **SENTINELS)


def encoded(syntax: str, rows: int = 48, cols: int = 64, bits: int = 12) -> Dataset:
    """An honest image in `syntax`, encoded by pydicom's encoders (Pillow for JPEG baseline)."""
    if syntax == JPEGBaseline8Bit:
        pixels = gradient(rows, cols, 8)
        ds = radiograph(pixels)
        buffer = BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        return ds
    ds = radiograph(gradient(rows, cols, bits), bits)
    ds.compress(syntax)
    return ds


def first_fragment(ds: Dataset) -> bytes:
    return next(generate_fragments(ds.PixelData[8 + struct.unpack("<I", ds.PixelData[4:8])[0]:]))


def with_fragment(ds: Dataset, fragment: bytes) -> Dataset:
    ds.PixelData = encapsulate([fragment])
    return ds


def lying_j2k(rows: int = 64, cols: int = 64, claimed: tuple[int, int] = (60000, 60000)) -> Dataset:
    """JPEG 2000 whose SIZ claims `claimed` (rows, columns) under honest Rows and Columns."""
    ds = encoded(JPEG2000Lossless, rows, cols)
    fragment = bytearray(first_fragment(ds))
    fragment[8:16] = struct.pack(">II", claimed[1], claimed[0])  # Xsiz, Ysiz (offsets are 0)
    return with_fragment(ds, bytes(fragment))


def lying_jpeg(syntax: str = JPEGLSLossless, claimed: tuple[int, int] = (30000, 30000)) -> Dataset:
    """JPEG or JPEG-LS whose SOF claims `claimed` (rows, columns)."""
    ds = encoded(syntax)
    fragment = bytearray(first_fragment(ds))
    sof = next(i for i in range(2, len(fragment) - 1)
               if fragment[i] == 0xFF and fragment[i + 1] in (0xC0, 0xC1, 0xC3, 0xF7))
    fragment[sof + 5:sof + 9] = struct.pack(">HH", *claimed)
    return with_fragment(ds, bytes(fragment))


def rgb32_giant(rows: int = 16383, cols: int = 16383) -> Dataset:
    """16383 x 16383 RGB at 32 bits a sample (3.2 GB decoded), sent as a few bytes."""
    ds = radiograph(np.zeros((1, 1), np.uint8))
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = rows, cols, 3, 0
    ds.PhotometricInterpretation = "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PresentationLUTShape
    ds.PixelData = bytes(16)
    return ds


def many_frames(frames: int = 2**31 - 1) -> Dataset:
    """A small frame repeated `frames` times, by its header: NumberOfFrames alone multiplies."""
    ds = encoded(RLELossless)
    ds.NumberOfFrames = frames
    return ds


def memory_hog(path: Path, side: int = 8192) -> Path:
    """An honest RLE image of side x side at 16 bits (zeros: about 2 MB stored) that decodes to
    side^2 x 2 bytes, and to twice that again as float32: more than a small child may use."""
    ds = wrap_image(np.zeros((side, side), np.uint16), bits_stored=12, **SENTINELS)
    ds.compress(RLELossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)
    return path


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
