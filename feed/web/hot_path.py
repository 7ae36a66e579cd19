"""The hot path: a viewer's home and public pages, and their app's home and public timelines, served from their
sealed blob (in this process, or in Redis for the home page: ``feed.web.page_blobs``) before the middleware and the
router.

Those reads are most of a timeline server's traffic, and a blob makes each a session lookup, one decryption and its
holes: the layers between, each a call and a wrapped ``send``, would cost more than the page. So the app itself
(``HotApp``), in front of its whole middleware stack, answers a ``GET /``, ``GET /public``,
``GET /api/v1/timelines/home`` or ``GET /api/v1/timelines/public`` without a query or a body when the blob is there
and good, with the very headers the layers would add (the security headers; CORS for the API), timed in the request
metrics as they time the rest.
Anything else (no session, a bad token, no blob or a stale one, an htmx request, an error) goes down the whole stack
as before, which answers it as it always has: nothing was sent by then.

A session cookie or API token found live is remembered with what the server derives from it by keyed hashes (its
record's cache key, its CSRF token), so that a read makes no HMAC. The process holds every active person's key
anyway; these tokens add nothing that its memory did not already give away.

First from this process's memory alone, without awaiting anything (``held``): the session or token, the person, the
unread count and the blob from L1, each as the cache would give it (never a value due for a refresh), the blob's
last check still standing (``page_blobs.held``). Failing that, the same through the cache's ordinary reads, which
go to Redis (``answer``): for the home page, with a session cookie that names its user, the session, the unread
count, the blob and the shown log (``feed.cache.shown``) in one round trip, the blob good as drawn if the log names
nothing on it since it was drawn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request, cookie_parser
from starlette.types import Receive, Scope, Send

from feed.cache import UNREAD, shown
from feed.cache import Request as CacheRequest
from feed.metrics import Registry
from feed.services import accounts, lookup, notifications, oauth
from feed.services.context import Services
from feed.web import api, mastodon, page_blobs, pages
from feed.web.api import DEFAULT_LIMIT
from feed.web.auth import SESSION_COOKIE, csrf_of
from feed.web.metrics import STARTED, RouteTimings
from feed.web.middleware import HSTS, SECURITY_HEADERS
from feed.web.pages import VISIBILITY_COOKIE, audience_of

log = logging.getLogger(__name__)

_CORS = [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"Link")]


class _Route(NamedTuple):
    """What the request metrics read of a route (``feed.web.metrics``): its template."""

    path_format: str


class _Hot(NamedTuple):
    route: _Route
    content_type: bytes
    held: Callable[[Scope, _Headers], Any]  # from this process's memory alone: the body, or (body, Link), or None
    answer: Callable[[Request, _Headers], Awaitable[Any]]  # the same, from Redis too
    extra: list[tuple[bytes, bytes]]  # headers of the path, beside the security headers


class HotApp(Starlette):
    """The app: Starlette, with the hot path in front of its whole middleware stack. A request it answers is timed
    as the request metrics time the rest (``feed.web.metrics``)."""

    def __init__(self, *args: Any, timings: RouteTimings, **kwargs: Any) -> None:
        """``timings``: the request metrics' (one registry holds one of each series)."""
        super().__init__(*args, **kwargs)
        self.timings = timings
        self.tokens = _Tokens()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        hot = _HOT.get(scope["path"]) if scope["type"] == "http" else None
        if (
            hot is None
            or scope["method"] != "GET"
            or scope["query_string"]
            or not await self._answer(hot, scope, receive, send)
        ):
            await self.middleware_stack(scope, receive, send)

    async def _answer(self, hot: _Hot, scope: Scope, receive: Receive, send: Send) -> bool:
        """Whether the blob answered: False if nothing was sent, for the stack to answer."""
        start = scope[STARTED] = time.perf_counter()  # the request metrics time a request it leaves from here
        asked = _Headers(scope)
        if asked.body:
            return False
        found: Any = None
        try:
            found = hot.held(scope, asked)  # from this process's memory alone
            if found is None:
                found = await hot.answer(Request(scope, receive), asked)
        except Exception as exc:  # a bad token, an outage...: the whole stack answers it as it always does
            log.debug("hot path declined (%s)", type(exc).__name__)
            found = None
        if found is None:
            return False
        body, links = found if isinstance(found, tuple) else (found, b"")
        headers: list[tuple[bytes, bytes]] = [(b"content-length", b"%d" % len(body)),
                                              (b"content-type", hot.content_type)]  # fmt: skip
        if links:
            headers.append((b"link", links))
        headers += hot.extra
        headers += SECURITY_HEADERS
        if scope.get("scheme") == "https":
            headers.append(HSTS)
        scope["route"] = hot.route
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            registry = getattr(self.state, "metrics", None)
            if isinstance(registry, Registry):
                self.timings.observe(registry, scope, "200", time.perf_counter() - start)
        return True


class _Headers:
    """The few request headers the hot path reads, in one pass."""

    def __init__(self, scope: Scope) -> None:
        self.cookie = self.authorization = b""
        self.body = self.htmx = False
        self._cookies: dict[str, str] | None = None
        self.session: tuple[str, _Seen] | None = None  # the session cookie and what it derives to, once found
        for name, value in scope["headers"]:  # the first of a repeated one, as Starlette's Headers read it
            if name == b"cookie":
                self.cookie = self.cookie or value
            elif name == b"authorization":
                self.authorization = self.authorization or value
            elif name in (b"content-length", b"transfer-encoding"):
                self.body = True
            elif name == b"hx-request":
                self.htmx = True

    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = cookie_parser(self.cookie.decode("latin-1"))
        return self._cookies

    def session_token(self, scope: Scope) -> str:
        https = scope.get("scheme") == "https"
        return self.cookies().get(f"__Host-{SESSION_COOKIE}" if https else SESSION_COOKIE, "")


_Found = TypeVar("_Found")


class _Seen(NamedTuple):
    """What the server derives from a token by keyed hashes: pure functions of it and the server's secrets."""

    name: str  # its session's or grant's cache key (accounts.token_name)
    csrf: str  # the CSRF token of a browser with it as its session cookie
    # For a session cookie naming its user: the cache requests of its home page (the session, the unread count,
    # the blob), read together in one round trip (_home).
    home: tuple[CacheRequest, ...] = ()


class _Tokens:
    """The session cookies and API tokens this process found live lately, each with its :class:`_Seen`: two HMACs
    fewer per request. Nothing here says a token is good (its record does, per request), so nothing here goes
    stale; a token not found live is not remembered, so made-up ones push no real one out, and one found ended is
    forgotten. At most ``most``, the oldest forgotten first; all forgotten if the services (and so the secrets)
    change."""

    def __init__(self, most: int = 4096) -> None:
        self.most = most
        self._svc: Services | None = None
        self._seen: dict[str, _Seen] = {}

    def held(self, svc: Services, csrf_key: bytes, token: str, may_be: Callable[[str], bool],
             find: Callable[[Services, str], _Found | None]) -> tuple[_Seen, _Found] | None:  # fmt: skip
        """What ``find`` (``accounts.held_session_named`` or ``held_token_grant_named``) finds in L1 for ``token``,
        with what the token derives to: remembered once it is found. Not found in L1 is not forgotten (the caller
        may find it live in Redis); a caller that finds it ended says so (:meth:`found`)."""
        seen = self.seen(svc, csrf_key, token, may_be)
        if seen is None:
            return None
        found = find(svc, seen.name)
        if found is not None:
            self.found(svc, token, seen, True)  # not found in L1 is not found dead: the caller may look further
        return None if found is None else (seen, found)

    def seen(self, svc: Services, csrf_key: bytes, token: str, may_be: Callable[[str], bool]) -> _Seen | None:
        """What ``token`` derives to, remembered or made now (None: it cannot be one, by ``may_be``)."""
        seen = self._seen.get(token) if svc is self._svc else None
        if seen is None and may_be(token):
            seen = _Seen(accounts.token_name(svc, token), csrf_of(csrf_key, token))
        return seen

    def found(self, svc: Services, token: str, seen: _Seen, live: bool) -> None:
        """Whether ``token`` was found live: remembered if so (with what ``seen`` holds now), forgotten if not."""
        if not live:
            if svc is self._svc:
                self._seen.pop(token, None)
            return
        if svc is not self._svc:
            self._svc, self._seen = svc, {}
        if token not in self._seen and len(self._seen) >= self.most:
            del self._seen[next(iter(self._seen))]
        self._seen[token] = seen


def _held_home(scope: Scope, headers: _Headers) -> bytes | None:
    return _held_page(scope, headers, "home")


async def _home(request: Request, headers: _Headers) -> bytes | None:
    """The home page from its blob in L1 or Redis: with a cookie that names its user, the session, the unread count,
    the blob and the shown log in one Redis round trip (the session checked to be that user's); with an older
    cookie, the session first (``accounts.session_owner_reads``)."""
    if headers.htmx or not headers.cookie:
        return None
    app = request.app
    state = app.state
    svc: Services = state.services
    tokens: _Tokens = app.tokens
    if headers.session is None:  # not tried in L1 (the held answer was not asked)
        token = headers.session_token(request.scope)
        found = tokens.seen(svc, state.csrf_key, token, accounts.may_be_session)
        if found is None:
            return None
        headers.session = token, found
    token, seen = headers.session
    cookies = headers.cookies()
    viewer_id = accounts.session_hint(token)
    if viewer_id is None:  # a cookie from before they named their user: the session first
        asks: list[Callable[[int], CacheRequest]] = [partial(notifications.unread_request, svc),
                                                     page_blobs.prefetch(svc)]  # fmt: skip
        viewer_id, (unread, blob), strings = await accounts.session_owner_reads(svc, token, seen.name, asks,
                                                                                [shown.KEY])  # fmt: skip
        live = viewer_id is not None
    else:
        if not seen.home:
            seen = seen._replace(home=(lookup.session_request(svc, bytes.fromhex(seen.name)),
                                       notifications.unread_request(svc, viewer_id),
                                       page_blobs.prefetch(svc)(viewer_id)))  # fmt: skip
        (session, unreads, blobs), strings = await svc.cache.get_multi_with(seen.home, [shown.KEY])
        live = accounts.session_of(session.get(seen.name), viewer_id)
        unread, blob = unreads.get(viewer_id), blobs.get(viewer_id)
    tokens.found(svc, token, seen, live)
    if not live or viewer_id is None:
        return None
    shell = page_blobs.page_shell(seen.csrf, notifications.unread_of(unread),
                                  audience_of(cookies.get(VISIBILITY_COOKIE, "")))  # fmt: skip
    log = shown.Log.parse(strings.get(shown.KEY)) if strings else None
    return await page_blobs.from_store(request, svc, viewer_id, shell, blob, log)


def _held_public(scope: Scope, headers: _Headers) -> bytes | None:
    return _held_page(scope, headers, "public")


def _held_page(scope: Scope, headers: _Headers, timeline: str) -> bytes | None:
    if headers.htmx or not headers.cookie:
        return None
    app = scope["app"]
    state = app.state
    svc: Services = state.services
    token = headers.session_token(scope)
    tokens: _Tokens = app.tokens
    seen = tokens.seen(svc, state.csrf_key, token, accounts.may_be_session)
    if seen is None:
        return None
    headers.session = token, seen
    viewer = accounts.held_session_named(svc, seen.name)
    if viewer is None:
        return None
    tokens.found(svc, token, seen, True)
    cookies = headers.cookies()
    unread = svc.cache.cached(UNREAD, viewer.id)
    if unread is None:
        return None
    shell = page_blobs.page_shell(seen.csrf, notifications.unread_of(unread),
                                  audience_of(cookies.get(VISIBILITY_COOKIE, "")))  # fmt: skip
    return page_blobs.held(svc, state.templates, viewer, shell, timeline=timeline)


def _held_home_statuses(scope: Scope, headers: _Headers) -> tuple[bytes, bytes] | None:
    return _held_statuses(scope, headers, "home")


def _held_public_statuses(scope: Scope, headers: _Headers) -> tuple[bytes, bytes] | None:
    return _held_statuses(scope, headers, "public")


def _held_statuses(scope: Scope, headers: _Headers, timeline: str) -> tuple[bytes, bytes] | None:
    scheme, _, token = headers.authorization.decode("latin-1").partition(" ")
    base = mastodon.known_base(scope)
    if scheme.lower() != "bearer" or base is None:
        return None
    app = scope["app"]
    state = app.state
    svc: Services = state.services
    tokens: _Tokens = app.tokens
    held = tokens.held(svc, state.csrf_key, token.strip(), accounts.may_be_api_token, accounts.held_token_grant_named)
    if held is None:
        return None
    grant = held[1]
    if grant.user is None or not oauth.covers(grant.scopes, "read:statuses"):
        return None
    blob = page_blobs.held(svc, state.templates, grant.user, {"h": base.encode()}, limit=DEFAULT_LIMIT, base=base,
                           timeline=timeline)  # fmt: skip
    if blob is None:
        return None
    links, _, body = blob.partition(b"\n")
    return body, links


async def _public(request: Request, _: _Headers) -> bytes | None:
    return await pages.public_from_blob(request)


async def _home_statuses(request: Request, _: _Headers) -> tuple[bytes, bytes] | None:
    return await api.home_timeline_from_blob(request)


async def _public_statuses(request: Request, _: _Headers) -> tuple[bytes, bytes] | None:
    return await api.public_timeline_from_blob(request)


_HOT = {
    "/": _Hot(_Route("/"), b"text/html; charset=utf-8", _held_home, _home, []),
    "/public": _Hot(_Route("/public"), b"text/html; charset=utf-8", _held_public, _public, []),
    "/api/v1/timelines/home": _Hot(
        _Route("/api/v1/timelines/home"), b"application/json", _held_home_statuses, _home_statuses, _CORS
    ),
    "/api/v1/timelines/public": _Hot(
        _Route("/api/v1/timelines/public"), b"application/json", _held_public_statuses, _public_statuses, _CORS
    ),
}
