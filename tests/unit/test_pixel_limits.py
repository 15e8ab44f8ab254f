"""The pixel contract refuses from the header, before any decoder runs: the bytes decoding would
allocate against CXRTRIAGE_MAX_DECODED_BYTES, and the codestream's own header (JPEG SOF, JPEG-LS
SOF55, JPEG 2000 SIZ, RLE segment count) against Rows, Columns, SamplesPerPixel and
BitsAllocated. Refusals name the limit, never the file's values."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from cxrtriage.dicom import codestream
from cxrtriage.dicom.preprocess import MAX_DECODED_BYTES, check_pixel_contract, dataset_to_gray, decoded_bytes
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError, LimitExceededError
from tests.factory import SENTINEL_STRINGS
from tests.hostile_pixels import (
    encoded,
    first_fragment,
    gradient,
    lying_j2k,
    lying_jpeg,
    many_frames,
    radiograph,
    rgb32_giant,
    with_fragment,
)

SYNTAXES = [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGBaseline8Bit]


def _refusal(ds: Dataset, **kwargs: object) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        check_pixel_contract(ds, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert not any(s in message for s in SENTINEL_STRINGS), "a refusal quotes patient data"
    return caught.value


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_honest_encodings_pass(syntax: str) -> None:
    check_pixel_contract(encoded(syntax))


@pytest.mark.parametrize(("make", "expected"), [
    (rgb32_giant, 16383 * 16383 * 3 * 4),  # 3.2 GB: MAX_PIXELS alone let it through
    (lambda: many_frames(2**31 - 1), 48 * 64 * 2 * (2**31 - 1)),
    (lambda: many_frames(100_000), 48 * 64 * 2 * 100_000),
])
def test_decoded_bytes_over_the_limit_are_refused_from_the_header(make, expected) -> None:
    ds = make()
    assert decoded_bytes(ds) == expected
    error = _refusal(ds)
    assert isinstance(error, LimitExceededError)  # the receiver answers 0xC212
    assert "CXRTRIAGE_MAX_DECODED_BYTES" in str(error) and str(MAX_DECODED_BYTES) in str(error)


@pytest.mark.parametrize("bits", [8, 16])
def test_the_decoded_bytes_limit_is_exact(bits: int) -> None:
    ds = radiograph(gradient(48, 64, bits))
    size = 48 * 64 * bits // 8
    check_pixel_contract(ds, max_decoded_bytes=size)  # exactly the limit: decoded
    assert isinstance(_refusal(ds, max_decoded_bytes=size - 1), LimitExceededError)  # one byte more


def test_one_bit_pixels_count_as_the_bytes_they_unpack_to() -> None:
    ds = radiograph(gradient(48, 64, 8))
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    assert decoded_bytes(ds) == 48 * 64


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: lying_j2k(claimed=(60000, 60000)), "JPEG 2000 SIZ: the image size"),
    (lambda: lying_j2k(claimed=(64, 65)), "JPEG 2000 SIZ: the image size"),
    (lambda: lying_jpeg(JPEGLSLossless), "JPEG frame header: the image size"),
    (lambda: lying_jpeg(JPEGBaseline8Bit), "JPEG frame header: the image size"),
])
def test_a_codestream_claiming_another_size_is_refused(make, fragment: str) -> None:
    error = _refusal(make())
    assert error.reason == Reason.UNDECODABLE_PIXELS and fragment in str(error)


# An RLE header states no size (its decoder sizes the frame from Rows and Columns): samples only.
DISAGREEING = [(syntax, attribute, value) for syntax in SYNTAXES
               for attribute, value in (("Rows", 47), ("Columns", 65), ("SamplesPerPixel", 3))
               if syntax != RLELossless or attribute == "SamplesPerPixel"]


@pytest.mark.parametrize(("syntax", "attribute", "value"), DISAGREEING)
def test_rows_columns_or_samples_that_disagree_with_the_codestream_are_refused(syntax, attribute, value):
    ds = encoded(syntax)
    setattr(ds, attribute, value)
    if attribute == "SamplesPerPixel":
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    assert _refusal(ds).reason == Reason.UNDECODABLE_PIXELS


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless])
def test_precision_above_bits_allocated_is_refused(syntax: str) -> None:
    ds = encoded(syntax, bits=12)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # a 12-bit codestream in 8-bit pixels
    assert "precision" in str(_refusal(ds))


def test_precision_below_bits_stored_is_allowed() -> None:
    """12-bit pixels in a 16-bit JPEG lossless stream and the like: pydicom decodes by the
    codestream's precision, and the allocation bounds the memory."""
    ds = encoded(JPEGLSLossless, bits=12)
    ds.BitsStored, ds.HighBit = 14, 13
    check_pixel_contract(ds)


def test_jpeg_height_zero_is_a_dnl_and_allowed() -> None:
    ds = encoded(JPEGLSLossless)
    check_pixel_contract(lying_jpeg_height(ds, 0))


def lying_jpeg_height(ds: Dataset, height: int) -> Dataset:
    fragment = bytearray(first_fragment(ds))
    sof = fragment.index(b"\xff\xf7")
    fragment[sof + 5:sof + 7] = struct.pack(">H", height)
    return with_fragment(ds, bytes(fragment))


def test_jp2_wrapped_codestream_is_read_inside_its_box() -> None:
    ds = encoded(JPEG2000Lossless)
    stream = first_fragment(ds)
    jp2 = (struct.pack(">I4s", 12, b"jP  ") + b"\r\n\x87\n" + struct.pack(">I4s", 20, b"ftyp")
           + b"jp2 \0\0\0\0jp2 " + struct.pack(">I4s", 8 + len(stream), b"jp2c") + stream)
    check_pixel_contract(with_fragment(ds, jp2 + b"\0"))


@pytest.mark.parametrize(("syntax", "damage"), [
    (JPEGLSLossless, lambda f: bytes(64) + f[64:]),  # the header zeroed (the corpus's damaged file)
    (JPEGLSLossless, lambda f: f[:6]),  # cut inside the frame header
    (JPEG2000Lossless, lambda f: f[:20]),  # cut inside SIZ
    (JPEG2000Lossless, lambda f: b"\xff\x4f\xff\x90" + f[4:]),  # SOC, then no SIZ
    (RLELossless, lambda f: f[:40]),  # shorter than its header
    (RLELossless, lambda f: struct.pack("<I", 9) + f[4:]),  # more segments than offsets given
    (RLELossless, lambda f: f[:4] + struct.pack("<I", 12) + f[8:]),  # first segment inside the header
])
def test_damaged_codestream_headers_are_refused_as_undecodable(syntax, damage) -> None:
    ds = encoded(syntax)
    ds = with_fragment(ds, damage(first_fragment(ds)))
    assert _refusal(ds).reason == Reason.UNDECODABLE_PIXELS


def test_rle_segment_count_must_match_samples_and_bytes() -> None:
    ds = encoded(RLELossless, bits=12)  # 16 bits allocated: 2 segments
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    assert "segment count" in str(_refusal(ds))


@pytest.mark.parametrize(("pixel_data", "fragment"), [
    (b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00", "no fragment"),
    (b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\xff\xff\xff\x7f", "runs past the end"),
])
def test_encapsulation_without_a_usable_fragment_is_refused(pixel_data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=fragment):
        codestream.first_fragment_head(pixel_data)


def test_jpeg_header_skips_fill_bytes_and_large_app_segments() -> None:
    sof = b"\xff\xc3\x00\x0b\x0c\x00\x30\x00\x40\x01\x01\x11\x00"
    stream = b"\xff\xd8" + b"\xff\xe2" + struct.pack(">H", 65535) + bytes(65533) + b"\xff\xff" + sof
    assert codestream.jpeg_header(stream) == codestream.CodestreamHeader(48, 64, 1, 12)


@pytest.mark.parametrize("attribute", ["Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
                                       "NumberOfFrames"])
def test_multi_valued_or_text_pixel_attributes_are_refused_not_raised(attribute: str) -> None:
    ds = radiograph(gradient(48, 64, 8))
    setattr(ds, attribute, [48, 64])
    assert isinstance(ds[attribute].value, MultiValue)
    _refusal(ds)


def test_preprocessing_peak_memory_is_a_small_multiple_of_the_frame() -> None:
    """Windowing, rescale and inversion work in float32, in place: no float64 copies."""
    pixels = gradient(1024, 1024, 12)
    ds = radiograph(pixels, 12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.PhotometricInterpretation, ds.PixelPaddingValue = "MONOCHROME1", 0
    frame = pixels.size * 4  # one float32 copy
    tracemalloc.start()
    try:
        gray = dataset_to_gray(ds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gray.dtype == np.float32 and gray.shape == pixels.shape
    assert peak < 2.5 * frame, f"peak {peak / frame:.2f} float32 frames"
