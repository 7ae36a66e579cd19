"""The stack's ceiling: a bare Starlette route that answers with the bytes of the real page.

Served by uvicorn with the same settings as cipherfeed (``bench.peers:asgi_factory --factory``); the harness
fetches the real page once and passes the file holding it in ``BENCH_PAGE_FILE``.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


def asgi_factory() -> Starlette:
    body = Path(os.environ["BENCH_PAGE_FILE"]).read_bytes()
    media_type = os.environ.get("BENCH_PAGE_TYPE", "text/html; charset=utf-8")

    async def page(request: Request) -> Response:
        return Response(body, media_type=media_type)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", page), Route("/healthz", healthz)])
