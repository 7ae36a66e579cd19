"""Pure ASGI middleware: security headers, the request body limit, the cross-site request check, and the write
marks that keep a person's reads off replicas that lack their writes."""

from __future__ import annotations

import json
import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",  # blob: the composer's preview of a file being attached
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
log = logging.getLogger(__name__)
_APP_ENDPOINTS = frozenset({"/oauth/token", "/oauth/revoke"})


def cookieless(path: str) -> bool:
    """Whether ``path`` never acts on a cookie: the JSON API (bearer tokens), the OAuth endpoints apps call with
    their own credentials, and the documents apps read first. A foreign page cannot forge a request to them, so they
    take cross-site requests, answer CORS, and report errors as JSON."""
    return path.startswith(("/api/", "/.well-known/", "/nodeinfo/")) or path in _APP_ENDPOINTS


SECURITY_HEADERS = [
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in (
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
        ("Cache-Control", "no-store"),
    )
]
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


class SecurityHeaders:
    """Adds the headers every response needs, each unless the response has it already; pages are ``no-store``
    unless a route said otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = [*SECURITY_HEADERS, HSTS] if scope.get("scheme") == "https" else SECURITY_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message["headers"] = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in wanted if pair[0] not in present)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def send_plain(
    send: Send, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole response from middleware, below the framework's response classes."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _reject(scope: Scope, send: Send, status: int, message: str) -> None:
    """A minimal error response from middleware: JSON for the API, a short text page otherwise."""
    if cookieless(scope["path"]):
        await send_plain(send, status, json.dumps({"error": message}).encode(), b"application/json")
    else:
        await send_plain(send, status, f"{status} {message}\n".encode(), b"text/plain; charset=utf-8")


class BodyTooLarge(Exception):
    pass


UPLOAD_PATHS = frozenset({"/media", "/api/v1/media", "/api/v2/media"})  # where an image may be posted


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413 (``upload_limit`` on the upload paths, with ``POST``),
    by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int = 0) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = max(limit, upload_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS:
            limit = self.upload_limit
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _reject(scope, send, 413, "Request body is too large")
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reject(scope, send, 413, "Request body is too large")


class CrossSiteGuard:
    """Refuses state-changing browser requests that come from another site (Sec-Fetch-Site / Origin).

    The API and the OAuth token endpoints are exempt (:func:`cookieless`): they never act on a cookie, so they cannot
    be forged this way. The CSRF token in each form (``feed.web.forms``) is the second, independent check.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and not cookieless(scope["path"]):
            headers = Headers(scope=scope)
            site = headers.get("sec-fetch-site")
            origin = headers.get("origin")
            if site is not None and site not in ("same-origin", "none"):
                await _reject(scope, send, 403, "Cross-site request refused")
                return
            if origin is not None and origin != own_origin(scope, headers):
                await _reject(scope, send, 403, "Cross-origin request refused")
                return
        await self.app(scope, receive, send)


def own_origin(scope: Scope, headers: Headers) -> str:
    scheme = scope.get("scheme", "http")
    host = headers.get("host")
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"


DIRECT_SEND = "cipherfeed.send"


class DirectSend:
    """Puts the server's own ``send`` in the scope (under :data:`DIRECT_SEND`) for one kind of message: the body
    chunks of a live stream whose response start went the usual way. Every layer between only looks at a response's
    start (its status, its headers) and passes body chunks through, and a broadcast is one chunk to each of a thousand
    streams back to back: each skipped layer is a call less per stream (``feed.web.sse``). Outermost of ours."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[DIRECT_SEND] = send
        await self.app(scope, receive, send)


class ReadYourWrites:
    """After a request that may have written (not GET or HEAD) by a signed-in person or with their token, and before
    its answer goes out, tells the replicas (``feed.replicas``) that this person's next reads need what the primary
    holds now. In the app only when it has replicas."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return

        async def marking_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                state = scope.get("state") or {}
                grant = state.get("grant")
                who = state.get("viewer") or (grant.user if grant is not None else None)
                if who is not None:
                    try:
                        await scope["app"].state.services.db.replicas.wrote(who.id)
                    except Exception as exc:  # the primary went away after the write: nothing to wait for there
                        log.debug("write not noted for the replicas (%s)", type(exc).__name__)
            await send(message)

        await self.app(scope, receive, marking_send)


class ApiTrailingSlash:
    """``/api/v1/instance/`` is ``/api/v1/instance``: Mastodon accepts a trailing slash on API and OAuth paths, and
    widely used clients ask with one (a library for the instance, a command-line client for ``/oauth/authorize/``).
    Rewritten before routing (no redirect: a redirect of a POST loses its body in some clients)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path.startswith(("/api/", "/oauth/")) and path.endswith("/") and len(path) > len("/api/"):
                scope = dict(scope, path=path.rstrip("/") or "/")
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
