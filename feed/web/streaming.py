"""Mastodon's streaming API (https://docs.joinmastodon.org/methods/streaming/), for the apps people already use.

- ``GET /api/v1/streaming/health``: ``OK``.
- Server-sent events at ``/api/v1/streaming/user``, ``/user/notification``, ``/public`` and ``/public/local``.
- A WebSocket at ``/api/v1/streaming``: ``?stream=NAME`` to start with, then ``{"type": "subscribe", "stream":
  NAME}`` and ``{"type": "unsubscribe", ...}`` messages; each event is ``{"stream": [NAME], "event": ..., "payload":
  ...}``.

Events: ``update`` (a status, as a JSON string), ``status.update`` (an edited status), ``delete`` (its id) and
``notification`` (a Notification, on ``user`` and ``user:notification``).
``user`` carries the home timeline (new posts of whom the viewer follows, their own, direct posts to them) with
edits and deletions of such posts; ``public`` and ``public:local`` (the same here: there is no federation) carry
public posts. Every status is rendered here for the connection's viewer (``favourited`` is theirs) and checked
against them first. A notification comes by the user's own stream, as its id, and is read for them when sent.

Tokens are taken as Mastodon takes them: the ``Authorization`` header, the ``access_token`` query parameter, or
(WebSocket) the ``Sec-WebSocket-Protocol`` header. A query string can carry a token, so the access log keeps no query
(``feed.logs.PrivateAccessLog``) and our own log lines never show one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from feed.cache import API_TOKENS, redis_key
from feed.errors import Forbidden, NeedsUser, NotFound, RateLimited, Unauthorized
from feed.events import BOOST, DELETE, EDIT, NEW, NOTE
from feed.services import accounts, notifications, oauth, push
from feed.services.context import Services
from feed.services.models import User
from feed.streams import Entry
from feed.web import mastodon
from feed.web.auth import OUT_OF_SCOPE
from feed.web.hub import Connection, Hub, Message, parse_cursor
from feed.web.openapi import operation
from feed.web.sse import EventStream

log = logging.getLogger(__name__)

STREAMS = ("user", "user:notification", "public", "public:local")
PUBLIC = ("public", "public:local")
_SSE_PATHS = {
    "user": "user",
    "user/notification": "user:notification",
    "public": "public",
    "public/local": "public:local",
}


@dataclass(eq=False)
class ApiSink:
    svc: Services
    http: HTTPConnection  # for the base URL of links in statuses
    kind: str  # sse or websocket
    subscribed: set[str] = field(default_factory=set)
    wants_home: bool = False
    wants_posts: bool = False
    topics: frozenset[str] = frozenset({"all"})

    def subscribe(self, stream: str) -> None:
        self.subscribed.add(stream)
        self._update()

    def unsubscribe(self, stream: str) -> None:
        self.subscribed.discard(stream)
        self._update()

    def _update(self) -> None:
        self.wants_home = bool(self.subscribed & {"user", "user:notification"})
        self.wants_posts = bool(self.subscribed & {"user", *PUBLIC})

    async def home(self, conn: Connection, entry: Entry, memo: dict[Any, Any]) -> list[Message]:
        if entry.event.kind == NOTE:
            targets = [s for s in ("user", "user:notification") if s in self.subscribed]
            note = await self._notification(conn, entry.event.post) if targets and conn.user else None
            return [Message("notification", note, stream=s) for s in targets] if note else []
        if "user" not in self.subscribed:
            return []
        status = await self._status(conn, entry.event.post, memo, boost=(entry.event.boost, entry.event.booster))
        return [Message("update", status, stream="user")] if status else []

    async def _notification(self, conn: Connection, notification_id: int) -> str | None:
        """The Notification entity for the connection's user; None if it is gone (dismissed, withdrawn)."""
        assert conn.user is not None
        try:
            note = await notifications.one(self.svc, conn.user, notification_id)
        except NotFound:
            return None
        profiles = await accounts.profiles(self.svc, [note.account, *([note.post.author] if note.post else [])])
        statuses = {}
        if note.post is not None:
            apps = await oauth.applications(self.svc, [note.post.app_id])
            statuses[note.post.id] = mastodon.status(self.http, note.post, profiles, apps)
        return json.dumps(mastodon.notification(self.http, note, profiles, statuses), separators=(",", ":"))

    async def posts(self, conn: Connection, entry: Entry, memo: dict[Any, Any]) -> list[Message]:
        event = entry.event
        public = [s for s in PUBLIC if s in self.subscribed] if event.visibility == "public" else []
        if event.kind == NEW:
            if "user" in self.subscribed and conn.user and await push.joins_home_when_read(self.svc, conn.user, event):
                public.append("user")
            status = await self._status(conn, event.post, memo) if public else None
            return [Message("update", status, stream=s) for s in public] if status else []
        if event.kind == BOOST:
            if "user" not in self.subscribed or conn.user is None:
                return []
            if not await push.boost_joins_home_when_read(self.svc, conn.user, event):
                return []
            status = await self._status(conn, event.post, memo, boost=(event.boost, event.booster))
            return [Message("update", status, stream="user")] if status else []
        targets = list(public)
        if "user" in self.subscribed and conn.user is not None and await push.in_home_of(self.svc, conn.user, event):
            if await push.may_see_event(self.svc, conn.user, event):
                targets.append("user")
        if not targets:
            return []
        if event.kind == DELETE:
            return [Message("delete", str(event.post), stream=s) for s in targets]
        if event.kind == EDIT:
            status = await self._status(conn, event.post, memo, fresh=True)
            return [Message("status.update", status, stream=s) for s in targets] if status else []
        return []

    def counts(self, conn: Connection, counts: dict[int, tuple[int, int]]) -> list[Message]:
        return []  # Mastodon's streams have no count updates

    def resync(self, conn: Connection) -> list[Message]:
        return []  # nor a resync: its apps fetch their timelines again when they reconnect

    async def _status(
        self,
        conn: Connection,
        post_id: int,
        memo: dict[Any, Any],
        *,
        fresh: bool = False,
        boost: tuple[int, int] = (0, 0),
    ) -> str | None:
        """The status for the connection's viewer; ``boost``: (boost id, booster) of a post a boost brought."""
        found = await push.for_viewer(self.svc, post_id, conn.user, None, memo, fresh=fresh, hide_muted=True)
        if found is None:
            return None
        _, view, marks = found
        boost_id, booster_id = boost
        if booster_id and booster_id in marks.blocked | marks.muted:
            return None
        marked = (post_id in marks.liked, post_id in marks.bookmarked, post_id in marks.boosted)
        variant = ("status", post_id, marked, str(self.http.base_url), boost_id)
        if variant not in memo:
            booster = await push.person(self.svc, booster_id) if booster_id else None
            people = [view.author, *([booster] if booster else [])]
            profiles = await accounts.profiles(self.svc, people)
            apps = await oauth.applications(self.svc, [view.app_id])
            marks.put_on(view)
            view.boost_id, view.booster = boost_id, booster
            entity = mastodon.status(self.http, view, profiles, apps)
            memo[variant] = json.dumps(entity, separators=(",", ":"))
        status: str = memo[variant]
        return status


def _token(http: HTTPConnection, *, subprotocol: bool = False) -> str | None:
    header = http.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if header and scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if subprotocol and (offered := http.headers.get("sec-websocket-protocol")):
        return offered.split(",")[0].strip() or None
    return http.query_params.get("access_token") or None


async def _authenticate(svc: Services, token: str | None, *, required: bool) -> User | None:
    if token is None:
        if required:
            raise Unauthorized("Missing access token")
        return None
    grant = await accounts.token_grant(svc, token)
    if grant is None:
        raise Unauthorized("Invalid access token")
    if not oauth.covers(grant.scopes, "read:statuses"):
        raise Forbidden(OUT_OF_SCOPE)
    if grant.user is None and required:
        raise NeedsUser("This method requires an authenticated user")
    return grant.user


def _connection(svc: Services, sink: ApiSink, user: User | None, token: str | None) -> Connection:
    return Connection(
        sink,
        user,
        auth=redis_key(API_TOKENS, accounts.token_hash(svc, token).hex()) if user is not None and token else None,
        authorize=(lambda: accounts.token_user(svc, token)) if user is not None and token else None,
    )


@operation("Is the streaming API up", None, public=True)
async def health(request: Request) -> Response:
    return PlainTextResponse("OK")


async def events(request: Request) -> Response:
    """``/api/v1/streaming/{stream}`` as server-sent events."""
    stream = _SSE_PATHS.get(request.path_params["stream"])
    if stream is None:
        from feed.errors import NotFound

        raise NotFound("Unknown stream")
    svc: Services = request.app.state.services
    hub: Hub = request.app.state.hub
    token = _token(request)
    user = await _authenticate(svc, token, required=stream not in PUBLIC)
    sink = ApiSink(svc, request, "sse")
    sink.subscribe(stream)
    conn = _connection(svc, sink, user, token)
    resume = parse_cursor(request.headers.get("last-event-id"))
    if resume is not None:
        conn.home_cursor, conn.posts_cursor = resume
    if not await hub.add(conn):
        raise RateLimited("Too many streams are open for this account", retry_after=10)
    # Mastodon's own server opens with a comment and sends ``:thump`` heartbeats; some clients (Mastodon.py) take
    # any field other than a comment for an event and need every event to have a name.
    return EventStream(hub, conn, heartbeat=b":thump\n\n", preamble=b":)\n\n", strict=resume is not None)


async def websocket(ws: WebSocket) -> None:
    """``/api/v1/streaming``: the multiplexed WebSocket."""
    svc: Services = ws.app.state.services
    hub: Hub = ws.app.state.hub
    token = _token(ws, subprotocol=True)
    try:
        user = await _authenticate(svc, token, required=False)
    except Unauthorized:
        await ws.close(code=4001, reason="Invalid access token")
        return
    except Forbidden:
        await ws.close(code=4003, reason=OUT_OF_SCOPE)
        return
    sink = ApiSink(svc, ws, "websocket")
    conn = _connection(svc, sink, user, token)
    first = ws.query_params.get("stream")
    offered = ws.headers.get("sec-websocket-protocol")
    if not await hub.add(conn):
        await ws.close(code=4029, reason="Too many streams")
        return
    await ws.accept(subprotocol=token if offered and token and offered.split(",")[0].strip() == token else None)
    await hub.open(conn, strict=False)  # live from here (a WebSocket has no position to resume from)
    reader = asyncio.get_running_loop().create_task(_read(ws, conn, sink, user, first))
    try:
        while True:
            await conn.wait()
            conn.probe = False  # the server pings WebSockets itself; a gone client ends ``_read``
            messages = conn.take()
            for message in messages:
                body = {"stream": [message.stream], "event": message.event, "payload": message.text()}
                await ws.send_text(json.dumps(body, separators=(",", ":")))
            hub.sent(conn, messages)
            if conn.closed and not conn.queue:
                break
        await ws.close()
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass  # the client went away while we wrote
    finally:
        reader.cancel()
        hub.remove(conn)


async def _read(ws: WebSocket, conn: Connection, sink: ApiSink, user: User | None, first: str | None) -> None:
    """Subscriptions from the client, until it goes."""

    async def subscribe(stream: Any) -> None:
        if stream not in STREAMS:
            await _error(ws, "Unknown stream type")
        elif stream not in PUBLIC and user is None:
            await _error(ws, "Missing access token")
        elif stream not in sink.subscribed:
            if stream == "user" and conn.hub is not None:
                await conn.hub.streams.open_user(user.id)  # type: ignore[union-attr]
            sink.subscribe(stream)

    try:
        if first:
            await subscribe(first)
        while True:
            raw = await ws.receive_text()
            try:
                message = json.loads(raw)
            except ValueError:
                await _error(ws, "Invalid JSON")
                continue
            if not isinstance(message, dict):
                await _error(ws, "Invalid message")
                continue
            if message.get("type") == "subscribe":
                await subscribe(message.get("stream"))
            elif message.get("type") == "unsubscribe":
                sink.unsubscribe(str(message.get("stream")))
            else:
                await _error(ws, "Unknown message type")
    except (WebSocketDisconnect, RuntimeError, OSError):
        conn.close()


async def _error(ws: WebSocket, text: str) -> None:
    await ws.send_text(json.dumps({"error": text, "status": 400}))
