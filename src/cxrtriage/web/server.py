"""`cxrtriage web`: the review app under uvicorn, logging through the project's JSON logging."""

from __future__ import annotations

import logging

from cxrtriage.config import Settings

logger = logging.getLogger(__name__)


class _PlainUvicorn(logging.Filter):
    """uvicorn adds an ANSI-coloured copy of each message; JSON logs want the plain one only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def serve(settings: Settings) -> None:
    import uvicorn

    from cxrtriage.db.session import upgrade
    from cxrtriage.web.app import create_app

    upgrade(settings.database_url)
    app = create_app(settings)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_PlainUvicorn())
    logger.info("review app listening", extra={"host": settings.web_host, "port": settings.web_port})
    uvicorn.run(app, host=settings.web_host, port=settings.web_port, log_config=None,
                proxy_headers=True, forwarded_allow_ips=settings.web_forwarded_allow_ips,
                server_header=False, access_log=True)
