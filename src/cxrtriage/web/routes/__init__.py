"""The review app's routes, one router per concern. `OPEN` routers answer anyone; web/app.py
puts every router of `SIGNED_IN` behind `require_user`, the one permission dependency."""

from __future__ import annotations

from fastapi import APIRouter

from cxrtriage.web.routes import audit, dashboard, health, images, session, studies, trials

OPEN: tuple[APIRouter, ...] = (health.router, session.router)
SIGNED_IN: tuple[APIRouter, ...] = (session.signed_in, studies.router, images.router, dashboard.router,
                                    audit.router, trials.router)
