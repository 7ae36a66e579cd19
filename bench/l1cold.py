"""cipherfeed with its L1 cache emptied before every request, so each page is served from Redis (scenario 3).

The real app from ``feed.app.create_app``, wrapped: nothing else changes. (``CIPHERFEED_CACHE_L1_BYTES=0`` would
be the natural way, but an L1 of zero bytes refuses every value with ``ValueError: value too large``.)
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from feed.app import create_app
from feed.settings import load_settings


class EmptyL1First:
    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cache = getattr(self.app.state, "cache", None)
        if scope["type"] == "http" and cache is not None and scope["path"] != "/metrics":
            cache.flush()
        await self.app(scope, receive, send)


def asgi_factory() -> EmptyL1First:
    return EmptyL1First(create_app(load_settings()))
