"""A hostile corpus, made by the tests: files and raw protocol bytes that a broken or malicious
peer sends. Nothing here is ever decoded whole by the test process itself."""

from __future__ import annotations

import socket
import struct
import time
import zlib
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from tests.peers import encode_dataset
from tests.servers import LOOPBACK

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def giant_header(rows: int, cols: int, samples: int = 3, bits: int = 32) -> Dataset:
    """The attributes of a huge image, without its pixels."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = DX, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "DX", "HOSTILE1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def _file_meta(ds: Dataset, syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()


def deflate_bomb(path: Path, rows: int = 8192, cols: int = 8192, samples: int = 3, bits: int = 32) -> Dataset:
    """A Deflated Explicit VR Little Endian file whose zero pixels inflate to rows*cols*samples*bits/8
    bytes (8192 x 8192 RGB at 32 bits: 805 MB from about 3.5 MB). Returns its header."""
    ds = giant_header(rows, cols, samples, bits)
    length = rows * cols * samples * bits // 8
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(16 << 20)
    with open(path, "wb") as handle:
        handle.write(_file_meta(ds, DeflatedExplicitVRLittleEndian))
        handle.write(deflater.compress(encode_dataset(ds)))
        handle.write(deflater.compress(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, length)))
        left = length
        while left:
            block = zeros[:min(left, len(zeros))]
            handle.write(deflater.compress(block))
            left -= len(block)
        handle.write(deflater.flush())
    return ds


def oversized_file(path: Path, pixel_bytes: int) -> Dataset:
    """An uncompressed file with `pixel_bytes` of pixels (a 16-bit MONOCHROME2 square-ish image)."""
    cols = 4096 if pixel_bytes <= 2 * 4096 * 65535 else 16384  # Rows is a US: at most 65535
    rows = max(1, pixel_bytes // (2 * cols))
    ds = giant_header(rows, cols, samples=1, bits=16)
    ds.BitsStored, ds.HighBit = 12, 11
    with open(path, "wb") as handle:
        handle.write(_file_meta(ds, ExplicitVRLittleEndian))
        handle.write(encode_dataset(ds))
        handle.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, rows * cols * 2))
        handle.write(bytes(rows * cols * 2))
    return ds


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def connect_from(address: str, port: int) -> socket.socket:
    """A TCP connection to the receiver from another loopback address (127.0.0.x on Linux)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.settimeout(30)
    sock.connect((LOOPBACK, port))
    return sock


def closed_by_peer(sock: socket.socket, within: float) -> float | None:
    """Seconds until the receiver closed (or aborted) `sock`, reading and discarding what it sends;
    None if it was still open after `within` seconds."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < within:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
        if data[:1] == b"\x07":  # A-ABORT: the close follows
            continue
    return None
