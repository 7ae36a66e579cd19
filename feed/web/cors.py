"""CORS for the JSON API and the OAuth endpoints apps call, so browser-based Mastodon clients on other origins can
use them.

Safe to open to every origin: those paths never act on a cookie (``feed.web.middleware.cookieless``), so a foreign
page cannot act with a visitor's session. Pages and forms get no CORS headers at all.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feed.web.middleware import cookieless

_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
_HEADERS = b"Authorization, Content-Type, Idempotency-Key"


class ApiCors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not cookieless(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", b"*"),
                        (b"access-control-allow-methods", _METHODS),
                        (b"access-control-allow-headers", _HEADERS),
                        (b"access-control-max-age", b"86400"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = "*"
                out["Access-Control-Expose-Headers"] = "Link"
            await send(message)

        await self.app(scope, receive, send_with_cors)
