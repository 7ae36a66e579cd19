"""Request metrics and ``/metrics``: through the real app, and around small apps for streaming and failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message

from feed.metrics import Registry
from feed.web.metrics import RequestMetrics
from tests.feed.test_metrics import Series, parse, series

pytestmark = pytest.mark.anyio

REQUESTS = "cipherfeed_http_requests_total"
DURATION_COUNT = "cipherfeed_http_request_duration_seconds_count"


async def scrape(client: httpx.AsyncClient) -> dict[Series, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return parse(response.text)


def requests(samples: dict[Series, float], method: str, route: str, status: str, name: str = REQUESTS) -> float:
    return samples.get(series(name, method=method, route=route, status=status), 0)


async def test_metrics_endpoint_serves_the_text_format_and_counts_grow(api: Any) -> None:
    client = await api()
    response = await client.get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    before = await scrape(client)
    for _ in range(3):
        assert (await client.get("/healthz")).status_code == 200
    after = await scrape(client)
    for name in (REQUESTS, DURATION_COUNT):
        assert requests(after, "GET", "/healthz", "200", name) - requests(before, "GET", "/healthz", "200", name) == 3
    # the scrape before counts itself once it is answered
    assert requests(after, "GET", "/metrics", "200") > requests(before, "GET", "/metrics", "200")
    bucket = series(
        "cipherfeed_http_request_duration_seconds_bucket", method="GET", route="/healthz", status="200", le="+Inf"
    )
    assert after[bucket] == requests(after, "GET", "/healthz", "200", DURATION_COUNT)


async def test_requests_are_recorded_by_route_template_never_by_path(make_browser: Any) -> None:
    someuser = await make_browser("someuser")
    assert (await someuser.get("/@someuser")).status_code == 200
    assert (await someuser.get("/posts/123")).status_code == 404
    assert (await someuser.get("/no/such/secretpath")).status_code == 404
    assert (await someuser.get("/static/css/app.css")).status_code == 200
    assert (await someuser.http.get("/api/v1/statuses/123")).status_code in (401, 404)
    text = (await someuser.get("/metrics")).text
    samples = parse(text)
    assert requests(samples, "GET", "/@{username}", "200") >= 1
    assert requests(samples, "GET", "/posts/{post_id}", "404") >= 1
    assert requests(samples, "GET", "unmatched", "404") >= 1
    assert requests(samples, "GET", "/static/{path}", "200") >= 1
    assert requests(samples, "POST", "/register", "303") >= 1
    routes = {dict(labels)["route"] for name, labels in samples if name == REQUESTS}
    assert "/api/v1/statuses/{status_id}" in routes
    for leak in ("someuser", "123", "secretpath", "app.css"):
        assert not any(leak in name or any(leak in value for _, value in labels) for name, labels in samples)
    for leak in ("someuser", "secretpath", "app.css"):  # "123" may well be part of a sample's value
        assert leak not in text


async def test_unknown_methods_are_counted_as_other(api: Any) -> None:
    client = await api()
    assert (await client.request("BREW", "/healthz")).status_code == 405
    samples = await scrape(client)
    assert requests(samples, "other", "/healthz", "405") >= 1
    assert not any(dict(labels).get("method") == "BREW" for _, labels in samples)


def small_app(registry: Registry | None, **routes: Any) -> Starlette:
    return Starlette(
        routes=[Route(path, endpoint) for path, endpoint in routes.values()],
        middleware=[Middleware(RequestMetrics, registry=registry)],
    )


async def test_streaming_responses_still_stream() -> None:
    registry = Registry()
    sent: list[Message] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        # the first chunk has reached the server before the second is made: nothing buffers it
        assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"first"]
        yield b"second"

    async def stream(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/plain")

    app = small_app(registry, stream=("/items/{item_id}/stream", stream))
    disconnected = anyio.Event()

    async def receive() -> Message:
        if not any(m["type"] == "http.response.start" for m in sent):
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/42/stream",
        "raw_path": b"/items/42/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }
    await app(scope, receive, send)
    assert b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body") == b"firstsecond"
    samples = parse(registry.render())
    assert requests(samples, "GET", "/items/{item_id}/stream", "200") == 1


async def test_a_crash_before_the_response_counts_as_500_and_still_raises() -> None:
    registry = Registry()

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app = small_app(registry, broken=("/broken/{thing}", broken))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/broken/x")).status_code == 500
    samples = parse(registry.render())
    assert requests(samples, "GET", "/broken/{thing}", "500") == 1
    assert requests(samples, "GET", "/broken/{thing}", "500", DURATION_COUNT) == 1


async def test_without_a_registry_requests_pass_and_nothing_is_recorded() -> None:
    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    app = small_app(None, hello=("/hello", hello))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        assert (await client.get("/hello")).text == "hello"
        app.state.metrics = Registry()  # looked up per request: one made later is used from then on
        assert (await client.get("/hello")).text == "hello"
    assert requests(parse(app.state.metrics.render()), "GET", "/hello", "200") == 1
