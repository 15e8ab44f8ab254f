"""TLS contexts for DICOM over TLS (PS3.15 B.1): both sides present certificates from one CA."""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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


class DeferredHandshake:
    """Moves a TLS server's handshake out of its accept loop. pynetdicom (like socketserver)
    wraps an accepted socket in the accept thread, where a client that connects and sends
    nothing blocks every later connection. Installed on a pynetdicom server, this accepts
    without a handshake, so the peer allow-list check (verify_request) runs first, and then
    handshakes in the connection's own thread, within `timeout` seconds. At most `max_pending`
    handshakes run at once; further connections are closed at once."""

    def __init__(self, context: ssl.SSLContext, timeout: float, max_pending: int) -> None:
        if timeout <= 0 or max_pending < 1:
            raise ValueError(f"timeout must be > 0 and max_pending >= 1, got {timeout}, {max_pending}")
        self.context, self.timeout, self.max_pending = context, timeout, max_pending
        self._pending = 0
        self._lock = threading.Lock()

    def install(self, server: Any) -> None:
        server.get_request = functools.partial(self._accept, server)
        server.finish_request = functools.partial(self._handshake_then_serve, server,
                                                  server.finish_request)

    def _accept(self, server: Any) -> tuple[socket.socket, Any]:
        client, address = server.socket.accept()
        return self.context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def _handshake_then_serve(self, server: Any, serve: Callable[[Any, Any], None], request: Any,
                              client_address: Any) -> None:
        with self._lock:
            crowded = self._pending >= self.max_pending
            if not crowded:
                self._pending += 1
        if crowded:
            logger.warning("connection dropped: too many TLS handshakes in progress",
                           extra={"peer": client_address[0]})
            server.shutdown_request(request)
            return
        try:
            previous = request.gettimeout()
            request.settimeout(self.timeout)
            request.do_handshake()
            request.settimeout(previous)
        except (OSError, ValueError) as exc:
            logger.warning("TLS handshake failed", extra={"peer": client_address[0],
                                                          "error": type(exc).__name__})
            server.shutdown_request(request)
            return
        finally:
            with self._lock:
                self._pending -= 1
        serve(request, client_address)
