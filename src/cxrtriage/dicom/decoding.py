"""Pixel decoding with the fastest installed decoder that is correct for each transfer syntax.

Measured by `python -m benchmarks.decoders` on 1024 x 1024, 12-bit radiographs: lossless
syntaxes decode identically with every plugin, so the fastest wins; for lossy ones the plugins'
outputs differ by at most the tolerance that benchmark checks. A preferred plugin that is not
installed or fails falls back to pydicom's own choice.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

logger = logging.getLogger(__name__)

PREFERRED_PLUGIN: dict[str, str] = {
    RLELossless: "pylibjpeg",  # ~27x pydicom's own numpy decoder
    JPEGLSLossless: "pyjpegls",  # ~2-3x pylibjpeg-libjpeg
    JPEGLSNearLossless: "pyjpegls",
    JPEGBaseline8Bit: "pillow",  # ~3x pylibjpeg-libjpeg
    JPEGExtended12Bit: "pylibjpeg",  # pillow reads 8-bit JPEG only
    JPEG2000Lossless: "pylibjpeg",  # openjpeg either way; pylibjpeg's binding is a little faster
    JPEG2000: "pylibjpeg",
}


def first_frame(ds: Dataset) -> np.ndarray:
    """The first frame only (a multi-frame image is not decoded whole)."""
    index = 0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    plugin = PREFERRED_PLUGIN.get(syntax, "")
    if plugin and plugin in get_decoder(syntax).available_plugins:
        try:
            return np.asarray(pixel_array(ds, index=index, decoding_plugin=plugin))
        except Exception as exc:  # a decoder that chokes on one file: let pydicom choose
            logger.info("preferred decoder failed; trying the others",
                        extra={"plugin": plugin, "error": type(exc).__name__})
    return np.asarray(pixel_array(ds, index=index))
