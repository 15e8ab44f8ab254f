"""Security headers on every answer, as pure ASGI middleware (outside the gate and the body
limit, so that their refusals carry them too).

HSTS goes only on answers to requests that came over HTTPS: uvicorn's own TLS, or a trusted
proxy's `X-Forwarded-Proto: https` (uvicorn rewrites the scheme for the addresses in
CXRTRIAGE_WEB_FORWARDED_ALLOW_IPS). Browsers ignore it over plain HTTP, and sending it from a
development server on loopback would pin `localhost` to HTTPS for a year.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; form-action 'self'",
}


class SecurityHeaders:
    """Adds the fixed headers, `Cache-Control: no-store` (pages carry patient data) except on
    static files, and `Strict-Transport-Security` over HTTPS when `hsts_seconds` is not 0."""

    def __init__(self, app: ASGIApp, hsts_seconds: int) -> None:
        self.app = app
        self.hsts = f"max-age={hsts_seconds}" if hsts_seconds else ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
                if https and self.hsts:
                    headers.setdefault("Strict-Transport-Security", self.hsts)
            await send(message)

        await self.app(scope, receive, with_headers)
