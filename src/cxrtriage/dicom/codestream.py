"""The codestream's own header, read from the first fragment and compared with the data set's
pixel attributes before any decoder runs.

A decoder sizes its output from the codestream, not from Rows and Columns: a JPEG 2000 SIZ that
claims 60000 x 60000 under Rows = Columns = 64 makes OpenJPEG allocate gigabytes. So the header
of the first frame must describe the image the data set declares:

- JPEG (ISO 10918-1) and JPEG-LS (ISO 14495-1): the SOF segment's height, width, component count
  and sample precision. A height of 0 is allowed (the height then comes in a DNL segment).
- JPEG 2000 and HTJ2K (ISO 15444-1/-15): the SIZ segment's image size (Xsiz - XOsiz,
  Ysiz - YOsiz), component count (Csiz) and precision (Ssiz), in a bare codestream or inside a
  JP2 file's codestream box.
- RLE (PS3.5 Annex G): the segment count of the 64-byte header, and its offsets.

Precision is compared with BitsAllocated, not BitsStored: real encoders write 12-bit data as
16-bit JPEG lossless, or 8-bit data in a 16-bit container, and pydicom decodes by the codestream's
precision. What bounds the decoder's memory is that precision never exceeds the allocation.
Only a few kilobytes of the fragment are read: this check runs at C-STORE time too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import (
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError

HEAD_BYTES = 1 << 20  # header segments (APP, ICC profiles, tables) past this: not a real image
_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length field


@dataclass(frozen=True)
class CodestreamHeader:
    rows: int  # 0: not stated (JPEG DNL)
    columns: int
    components: int
    precision: int


def _undecodable(message: str) -> InvalidInputError:
    return InvalidInputError(message, Reason.UNDECODABLE_PIXELS)


def first_fragment_head(pixel_data: bytes | bytearray, limit: int = HEAD_BYTES) -> bytes:
    """Up to `limit` bytes of encapsulated pixel data after the Basic Offset Table: the first
    fragment, continued by the next ones when it is shorter than that."""
    view, offset, head = memoryview(pixel_data), 0, bytearray()
    first = True
    while len(head) < limit and offset + 8 <= len(view):
        tag, length = bytes(view[offset:offset + 4]), struct.unpack("<I", view[offset + 4:offset + 8])[0]
        if tag != _ITEM:
            break  # the sequence delimiter, or damage
        start, offset = offset + 8, offset + 8 + length
        if offset > len(view):
            raise _undecodable("encapsulated pixel data: a fragment runs past the end of the data")
        if not first:
            head += view[start:min(offset, start + limit - len(head))]
        first = False  # the first item is the Basic Offset Table
    if not head:
        raise _undecodable("encapsulated pixel data has no fragment")
    return bytes(head)


def jpeg_header(data: bytes) -> CodestreamHeader:
    """The SOF (or JPEG-LS SOF55) segment of a JPEG or JPEG-LS codestream."""
    if data[:2] != b"\xff\xd8":
        raise _undecodable("JPEG codestream does not start with an SOI marker")
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise _undecodable("JPEG codestream: a marker was expected before the frame header")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in _NO_LENGTH:
            offset += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            break
        length = struct.unpack(">H", data[offset + 2:offset + 4])[0]
        if length < 2:
            raise _undecodable("JPEG codestream: a segment length is invalid")
        if marker in _SOF:
            if length < 8 or offset + 10 > len(data):
                raise _undecodable("JPEG codestream: the frame header is cut short")
            precision = data[offset + 4]
            rows, columns = struct.unpack(">HH", data[offset + 5:offset + 9])
            return CodestreamHeader(rows, columns, data[offset + 9], precision)
        offset += 2 + length
    raise _undecodable("JPEG codestream has no frame header in its first fragment")


def _jp2_codestream(data: bytes) -> bytes:
    """The contiguous codestream box of a JP2 file (some encoders put one in DICOM)."""
    offset = 0
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        header = 8
        if length == 1 and offset + 16 <= len(data):  # 64-bit box length
            length, header = struct.unpack(">Q", data[offset + 8:offset + 16])[0], 16
        if kind == b"jp2c":
            return data[offset + header:]
        if length < header:
            break  # 0: the box runs to the end; anything shorter than its header: damage
        offset += length
    raise _undecodable("JP2 file in pixel data has no codestream box")


def j2k_header(data: bytes) -> CodestreamHeader:
    """The SIZ segment of a JPEG 2000 or HTJ2K codestream."""
    if data[4:8] == b"jP  ":
        data = _jp2_codestream(data)
    if data[:4] != b"\xff\x4f\xff\x51":
        raise _undecodable("JPEG 2000 codestream does not start with SOC and SIZ markers")
    if len(data) < 4 + 38:
        raise _undecodable("JPEG 2000 codestream: the image and tile size segment is cut short")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
    components = struct.unpack(">H", data[40:42])[0]
    ssiz = data[42:42 + 3 * components:3]
    if components < 1 or len(ssiz) < components:
        raise _undecodable("JPEG 2000 codestream: the component list is cut short")
    if xosiz >= xsiz or yosiz >= ysiz:
        raise _undecodable("JPEG 2000 codestream: the image offset is outside the image")
    return CodestreamHeader(ysiz - yosiz, xsiz - xosiz, components, max((s & 0x7F) + 1 for s in ssiz))


def rle_segments(data: bytes) -> int:
    """The segment count of an RLE frame header, once its offsets are found to be sane."""
    if len(data) < 64:
        raise _undecodable("RLE frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack("<16I", data[:64])
    if not 1 <= count <= 15:
        raise _undecodable("RLE header: the segment count must be 1 to 15")
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in zip(used, used[1:], strict=False)):
        raise _undecodable("RLE header: segment offsets must start at 64 and increase")
    return int(count)


def check_codestream(transfer_syntax: str, pixel_data: bytes | bytearray, rows: int, columns: int,
                     samples: int, bits_allocated: int) -> None:
    """Refuse encapsulated pixel data whose first frame's header disagrees with the data set's
    pixel attributes. Native syntaxes have no codestream and pass."""
    if transfer_syntax == RLELossless:
        expected = samples * max(bits_allocated // 8, 1)
        if rle_segments(first_fragment_head(pixel_data, 64)) != expected:
            raise _undecodable(f"RLE header: the segment count differs from SamplesPerPixel x "
                               f"BitsAllocated / 8 ({expected})")
        return
    if transfer_syntax in JPEG2000TransferSyntaxes:
        header = j2k_header(first_fragment_head(pixel_data, 4096))
        kind = "JPEG 2000 SIZ"
    elif transfer_syntax in JPEGTransferSyntaxes or transfer_syntax in JPEGLSTransferSyntaxes:
        header = jpeg_header(first_fragment_head(pixel_data))
        kind = "JPEG frame header"
    else:
        return
    if header.rows not in (0, rows) or header.columns != columns:
        raise _undecodable(f"{kind}: the image size differs from Rows and Columns")
    if header.components != samples:
        raise _undecodable(f"{kind}: the component count differs from SamplesPerPixel")
    if not 1 <= header.precision <= bits_allocated:
        raise _undecodable(f"{kind}: the sample precision exceeds BitsAllocated ({bits_allocated})")
