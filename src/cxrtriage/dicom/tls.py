"""TLS contexts for DICOM over TLS (PS3.15 B.1): both sides present certificates from one CA."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(certificate: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The receiver's context: clients must present a certificate signed by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(certificate), str(key))
    return context


def client_context(certificate: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The sender's context: the destination's certificate must be signed by `ca` and name it."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate), str(key))
    return context
