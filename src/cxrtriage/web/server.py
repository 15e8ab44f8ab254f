"""`cxrtriage web`: the review app under uvicorn, logging through the project's JSON logging.

With CXRTRIAGE_WEB_TLS_CERTIFICATE and _KEY, uvicorn serves HTTPS itself; otherwise it serves
plain HTTP, which production allows only on loopback or behind a TLS proxy that is the only way
in (CXRTRIAGE_WEB_TLS_PROXY, checked when the settings load)."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from cxrtriage.config import Settings

logger = logging.getLogger(__name__)


class _PlainUvicorn(logging.Filter):
    """uvicorn adds an ANSI-coloured copy of each message; JSON logs want the plain one only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's keyword arguments for these settings (also used by the tests and the benchmark)."""
    options: dict[str, Any] = {
        "host": settings.web_host, "port": settings.web_port, "log_config": None, "proxy_headers": True,
        "forwarded_allow_ips": settings.web_forwarded_allow_ips, "server_header": False, "access_log": True,
    }
    if settings.web_tls_certificate and settings.web_tls_key:
        options.update(ssl_certfile=str(settings.web_tls_certificate), ssl_keyfile=str(settings.web_tls_key))
    return options


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 256 * 1024


def return_freed_images() -> None:
    """glibc raises its mmap threshold each time a large block is freed; blocks of that size then
    come from the heap of the thread that asked, and stay there when freed. The review app
    decodes images of tens of MB in whichever thread-pool thread serves the request, so without
    a fixed threshold each thread's heap keeps the largest image it ever held (measured: +150 MB
    after five 3000 x 2500 previews; none with it). Elsewhere than glibc, nothing to do."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        logger.info("mallopt unavailable: freed image buffers may stay in the heap")


def serve(settings: Settings) -> None:
    import uvicorn

    from cxrtriage.db.session import upgrade
    from cxrtriage.web.app import create_app

    upgrade(settings.database_url)
    return_freed_images()
    app = create_app(settings)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_PlainUvicorn())
    options = uvicorn_options(settings)
    logger.info("review app listening", extra={"host": settings.web_host, "port": settings.web_port,
                                               "tls": "ssl_certfile" in options})
    uvicorn.run(app, **options)
