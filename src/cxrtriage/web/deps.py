"""What routes are given (FastAPI dependencies): the database session of the request, the
settings, and the dispatcher through which the review app queues work for the workers (Celery is
imported only then: an app that never queues neither connects to the broker nor loads it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy.orm import Session

from cxrtriage.config import Settings

if TYPE_CHECKING:
    from cxrtriage.worker.dispatch import Dispatcher

_dispatcher_lock = threading.Lock()


def get_session(request: Request) -> Iterator[Session]:
    """A unit of work per request. Views that write commit before answering, because the
    dependency's own commit may come after the response has gone out."""
    with request.app.state.db.session() as session:
        yield session


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_dispatcher(request: Request) -> Dispatcher:
    """The app's dispatcher: the one it was made with, or one made from its settings when it is
    first needed (so an app that never queues never connects to the broker)."""
    state = request.app.state
    with _dispatcher_lock:
        if state.dispatcher is None:
            from cxrtriage.worker.dispatch import Dispatcher

            state.dispatcher = Dispatcher.for_settings(state.settings)
        dispatcher: Dispatcher = state.dispatcher
        return dispatcher
