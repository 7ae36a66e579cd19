"""This process's live connections (page streams, Mastodon streaming over SSE and WebSocket) and how events reach
them.

Events come from ``feed.streams`` (the shared posts stream, users' home streams, count updates) into one inbox,
and one dispatcher task hands each to the connections it concerns; each connection's *sink* (``feed.web.live`` for
pages, ``feed.web.streaming`` for Mastodon clients) decides for its viewer what to send, rendering in this process
(decrypted through the frame cache, once per event and kind of viewer, see ``memo``). A connection holds a bounded
queue of messages that its own request handler writes out; a connection whose queue overflows (a reader that
stopped reading) gets ``resync`` and is closed, so it never delays the others.

A connection's position is a pair of stream ids (its home stream's and the posts stream's), sent as each message's
``id`` (``<home id>/<posts id>``). A client that comes back with it gets exactly what it missed, in order, once
(:meth:`Hub.catch_up`), or ``resync`` if some of it is gone.

One timer serves every connection: every :data:`HEARTBEAT_SECONDS` it asks each to write a heartbeat and check that
its client is still there (no task or timer per connection), and it renews the retention of the home streams of the
users connected here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from feed.events import BOOST, NEW
from feed.services.context import Services
from feed.services.fanout import popular_authors
from feed.services.models import User
from feed.streams import POSTS_STREAM, Entry, Pushed, Replay, Streams, parse_id, user_stream

log = logging.getLogger(__name__)

QUEUE_LIMIT = 256  # messages waiting for one connection before it counts as a reader that stopped reading
HEARTBEAT_SECONDS = 15.0
TOUCH_EVERY = 300.0  # seconds between renewals of the connected users' home streams
PER_USER = 8  # streams one user may hold on one process
ON_SCREEN_LIMIT = 500  # posts a page connection follows for counts, edits and deletions


@dataclass(slots=True)
class Message:
    event: str
    data: str
    id: str | None = None  # the connection's position after this message (None: not a position, e.g. counts)
    committed_ms: int = 0  # when the write behind it committed, for the delivery-lag histogram
    stream: str = ""  # the Mastodon stream it belongs to (a WebSocket message names it)
    # (mark, value): ``data`` is shared by every connection that gets this event, with ``mark`` where this
    # connection's own ``value`` goes (a page's CSRF token in the forms of a post), put in when it is written.
    fill: tuple[str, str] | None = None

    def text(self) -> str:
        """``data`` as this connection gets it."""
        return self.data if self.fill is None else self.data.replace(*self.fill)


class Sink(Protocol):
    """What a kind of connection makes of events, for its viewer."""

    kind: str  # for metrics: page, sse, websocket
    wants_home: bool
    wants_posts: bool
    # Which entries of the posts stream it is offered: new posts of ``public`` or of ``author:<id>``, ``all`` of
    # them; edits and deletions of the posts it shows (``Connection.on_screen``) come to every connection anyway.
    topics: frozenset[str]

    async def home(self, conn: Connection, entry: Entry, memo: dict[Any, Any]) -> list[Message]: ...

    async def posts(self, conn: Connection, entry: Entry, memo: dict[Any, Any]) -> list[Message]: ...

    def counts(self, conn: Connection, counts: dict[int, tuple[int, int]]) -> list[Message]: ...

    def resync(self, conn: Connection) -> list[Message]: ...


Authorize = Callable[[], Awaitable[User | None]]


@dataclass(eq=False, slots=True)
class Connection:
    sink: Sink
    user: User | None
    auth: str | None = None  # cache key of the session or token it runs on: closed when that is invalidated
    authorize: Authorize | None = None  # checks the session or token again (after the bus lost messages)
    home_cursor: str | None = None  # None: live only (nothing to catch up on)
    posts_cursor: str | None = None
    on_screen: OrderedDict[int, None] = field(default_factory=OrderedDict)
    queue: deque[Message] = field(default_factory=deque)
    closed: bool = False
    probe: bool = False  # the handler should write a heartbeat and check its client is still there
    catching_up: bool = False
    replaying: bool = False  # a catch-up of this connection is under way
    held: list[tuple[str, Any]] = field(default_factory=list)  # live items that came during a catch-up
    _wake: asyncio.Future[None] | None = None
    hub: Hub | None = None

    def cursor(self) -> str:
        """Where the client stands. Its posts stream position is the hub's once it is live: the hub offered it every
        entry up to there, those it was not offered were of no concern to it."""
        posts = self.posts_cursor
        if self.hub is not None and self.hub.posts_at and not self.catching_up and self.sink.wants_posts:
            if posts is None or parse_id(self.hub.posts_at) > parse_id(posts):
                posts = self.hub.posts_at
        return f"{self.home_cursor or ''}/{posts or ''}"

    def watch(self, post_ids: Iterable[int]) -> None:
        for post_id in post_ids:
            self.on_screen[post_id] = None
            self.on_screen.move_to_end(post_id)
            if self.hub is not None:
                self.hub.by_post.setdefault(post_id, set()).add(self)
        while len(self.on_screen) > ON_SCREEN_LIMIT:
            gone, _ = self.on_screen.popitem(last=False)
            if self.hub is not None:
                self.hub.unwatch(self, gone)

    def push(self, message: Message) -> None:
        if self.closed:
            return
        self.queue.append(message)
        if self.hub is not None and len(self.queue) > self.hub.queue_limit:
            self.hub.drop(self)
        self.wake()

    def wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self) -> None:
        """Until there is something to write, a heartbeat is due, or the connection is closed."""
        if self.queue or self.closed or self.probe:
            return
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    def take(self) -> list[Message]:
        out = list(self.queue)
        self.queue.clear()
        return out

    def close(self) -> None:
        self.closed = True
        self.wake()


def parse_cursor(raw: str | None) -> tuple[str | None, str | None] | None:
    """A ``Last-Event-ID`` (``<home id>/<posts id>``, either part empty) as its two stream ids; None if malformed."""
    if not raw or len(raw) > 80:
        return None
    home, sep, posts = raw.partition("/")
    if not sep:
        return None
    try:
        for part in (home, posts):
            if part:
                parse_id(part)
    except ValueError:
        return None
    return home or None, posts or None


class Hub:
    def __init__(
        self,
        svc: Services,
        streams: Streams,
        *,
        metrics: Any = None,
        queue_limit: int = QUEUE_LIMIT,
        per_user: int = PER_USER,
    ) -> None:
        self.svc = svc
        self.queue_limit = queue_limit
        self.per_user = per_user
        self.streams = streams
        self.connections: set[Connection] = set()
        self.by_user: dict[int, set[Connection]] = {}
        self.by_auth: dict[str, set[Connection]] = {}
        self.by_post: dict[int, set[Connection]] = {}
        self.by_topic: dict[str, set[Connection]] = {}
        self.posts_at = ""  # the last entry of the posts stream dispatched here
        self.catching: set[Connection] = set()  # connections catching up (they hold what comes meanwhile)
        # Connections whose catch-up found Redis away, and from which of their streams: tried again shortly.
        self.behind: dict[Connection, tuple[str, ...]] = {}
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False
        self._sent = self._replays = self._resyncs = self._drops = self._lag = None
        self._sent_by_kind: dict[str, Any] = {}
        # What the handlers wrote, counted into the metrics once a broadcast is out rather than at each write
        self._written: dict[str, int] = {}
        self._lags: list[float] = []
        self._flush_due = False
        if metrics is not None:
            metrics.gauge_callback("cipherfeed_streams_open", "Live streams open on this process, by kind",
                                   self._open_by_kind, ("kind",))  # fmt: skip
            self._sent = metrics.counter("cipherfeed_stream_events_sent_total", "Events written to live streams",
                                         ("kind",))  # fmt: skip
            self._replays = metrics.counter(
                "cipherfeed_stream_replays_total", "Reconnections that caught up on what they missed"
            )
            self._resyncs = metrics.counter(
                "cipherfeed_stream_resyncs_total", "Streams told to resync (what they missed is gone)"
            )
            self._drops = metrics.counter("cipherfeed_stream_drops_total", "Streams closed for not reading")
            self._lag = metrics.histogram(
                "cipherfeed_stream_delivery_seconds",
                "From a write's commit to the last byte of its event written to a stream",
                buckets=(
                    0.001,
                    0.0025,
                    0.005,
                    0.01,
                    0.015,
                    0.02,
                    0.03,
                    0.035,
                    0.04,
                    0.045,
                    0.05,
                    0.075,
                    0.1,
                    0.25,
                    0.5,
                    1,
                    2.5,
                    5,
                    10,
                ),
            )
        streams.listen(self._on_posts, self._on_push, self._on_reset)

    def _open_by_kind(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {("page",): 0, ("sse",): 0, ("websocket",): 0}
        for conn in self.connections:
            out[(conn.sink.kind,)] = out.get((conn.sink.kind,), 0) + 1
        return out

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._dispatch()), loop.create_task(self._beat()),
                       loop.create_task(self._catch_up_behind())]  # fmt: skip

    async def stop(self) -> None:
        self.close_all()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    # -- connections

    async def add(self, conn: Connection) -> bool:
        """Register a connection; False if its user holds too many streams here already."""
        if self.closing:
            return False
        user_id = conn.user.id if conn.user else None
        if user_id is not None and len(self.by_user.get(user_id, ())) >= self.per_user:
            await self._probe_user(user_id)  # streams of reloaded pages may be gone without having said so
            if len(self.by_user.get(user_id, ())) >= self.per_user:
                return False
        conn.hub = self
        # Until ``open`` has caught it up, what comes live is held for it (its position must not move past what it
        # has still to be sent).
        conn.catching_up = True
        self.catching.add(conn)
        self.connections.add(conn)
        if user_id is not None:
            self.by_user.setdefault(user_id, set()).add(conn)
        if conn.auth is not None:
            self.by_auth.setdefault(conn.auth, set()).add(conn)
        for post_id in conn.on_screen:
            self.by_post.setdefault(post_id, set()).add(conn)
        self.subscribe(conn)
        return True

    def subscribe(self, conn: Connection, before: frozenset[str] = frozenset()) -> None:
        """Index the connection under its sink's topics (again, after they changed from ``before``)."""
        for topic in before - conn.sink.topics:
            _discard(self.by_topic, topic, conn)
        for topic in conn.sink.topics:
            self.by_topic.setdefault(topic, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        conn.closed = True
        self.connections.discard(conn)
        self.catching.discard(conn)
        self.behind.pop(conn, None)
        if conn.user is not None:
            _discard(self.by_user, conn.user.id, conn)
        if conn.auth is not None:
            _discard(self.by_auth, conn.auth, conn)
        for post_id in conn.on_screen:
            _discard(self.by_post, post_id, conn)
        for topic in conn.sink.topics:
            _discard(self.by_topic, topic, conn)

    def unwatch(self, conn: Connection, post_id: int) -> None:
        _discard(self.by_post, post_id, conn)

    async def _probe_user(self, user_id: int) -> None:
        conns = list(self.by_user.get(user_id, ()))
        for conn in conns:
            conn.probe = True
            conn.wake()
        for _ in range(10):  # their handlers look within a moment
            await asyncio.sleep(0.01)
            if not any(conn.probe for conn in conns if conn in self.connections):
                return

    def drop(self, conn: Connection) -> None:
        """A reader that stopped reading: what it has not read goes, it is told to resync, and it is closed."""
        conn.queue.clear()
        for message in conn.sink.resync(conn):
            conn.queue.append(message)
        conn.closed = True
        self.remove(conn)
        conn.wake()
        if self._drops is not None:
            self._drops.inc()
        if self._resyncs is not None:
            self._resyncs.inc()

    def close_all(self) -> None:
        """At shutdown: every stream ends now, and its client reconnects (to another process)."""
        self.closing = True
        for conn in list(self.connections):
            conn.close()

    def close_auth(self, names: Iterable[str]) -> None:
        """Sessions or tokens that ended (their cache keys were invalidated): their streams close."""
        for name in names:
            for conn in list(self.by_auth.get(name, ())):
                conn.close()

    async def recheck_all(self) -> None:
        """After the bus may have lost messages: streams whose session or token is gone close."""
        for conn in list(self.connections):
            if conn.authorize is not None and not conn.closed and await conn.authorize() is None:
                conn.close()

    def sent(self, conn: Connection, messages: Sequence[Message]) -> None:
        """The handler wrote ``messages`` (to their last byte). Noted here, counted into the metrics by
        :meth:`flush_metrics` right after the loop has run the other handlers woken with this one, so that a
        broadcast's last stream does not wait for the bookkeeping of the thousand before it."""
        if not messages or self._sent is None:
            return
        kind = conn.sink.kind
        self._written[kind] = self._written.get(kind, 0) + len(messages)
        now_ms = time.time() * 1000
        for message in messages:
            if message.committed_ms:
                self._lags.append(now_ms - message.committed_ms)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush_metrics)

    def flush_metrics(self) -> None:
        self._flush_due = False
        written, self._written = self._written, {}
        lags, self._lags = self._lags, []
        if self._sent is not None:
            for kind, count in written.items():
                child = self._sent_by_kind.get(kind)
                if child is None:
                    child = self._sent_by_kind[kind] = self._sent.labels(kind)
                child.inc(count)
        if self._lag is not None:
            for lag_ms in lags:
                self._lag.observe(max(0.0, lag_ms / 1000))

    # -- catching up

    async def open(self, conn: Connection, *, strict: bool) -> None:
        """Start a connection at its cursors: make its user's home stream if needed, then catch up. ``strict``: the
        cursors are a client's real position (Last-Event-ID), so anything missing means resync; otherwise they are
        a page's render time, and whatever the streams hold after it is sent."""
        if conn.sink.wants_home and conn.user is not None:
            created = await self.streams.open_user(conn.user.id)
            if created and strict and conn.home_cursor is not None:
                await self.resync(conn)
                return
        floor = None
        if not strict and conn.sink.wants_home and conn.user is not None:
            # From a render time to a real position: a later catch-up (after the push channel dropped) must not
            # mistake the start of a stream made just now for something missed.
            floor = await self.streams.tail(user_stream(conn.user.id))
        await self.catch_up(conn, strict=strict, home_floor=floor)

    async def catch_up(
        self,
        conn: Connection,
        *,
        strict: bool = True,
        sources: tuple[str, ...] = ("home", "posts"),
        home_floor: str | None = None,
    ) -> None:
        """Send what the connection missed since its position, then what came meanwhile. ``home_floor``: an entry of
        its home stream read before the replay, which its position may move up to once the replay is sent."""
        if conn.replaying:  # another catch-up of it is under way (a reset and a retry at once): once more after it
            self.behind[conn] = tuple(sorted({*self.behind.get(conn, ()), *sources}))
            return
        conn.replaying = True
        conn.catching_up = True
        if conn in self.connections:
            self.catching.add(conn)
        try:
            items: list[tuple[tuple[int, int], str, Entry]] = []
            wanted = []
            if "home" in sources and conn.sink.wants_home and conn.user is not None and conn.home_cursor is not None:
                wanted.append(("home", user_stream(conn.user.id), conn.home_cursor))
            if "posts" in sources and conn.sink.wants_posts and conn.posts_cursor is not None:
                wanted.append(("posts", POSTS_STREAM, conn.posts_cursor))
            for source, key, after in wanted:
                replay: Replay | None = await self.streams.replay(key, after)
                if replay is None:  # Redis (or the stream's node) is away: again in a moment
                    self.behind[conn] = tuple(sorted({*self.behind.get(conn, ()), *sources}))
                    return
                if not replay.complete and strict:
                    await self.resync(conn)
                    return
                items += [(parse_id(entry.id), source, entry) for entry in replay.entries]
            if items and self._replays is not None:
                self._replays.inc()
            await self._replay(conn, items)
            if home_floor and (conn.home_cursor is None or parse_id(home_floor) > parse_id(conn.home_cursor)):
                conn.home_cursor = home_floor
            memo: dict[Any, Any] = {}
            while conn.held:
                source, entry = conn.held.pop(0)
                await self._deliver(conn, source, entry, memo)
        finally:
            conn.replaying = False
            conn.catching_up = False
            conn.held.clear()
            self.catching.discard(conn)

    async def _replay(self, conn: Connection, items: list[tuple[tuple[int, int], str, Entry]]) -> None:
        """Deliver what a connection missed, in the order the writes behind it committed (home entries are in the
        order their fan-outs ran, which run side by side), then move its position past all of it. Only the last
        message carries the new position: a client that drops half way gets the whole replay again."""
        memo: dict[Any, Any] = {}
        out: list[Message] = []
        ends: dict[str, tuple[tuple[int, int], str]] = {}
        for position, source, entry in sorted(items, key=lambda item: (item[2].event.committed_ms, item[0])):
            render = conn.sink.home if source == "home" else conn.sink.posts
            for message in await render(conn, entry, memo):
                message.committed_ms = entry.event.committed_ms
                out.append(message)
            if source not in ends or position > ends[source][0]:
                ends[source] = (position, entry.id)
        if "home" in ends:
            conn.home_cursor = ends["home"][1]
        if "posts" in ends:
            conn.posts_cursor = ends["posts"][1]
        if out:
            out[-1].id = conn.cursor()
        for message in out:
            conn.push(message)

    async def resync(self, conn: Connection) -> None:
        """Tell the client to fetch its timeline again, from the streams' current ends on."""
        if conn.user is not None and conn.sink.wants_home:
            conn.home_cursor = await self.streams.tail(user_stream(conn.user.id)) or conn.home_cursor
        if conn.sink.wants_posts:
            conn.posts_cursor = await self.streams.tail(POSTS_STREAM) or conn.posts_cursor
        for message in conn.sink.resync(conn):
            conn.push(message)
        if self._resyncs is not None:
            self._resyncs.inc()

    # -- dispatch

    def _on_posts(self, entry: Entry) -> None:
        self._inbox.put_nowait(("posts", entry))

    def _on_push(self, home: list[Pushed], counts: dict[int, tuple[int, int]]) -> None:
        if home:
            self._inbox.put_nowait(("home", home))
        if counts:
            self._inbox.put_nowait(("counts", counts))

    def _on_reset(self, lost: bool) -> None:
        self._inbox.put_nowait(("reset", lost))

    async def _dispatch(self) -> None:
        while True:
            kind, item = await self._inbox.get()
            try:
                if kind == "posts":
                    await self._dispatch_posts(item)
                elif kind == "home":
                    await self._dispatch_home(item)
                elif kind == "counts":
                    self._dispatch_counts(item)
                else:
                    await self._reset(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("live event not delivered (%s)", type(exc).__name__)

    async def _dispatch_posts(self, entry: Entry) -> None:
        event = entry.event
        concerned = set(self.by_topic.get("all", ()))
        if event.kind == NEW:
            concerned.update(self.by_topic.get(f"author:{event.author}", ()))
            if event.visibility == "public":
                concerned.update(self.by_topic.get("public", ()))
            if event.visibility != "direct" and event.author in await popular_authors(self.svc):
                concerned.update(self.by_topic.get("home", ()))  # no fan-out brings it to their home streams
        elif event.kind == BOOST:
            if event.booster in await popular_authors(self.svc):
                concerned.update(self.by_topic.get("home", ()))  # the same for a popular booster's boost
        else:
            concerned.update(self.by_post.get(event.post, ()))
        concerned.update(self.catching)
        memo: dict[Any, Any] = {}
        for conn in concerned:
            if conn.sink.wants_posts and not conn.closed:
                if conn.catching_up:
                    conn.held.append(("posts", entry))
                else:
                    await self._deliver(conn, "posts", entry, memo)
        self.posts_at = entry.id

    async def _dispatch_home(self, pushed: list[Pushed]) -> None:
        memo: dict[Any, Any] = {}
        for user_id, entry, prev in pushed:
            for conn in list(self.by_user.get(user_id, ())):
                if conn.sink.wants_home and not conn.closed:
                    cursor = conn.home_cursor
                    if conn.catching_up:
                        conn.held.append(("home", entry))
                    elif prev is not None and cursor is not None and parse_id(prev) > parse_id(cursor):
                        # An entry before this one was not announced here: read them from the stream.
                        await self.catch_up(conn, strict=True, sources=("home",))
                    else:
                        await self._deliver(conn, "home", entry, memo)

    def _dispatch_counts(self, counts: dict[int, tuple[int, int]]) -> None:
        targets: dict[Connection, dict[int, tuple[int, int]]] = {}
        for post_id, pair in counts.items():
            for conn in self.by_post.get(post_id, ()):
                targets.setdefault(conn, {})[post_id] = pair
        for conn, mine in targets.items():
            for message in conn.sink.counts(conn, mine):
                conn.push(message)

    async def _deliver(self, conn: Connection, source: str, entry: Entry, memo: dict[Any, Any]) -> None:
        position = parse_id(entry.id)
        if source == "home":
            if conn.home_cursor is not None and position <= parse_id(conn.home_cursor):
                return  # seen already (a replay and a live message overlap)
            messages = await conn.sink.home(conn, entry, memo)
            conn.home_cursor = entry.id
        else:
            if conn.posts_cursor is not None and position <= parse_id(conn.posts_cursor):
                return
            messages = await conn.sink.posts(conn, entry, memo)
            conn.posts_cursor = entry.id
        for message in messages:
            message.id = conn.cursor()
            message.committed_ms = entry.event.committed_ms
            conn.push(message)

    async def _reset(self, lost: bool) -> None:
        """The push channel was (re)subscribed: catch every connection up on what it may have missed; if Redis lost
        its data, their streams are gone: make them again and have every client resync."""
        for conn in list(self.connections):
            if conn.closed:
                continue
            if lost:
                if conn.sink.wants_home and conn.user is not None:
                    await self.streams.open_user(conn.user.id)
                await self.resync(conn)
            else:  # the posts stream is read apart, and missed nothing: only home entries were announced here
                await self.catch_up(conn, strict=True, sources=("home",))

    async def _catch_up_behind(self, every: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every)
            for conn, sources in list(self.behind.items()):
                del self.behind[conn]
                if not conn.closed:
                    try:
                        await self.catch_up(conn, strict=True, sources=sources)
                    except Exception as exc:  # the next round tries again
                        self.behind[conn] = sources
                        log.warning("could not catch a stream up (%s)", type(exc).__name__)

    async def _beat(self) -> None:
        touched = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            for conn in list(self.connections):
                conn.probe = True
                conn.wake()
            if time.monotonic() - touched > TOUCH_EVERY:
                touched = time.monotonic()
                try:
                    await self.streams.touch(list(self.by_user))
                except Exception as exc:  # the next round tries again
                    log.warning("could not renew home streams (%s)", type(exc).__name__)


def _discard(index: dict[Any, set[Connection]], key: Any, conn: Connection) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(conn)
        if not found:
            del index[key]
