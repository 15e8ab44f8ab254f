"""The request body limit, as pure ASGI middleware around everything that reads a body.

`Content-Length` alone is not a limit: a chunked request has none, and nothing but the bytes
themselves says how long it is. So `BodyLimit` refuses a declared length over the limit before a
byte is read, then counts the bytes as they arrive, chunked or not, in the `receive` it hands on:
once the count passes the limit, that `receive` raises `BodyTooLarge` (413) instead of returning
more. The answer asks to close the connection, so the server reads none of the rest.

Authentication runs inside it (web/auth.py's gate) and reads no body at all; FastAPI's JSON and
form parsing, the multipart parser of "try an image" and the CSRF check read through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

DRAIN_BYTES = 64 * 1024  # a refused request's body is read and dropped up to this ...
DRAIN_SECONDS = 2.0  # ... for at most this long; beyond either, the connection is closed


class BodyTooLarge(HTTPException):
    """The body passed its limit (413). An HTTPException, so that FastAPI, which turns other
    errors met while reading a body into 400, hands it on unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (limit {limit} bytes)",
                         headers={"Connection": "close"})


def declared_length(scope: Scope) -> int | None:
    """The Content-Length header: None when absent, -1 when it is not one decimal number."""
    values = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
    if not values:
        return None
    if len(set(values)) != 1 or not values[0].strip().isdigit():
        return -1
    return int(values[0])


def has_body(scope: Scope) -> bool:
    """Whether the request says a body follows (a length over 0, or any transfer coding)."""
    headers = Headers(scope=scope)
    return "transfer-encoding" in headers or (declared_length(scope) or 0) != 0


async def drain(scope: Scope, receive: Receive) -> bool:
    """Read and drop the body of a request that is refused before its route, if it is small and
    quick: then the connection can be kept, and a browser shows our answer rather than a reset.
    False: it was not (or the client waits for 100 Continue), so the answer must close."""
    if not has_body(scope):
        return True
    if Headers(scope=scope).get("expect", "").lower() == "100-continue":
        return False
    read = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return False
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
                if read > DRAIN_BYTES:
                    return False
        except BodyTooLarge:
            return False
    return False


class BodyLimit:
    """413 for a body longer than `limit_for(path)` bytes, counted as it arrives."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = declared_length(scope)
        if declared is not None and not 0 <= declared <= limit:
            await _too_large(limit, scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            if received > limit:  # asked again after the refusal: still no more bytes
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    logger.info("request body over its limit", extra={"limit": limit, "path": scope["path"]})
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:  # reached us unanswered (the app's exception handlers answer it first)
            if started:
                raise
            await _too_large(limit, scope, receive, send)


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"detail": f"request body too large (limit {limit} bytes)"}, status_code=413,
                            headers={"Connection": "close"})
    await response(scope, receive, send)
