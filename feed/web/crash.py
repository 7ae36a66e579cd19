"""The last line of defence: an unexpected exception becomes a plain 500, and its log entry has no data in it.

Exception messages can carry whatever the failing code held (a post's text in a ``KeyError``, say), so the log
gets the exception type and the stack of code locations, never ``str(exc)``. Catching here, inside Starlette's
own error middleware, also stops the exception from reaching the server's logger with its message.

A database that does not answer is not a bug: such a request gets a 503 with ``Retry-After`` (a short page, or
``{"error": ...}`` on the API), and the outage is logged once (``feed.db.Outage``), not once per request.
"""

from __future__ import annotations

import json
import logging
import traceback

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feed import db
from feed.web.middleware import send_plain

log = logging.getLogger("feed.crash")

_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>500 · cipherfeed</title>"
    '<link rel="stylesheet" href="/static/css/app.css"><main class="container"><section class="empty-state">'
    "<h1>Server error</h1><p>Something went wrong on our side; please try again.</p>"
    '<p><a href="/">Back to your timeline</a></p></section></main>'
)
RETRY_AFTER = 5  # seconds a client is asked to wait while the database is away
_UNAVAILABLE_HEAD = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>503 · cipherfeed</title>{refresh}"
    '<link rel="stylesheet" href="/static/css/app.css"><main class="container"><section class="empty-state">'
    "<h1>Back in a moment</h1><p>cipherfeed cannot reach its database right now. {what}</p></section></main>"
)
# A page asked for again by itself; a form sent is not sent again by a refresh (that would be a GET of its address):
# it says so, and going back keeps the form, with its draft's idempotency key, to send again.
_UNAVAILABLE_READ = _UNAVAILABLE_HEAD.format(
    refresh=f'<meta http-equiv="refresh" content="{RETRY_AFTER}">',
    what="This page tries again by itself in a few seconds.",
)
_UNAVAILABLE_WRITE = _UNAVAILABLE_HEAD.format(
    refresh="", what="What you sent may not have been done: go back and send it again in a few seconds."
)


def describe(exc: BaseException) -> str:
    """Type names and code locations of ``exc`` and its causes, without any message."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        parts.append(f"{type(current).__module__}.{type(current).__qualname__} (message withheld)\n{frames}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


class CatchAll:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client went away mid-request: nobody to answer, nothing to log
        except Exception as exc:
            if db.unreachable(exc):
                await self._unavailable(scope, send, exc, started)
                return
            log.error("unhandled error on %s %s: %s", scope["method"], scope["path"], describe(exc))
            if started:
                return
            if scope["path"].startswith("/api/"):
                body = json.dumps({"error": "Something went wrong on our side; please try again"}).encode()
                await send_plain(send, 500, body, b"application/json")
            else:
                await send_plain(send, 500, _PAGE.encode(), b"text/html; charset=utf-8")

    async def _unavailable(self, scope: Scope, send: Send, exc: BaseException, started: bool) -> None:
        runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
        if runtime is not None:
            runtime.outage.down(exc)
        if started:
            return
        headers = [(b"retry-after", str(RETRY_AFTER).encode())]
        if scope["path"].startswith("/api/"):
            body = json.dumps({"error": "The database is unavailable; try again in a few seconds"}).encode()
            await send_plain(send, 503, body, b"application/json", headers)
        else:
            page = _UNAVAILABLE_READ if scope["method"] in ("GET", "HEAD") else _UNAVAILABLE_WRITE
            await send_plain(send, 503, page.encode(), b"text/html; charset=utf-8", headers)
