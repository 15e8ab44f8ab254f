"""What the receiver accepts: storage SOP classes and the transfer syntaxes installed decoders read."""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"

# Radiograph classes are classified; CT and MR are accepted only so that a PACS routing rule that
# sends a whole study does not fail: they are stored and recorded as skipped, with the reason.
RADIOGRAPH_SOP_CLASSES = {CR: "CR", DX_PRESENTATION: "DX (for presentation)",
                          DX_PROCESSING: "DX (for processing)", SECONDARY_CAPTURE: "Secondary Capture"}
ACCEPTED_SOP_CLASSES = {**RADIOGRAPH_SOP_CLASSES, CT: "CT", MR: "MR"}

# Order is preference: when a sender proposes several syntaxes in one presentation context, the
# first of ours that it proposed wins (pynetdicom negotiates in the acceptor's order). Compressed
# syntaxes come first, so a file arrives as the sender holds it instead of being decompressed
# (or, worse, recompressed) on the way; lossless before lossy, so that a sender able to send either
# keeps the exact pixels.
# High-Throughput JPEG 2000 (DICOM 2023, newer modalities) decodes with pylibjpeg-openjpeg.
LOSSLESS_COMPRESSED = [JPEGLSLossless, JPEGLosslessSV1, JPEGLossless, HTJ2KLossless, HTJ2KLosslessRPCL,
                       JPEG2000Lossless, RLELossless]
LOSSY_COMPRESSED = [JPEGLSNearLossless, HTJ2K, JPEG2000, JPEGExtended12Bit, JPEGBaseline8Bit]
COMPRESSED = LOSSLESS_COMPRESSED + LOSSY_COMPRESSED
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                ExplicitVRBigEndian]
ACCEPTED_TRANSFER_SYNTAXES = COMPRESSED + UNCOMPRESSED
