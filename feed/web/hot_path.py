"""The hot path: a viewer's home page, and their app's home timeline, served from their sealed blob (in this process
or in Redis: ``feed.web.page_blobs``) before the rest of the middleware and the router.

Those two reads are most of a timeline server's traffic, and a blob makes each a session lookup, one decryption and
its holes: the layers between, each a call and a wrapped ``send``, would cost more than the page. So this layer,
inside the request metrics only, answers a ``GET /`` or ``GET /api/v1/timelines/home`` without a query or a body
when the blob is there and good, with the very headers the layers below would add (the security headers; CORS for
the API). Anything else (no session, a bad token, no blob or a stale one, an htmx request, an error) goes down the
whole stack as before, which answers it as it always has: nothing was sent by then.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from feed.web import api, pages
from feed.web.middleware import HSTS, SECURITY_HEADERS

log = logging.getLogger(__name__)

_CORS = [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"Link")]


class _Route(NamedTuple):
    """What the request metrics read of a route (``feed.web.metrics``): its template."""

    path_format: str


class _Hot(NamedTuple):
    route: _Route
    content_type: bytes
    answer: Callable[[Request], Awaitable[Any]]  # the body, or (body, Link header), or None
    extra: list[tuple[bytes, bytes]]  # headers of the path, beside the security headers


_HOT = {
    "/": _Hot(_Route("/"), b"text/html; charset=utf-8", pages.home_from_blob, []),
    "/api/v1/timelines/home": _Hot(
        _Route("/api/v1/timelines/home"), b"application/json", api.home_timeline_from_blob, _CORS
    ),
}


class BlobPages:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = _HOT.get(scope["path"]) if scope["type"] == "http" else None
        if hot is None or scope["method"] != "GET" or scope["query_string"] or _has_body(scope):
            await self.app(scope, receive, send)
            return
        try:
            found = await hot.answer(Request(scope, receive))
        except Exception as exc:  # a bad token, an outage...: the whole stack answers it as it always does
            log.debug("hot path declined (%s)", type(exc).__name__)
            found = None
        if found is None:
            await self.app(scope, receive, send)
            return
        body, links = found if isinstance(found, tuple) else (found, b"")
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", hot.content_type)]
        if links:
            headers.append((b"link", links))
        headers += hot.extra
        headers += SECURITY_HEADERS
        if scope.get("scheme") == "https":
            headers.append(HSTS)
        scope["route"] = hot.route
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _has_body(scope: Scope) -> bool:
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])
