"""The decoder child: `python -m cxrtriage.dicom.decode_child MEMORY MAX_DECODED_BYTES`.

Run only by dicom/sandbox.py. It limits its own address space (RLIMIT_AS) before it imports
numpy, pydicom or any decoder, so that whatever a hostile file makes a decoder allocate fails
inside this process; it imports nothing else (torch's CUDA build alone reserves more address
space than the limit). Then it answers requests on stdin, one at a time, for as long as it lives:

    request  = u32 length, JSON {"mode", "path", "sha256", "size"}, then `size` bytes of file
    response = u32 length, JSON {"reason", "message", "shape", "dtype"}, then the pixels

Mode "modality" (the review app's viewer) answers the modality values before VOI
(preprocess.modality_values: uint16 codes or float32) and adds to the JSON "offset", "padded"
(whether any pixel is padding), "display" (dicom/display.py) and "luts" (each VOI LUT's length);
after the pixels come the VOI LUT tables, float32 each.

The parent parses responses as data, never as pickles: a decoder that a file has taken over
must not be able to run code in the worker. Nothing is logged and warnings are off: pydicom's
warnings quote values from the file, which may be patient data.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import struct
import sys
from typing import IO, Any

HEADER = struct.Struct(">I")
MAX_HEADER_BYTES = 1 << 16
# The DICOM grayscale pipeline; a stored RGB heat map as it is; a PNG or JPEG upload as gray;
# the modality values with the display attributes, for a viewer that windows them itself.
MODES = ("gray", "rgb8", "picture", "modality")


def read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the stream ended inside a message")
    return data


def write_message(stream: IO[bytes], header: dict[str, Any], payload: Any = b"", *more: Any) -> None:
    text = json.dumps(header).encode()
    stream.write(HEADER.pack(len(text)) + text)
    for part in (payload, *more):
        if len(part):
            stream.write(part)
    stream.flush()


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold the file's pixels


def _decode(request: dict[str, Any], data: bytes | None, max_decoded_bytes: int) -> tuple[Any, str]:
    """The pixels and their dtype name; raises InvalidInputError with the file's reason."""
    from io import BytesIO

    import numpy as np

    from cxrtriage.dicom.decoding import first_frame
    from cxrtriage.dicom.preprocess import check_pixel_contract, dataset_to_gray
    from cxrtriage.dicom.reading import read_dataset
    from cxrtriage.domain import Reason
    from cxrtriage.errors import InvalidInputError

    if data is None:  # a stored file: read once, hashed, parsed from memory (no second read)
        try:
            with open(str(request["path"]), "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise InvalidInputError("the stored file cannot be read", Reason.UNREADABLE_FILE) from exc
    expected = str(request.get("sha256") or "")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise InvalidInputError("the stored file differs from the one received and indexed",
                                Reason.STORED_FILE_CHANGED)
    if request["mode"] == "picture":
        return _picture_to_gray(data), "float32"
    ds = read_dataset(BytesIO(data))
    del data
    if request["mode"] == "gray":
        return np.ascontiguousarray(dataset_to_gray(ds, max_decoded_bytes), dtype=np.float32), "float32"
    if request["mode"] == "modality":
        return _modality(ds, max_decoded_bytes), "modality"
    check_pixel_contract(ds, max_decoded_bytes)
    try:
        rgb = first_frame(ds)
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise many types
        raise InvalidInputError(f"pixel data cannot be decoded: {type(exc).__name__}",
                                Reason.UNDECODABLE_PIXELS) from exc
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise InvalidInputError(f"expected an 8-bit RGB image, got shape {rgb.shape}")
    return np.ascontiguousarray(rgb), "uint8"


def _modality(ds: Any, max_decoded_bytes: int) -> tuple[Any, dict[str, Any], list[Any]]:
    """The modality values, the header fields of the answer, and the VOI LUT tables."""
    import numpy as np

    from cxrtriage.dicom.display import display_attributes
    from cxrtriage.dicom.preprocess import modality_values

    values, offset, padded = modality_values(ds, max_decoded_bytes)
    display, luts = display_attributes(ds)
    fields = {"offset": offset, "padded": padded, "display": display, "luts": [int(t.size) for t in luts]}
    return np.ascontiguousarray(values), fields, [np.ascontiguousarray(t, dtype=np.float32) for t in luts]


def _warm_up() -> None:
    """Import pydicom and every decoder now, before saying ready: not in a file's time limit."""
    from pydicom.pixels import get_decoder

    from cxrtriage.dicom.decoding import PREFERRED_PLUGIN
    from cxrtriage.dicom.display import display_attributes  # noqa: F401 - imported for its cost
    from cxrtriage.dicom.preprocess import dataset_to_gray  # noqa: F401 - imported for its cost

    for syntax in PREFERRED_PLUGIN:
        _ = get_decoder(syntax).available_plugins


def _picture_to_gray(data: bytes) -> Any:
    """A PNG or JPEG as float32 in [0, 1], as models/model_input.image_file_to_gray reads
    training pictures; Pillow's own decompression-bomb limit applies too."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    from cxrtriage.errors import InvalidInputError

    try:
        with Image.open(BytesIO(data)) as img:
            if img.width * img.height > Image.MAX_IMAGE_PIXELS:  # type: ignore[operator]
                raise InvalidInputError("picture exceeds Pillow's MAX_IMAGE_PIXELS")
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                return np.clip(arr / 65535.0, 0.0, 1.0).astype(np.float32)
            return np.ascontiguousarray(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"not a readable PNG/JPEG image: {type(exc).__name__}") from exc


def serve(stdin: IO[bytes], stdout: IO[bytes], max_decoded_bytes: int) -> None:
    from cxrtriage.domain import Reason
    from cxrtriage.errors import InvalidInputError

    _warm_up()
    write_message(stdout, {"ready": True})
    while True:
        try:
            (length,) = HEADER.unpack(read_exact(stdin, HEADER.size))
        except EOFError:
            return  # the parent closed the pipe or died: nothing more to do
        request = json.loads(read_exact(stdin, min(length, MAX_HEADER_BYTES)))
        size = int(request.get("size") or 0)
        data = read_exact(stdin, size) if size else None
        try:
            pixels, dtype = _decode(request, data, max_decoded_bytes)
        except InvalidInputError as exc:
            write_message(stdout, {"reason": exc.reason.value, "message": str(exc)})
            continue
        except MemoryError:
            write_message(stdout, {"reason": Reason.UNDECODABLE_PIXELS.value,
                                   "message": "decoding exceeded the decoder's memory limit"})
            continue
        except Exception as exc:  # any other failure is the file's, reported by type only
            write_message(stdout, {"reason": Reason.UNDECODABLE_PIXELS.value,
                                   "message": f"pixel data cannot be decoded: {type(exc).__name__}"})
            continue
        if dtype == "modality":
            values, fields, luts = pixels
            write_message(stdout, {"reason": "", "message": "", "shape": list(values.shape),
                                   "dtype": values.dtype.name, **fields},
                          memoryview(values).cast("B"), *(memoryview(t).cast("B") for t in luts))
        else:
            write_message(stdout, {"reason": "", "message": "", "shape": list(pixels.shape), "dtype": dtype},
                          memoryview(pixels).cast("B"))
        del pixels


def main(argv: list[str]) -> None:
    memory, max_decoded_bytes = int(argv[0]), int(argv[1])
    _limit_memory(memory)
    protocol_in = os.fdopen(os.dup(0), "rb")
    protocol_out = os.fdopen(os.dup(1), "wb")
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # a decoder library that prints must not corrupt the protocol
        os.dup2(quiet, fd)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    serve(protocol_in, protocol_out, max_decoded_bytes)


if __name__ == "__main__":
    main(sys.argv[1:])
