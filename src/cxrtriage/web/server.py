"""`cxrtriage web`: the review app under uvicorn, logging through the project's JSON logging."""

from __future__ import annotations

import logging

from cxrtriage.config import Settings

logger = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    import uvicorn

    from cxrtriage.db.session import upgrade
    from cxrtriage.web.app import create_app

    upgrade(settings.database_url)
    app = create_app(settings)
    logger.info("review app listening", extra={"host": settings.web_host, "port": settings.web_port})
    uvicorn.run(app, host=settings.web_host, port=settings.web_port, log_config=None,
                proxy_headers=True, forwarded_allow_ips=settings.web_forwarded_allow_ips,
                server_header=False, access_log=True)
