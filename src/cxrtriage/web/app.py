"""The review app: worklist, study pages with image and heatmap, feedback, the monitoring
dashboard, "try an image", the audit log, the JSON API and /metrics.

`create_app` only assembles: the settings, the database, the dispatcher (through which work is
queued for the workers), the middleware, the routers (web/routes/) and the error handlers
(web/errors.py). Every router but /healthz, /metrics and the sign-in form is put behind
`require_user`, the one permission dependency; static files are open too. Around the routes,
pure ASGI middleware, outermost first: security headers, the body limit (web/limits.py), the
gate (web/auth.py). Routes that do blocking work (the database, decoding) are plain `def`s,
which FastAPI runs in its thread pool; the `async def` ones hand such work to it.

The review app never runs the model: classifying ("try an image") and writing assessment SRs
are the workers' (worker/trial.py, worker/assessment.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from cxrtriage.config import Settings
from cxrtriage.db.session import Database
from cxrtriage.dicom.sandbox import DecodeLimits
from cxrtriage.web import errors, imaging
from cxrtriage.web.auth import AuthGate, Passwords, require_user
from cxrtriage.web.headers import SecurityHeaders
from cxrtriage.web.limits import BodyLimit
from cxrtriage.web.metrics import registry_for
from cxrtriage.web.pages import HERE, templates
from cxrtriage.web.routes import OPEN, SIGNED_IN
from cxrtriage.web.trials import TrialDesk

if TYPE_CHECKING:  # Celery loads when the app first queues work (web/deps.get_dispatcher)
    from cxrtriage.worker.dispatch import Dispatcher

logger = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 65536  # "try an image": boundaries, part headers and the CSRF field
TRY_PATH = "/try"


def create_app(settings: Settings, db: Database | None = None,
               dispatcher: Dispatcher | None = None) -> FastAPI:
    """The app for `settings`. `dispatcher`: how verdicts and uploads are queued for the workers;
    without one, the app makes one from the settings when it first queues something."""
    app = FastAPI(title="cxr-triage review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.db = db = db or Database(settings.database_url)
    app.state.dispatcher = dispatcher
    app.state.templates = templates()
    app.state.passwords = passwords = Passwords(db, settings)
    app.state.registry = registry_for(db)
    app.state.trials = TrialDesk(settings, db)
    imaging.configure_decoding(settings.decode_processes, DecodeLimits(
        memory_bytes=settings.decode_memory_bytes, timeout_seconds=settings.decode_timeout_seconds,
        max_decoded_bytes=settings.max_decoded_bytes))
    # Uploads for "try an image" stay in memory up to the size limit until the app spools them.
    MultiPartParser.spool_max_size = settings.web_max_upload_bytes

    errors.register(app)
    for router in OPEN:
        app.include_router(router)
    for router in SIGNED_IN:
        app.include_router(router, dependencies=[Depends(require_user)])
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def body_limit(path: str) -> int:
        """ "Try an image" up to its upload limit, every other request up to web_max_body_bytes."""
        if path == TRY_PATH:
            return settings.web_max_upload_bytes + MULTIPART_OVERHEAD
        return settings.web_max_body_bytes

    # add_middleware wraps what is there: the last added is the outermost.
    app.add_middleware(AuthGate, db=db, passwords=passwords)
    app.add_middleware(BodyLimit, limit_for=body_limit)
    app.add_middleware(SecurityHeaders, hsts_seconds=settings.web_hsts_seconds)
    return app
