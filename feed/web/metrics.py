"""Request metrics: a pure ASGI middleware that times each request by method, route template and status, and the
``/metrics`` endpoint that renders the app's registry (``app.state.metrics``, made in the lifespan).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feed.metrics import CONTENT_TYPE, Registry
from feed.storage import outbox

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STARTED = "cipherfeed.started"  # in the scope: when the request came, if a layer before this one saw it first


def _route_template(scope: Scope) -> str:
    """The matched route's path template (``/posts/{post_id}``), never the raw path; ``unmatched`` if none."""
    template = getattr(scope.get("route"), "path_format", None)
    return template if isinstance(template, str) else "unmatched"


class RouteTimings:
    """The request duration and count series of one registry by (method, route template, status): what
    :class:`RequestMetrics` records of each request, and the hot path (``feed.web.hot_path``) of those it answers."""

    def __init__(self) -> None:
        self._bound: tuple[Registry, Any, Any] | None = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # closed sets: methods, routes, statuses

    def _families(self, registry: Registry) -> tuple[Any, Any]:
        if self._bound is None or self._bound[0] is not registry:
            duration = registry.histogram(
                "cipherfeed_http_request_duration_seconds",
                "Time from request to the end of the response, by route template.",
                ("method", "route", "status"),
            )
            requests = registry.counter(
                "cipherfeed_http_requests_total", "HTTP requests answered.", ("method", "route", "status")
            )
            self._bound = (registry, duration, requests)
            self._children.clear()
        return self._bound[1], self._bound[2]

    def observe(self, registry: Registry, scope: Scope, status: str, elapsed: float) -> None:
        """One request of ``scope``, answered with ``status`` in ``elapsed`` seconds. Methods outside ``METHODS``
        count as ``other``."""
        duration, requests = self._families(registry)
        method = scope["method"] if scope["method"] in METHODS else "other"
        labels = (method, _route_template(scope), status)
        found = self._children.get(labels)  # .labels() is too dear per request
        if found is None:
            found = self._children[labels] = (duration.labels(*labels), requests.labels(*labels))
        found[0].observe(elapsed)
        found[1].inc()


class RequestMetrics:
    """Times every HTTP request by method, route template and status (:class:`RouteTimings`).

    Without a ``registry`` argument it is looked up per request in ``app.state.metrics`` (made in the lifespan, after
    the middleware stack is built); if there is none, nothing is recorded. Messages pass through untouched, so
    streaming responses still stream; the duration runs until the app returns, which for a stream is its whole life.
    """

    def __init__(self, app: ASGIApp, registry: Registry | None = None, timings: RouteTimings | None = None) -> None:
        self.app = app
        self.registry = registry
        self.timings = timings or RouteTimings()  # shared with the hot path, if the app has one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = self.registry or getattr(getattr(scope.get("app"), "state", None), "metrics", None)
        if scope["type"] != "http" or not isinstance(registry, Registry):
            await self.app(scope, receive, send)
            return
        status = "500"  # if the app fails before it starts a response

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(int(message["status"]))
            await send(message)

        start = scope.get(STARTED) or time.perf_counter()  # the hot path's, if it tried first
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.timings.observe(registry, scope, status, time.perf_counter() - start)


def outbox_gauges(registry: Registry) -> tuple[Any, Any]:
    """The outbox's depth and age, set when ``/metrics`` is read (one query)."""
    return registry.gauge("cipherfeed_outbox_depth", "Outbox rows not relayed yet"), registry.gauge(
        "cipherfeed_outbox_oldest_seconds", "Age of the oldest outbox row not relayed yet"
    )


async def metrics_endpoint(request: Request) -> Response:
    registry: Registry = request.app.state.metrics
    svc = request.app.state.services
    hub = getattr(request.app.state, "hub", None)
    if hub is not None:
        hub.flush_metrics()  # the live streams' last writes, if the loop has not come round to them yet
    if svc.job_metrics is not None:
        try:
            svc.job_metrics.waiting.set(await svc.queue.depth())
        except (ConnectionError, OSError):
            pass  # Redis is away: the gauge keeps its last value
    depth, age = request.app.state.outbox_gauges
    try:
        async with svc.db() as session:
            rows, oldest = await outbox.depth(session)
    except (OSError, SQLAlchemyError):
        pass  # the database is away: the gauges keep their last values
    else:
        depth.set(rows)
        age.set((datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0)
    return Response(registry.render(), media_type=CONTENT_TYPE)
