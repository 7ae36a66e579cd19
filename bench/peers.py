"""The stack's ceilings, served by uvicorn with the same settings as cipherfeed:

- ``asgi_factory``: a bare Starlette route that answers with the bytes of the real page (the harness fetches the
  real page once and passes the file holding it in ``BENCH_PAGE_FILE``), and another with those of the API's home
  timeline (``BENCH_API_FILE``).
- ``sse_factory``: a bare Starlette server-sent events broadcaster: ``GET /events`` holds a stream open,
  ``POST /publish`` writes its body to every open stream (the bytes of a real cipherfeed event, in scenario 8).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


def asgi_factory() -> Starlette:
    body = Path(os.environ["BENCH_PAGE_FILE"]).read_bytes()
    media_type = os.environ.get("BENCH_PAGE_TYPE", "text/html; charset=utf-8")

    async def page(request: Request) -> Response:
        return Response(body, media_type=media_type)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    found = [Route("/", page), Route("/healthz", healthz)]
    if api_file := os.environ.get("BENCH_API_FILE"):  # the API's home timeline, at its own path
        statuses = Path(api_file).read_bytes()

        async def api(request: Request) -> Response:
            return Response(statuses, media_type="application/json")

        found.append(Route("/api/v1/timelines/home", api))
    return Starlette(routes=found)


def sse_factory() -> Starlette:
    streams: set[asyncio.Queue[bytes]] = set()

    async def events(request: Request) -> Response:
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def stream() -> AsyncIterator[bytes]:
            streams.add(queue)
            try:
                yield b"retry: 2000\n\n"
                while True:
                    yield await queue.get()
            finally:
                streams.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def publish(request: Request) -> Response:
        body = await request.body()
        for queue in streams:
            queue.put_nowait(body)
        return PlainTextResponse(str(len(streams)))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/events", events), Route("/publish", publish, methods=["POST"]), Route("/healthz", healthz)]
    )
