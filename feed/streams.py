"""Live events at rest and in flight: Redis Streams and pub/sub (scaled mode), or the same in process (embedded).

Two kinds of stream, both bounded:

- **The posts stream** (``cf:ev:posts``), shared: every new post, edit and deletion (:class:`feed.events.Event`),
  written by the outbox relay, the newest :data:`POSTS_KEPT` kept. Each web process reads it with one blocking
  XREAD and hands each entry to its connections, which decide per viewer what to show.
- **A stream per user** (``cf:ev:{u<id>}``): "this post joined your home timeline", written by the post's fan-out
  into the streams that exist, and "you have a new notification", written by the outbox relay; the newest
  :data:`USER_KEPT` kept. A user's stream is made when one of their clients connects and lives until
  :data:`USER_RETENTION_MS` after their last client left (each web process renews it for its clients), so a client
  that comes back within that time gets exactly what it missed, and a user who has been away longer costs nothing. A
  fan-out announces what it wrote on the pub/sub channel ``cf:push`` (stream ids and post ids); so does the relay
  for changed like and reply counts, coalesced per post.

A stream entry's id (``<milliseconds>-<sequence>``, Redis's own) is what clients resume from. A client whose id is
older than a stream's first entry, or whose stream is gone (trimmed, expired, or lost with Redis), may have missed
something and is told to resync. ``cf:ev:epoch`` is set once per Redis data set: when it changes, Redis lost its
data and every connection resyncs.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from feed.events import HOME, NOTE, USER_KINDS, VISIBILITY_CODES, Event
from feed.redis_link import FAILURES, RedisLink, Scripts, close_client, reseed

log = logging.getLogger(__name__)

POSTS_STREAM = "cf:ev:posts"
PUSH_CHANNEL = "cf:push"
EPOCH = "cf:ev:epoch"
POSTS_KEPT = 10_000
USER_KEPT = 1_000
USER_RETENTION_MS = 3_600_000
REPLAY_LIMIT = 1_000  # entries a reconnecting client may catch up on; past that it resyncs
_BLOCK_MS = 2_000


def user_stream(user_id: int) -> str:
    return f"cf:ev:{{u{user_id}}}"  # the hash tag keeps a user's keys in one Redis Cluster slot


@functools.lru_cache(maxsize=4096)  # the same few ids are compared for every connection an entry goes to
def parse_id(raw: str) -> tuple[int, int]:
    """A stream id as a comparable pair; raises ValueError if it is not one."""
    ms, _, seq = raw.partition("-")
    if not (ms.isascii() and ms.isdigit() and len(ms) <= 15 and seq.isascii() and seq.isdigit() and len(seq) <= 10):
        raise ValueError("not a stream id")
    return int(ms), int(seq)


class Entry(NamedTuple):
    id: str
    event: Event


class Pushed(NamedTuple):
    """A home entry as announced: the user's, and the id of the entry before it in their stream (None if unknown).
    A connection whose position is older than ``prev`` missed something (an announcement lost while a node was
    away) and catches up from the stream instead."""

    user: int
    entry: Entry
    prev: str | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """What a stream holds after a client's position: ``entries`` in order, or ``complete`` False when something
    after that position is gone (the client must resync)."""

    entries: list[Entry]
    complete: bool


# Handlers the listener calls: an entry of the posts stream; a batch of home entries with the counts that changed
# (post id -> (likes, replies)); a reset (lost=True: Redis lost its data).
PostsHandler = Callable[[Entry], None]
PushHandler = Callable[[list[Pushed], dict[int, tuple[int, int]]], None]
ResetHandler = Callable[[bool], None]


def _decode_entries(raw: Iterable[Any]) -> list[Entry]:
    out = []
    for entry_id, fields in raw:
        try:
            out.append(Entry(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, Event.from_fields(fields)))
        except (KeyError, ValueError, TypeError):
            continue  # a marker entry (``hello``) or something malformed: nothing to deliver
    return out


def _push_message(home: list[tuple[int, str, str]], event: Event | None, counts: dict[int, tuple[int, int]]) -> str:
    """``home``: (user id, entry id, previous entry id) of each stream the event was written to."""
    data: dict[str, Any] = {}
    if event is not None and home:
        data["h"] = [event.post, event.author, event.committed_ms, [list(written) for written in home], event.kind]
        if event.boost:
            data["h"] += [event.boost, event.booster, event.visibility]
    if counts:
        data["c"] = [[post, likes, replies] for post, (likes, replies) in counts.items()]
    return json.dumps(data, separators=(",", ":"))


def _read_push(raw: bytes | str) -> tuple[list[Pushed], dict[int, tuple[int, int]]]:
    data = json.loads(raw)
    home: list[Pushed] = []
    if "h" in data:
        post, author, committed, pairs, *rest = data["h"]
        kind = rest[0] if rest and rest[0] in USER_KINDS else HOME
        if kind == HOME and len(rest) == 4 and rest[3] in VISIBILITY_CODES:  # a boost
            event = Event(HOME, int(post), int(author), rest[3], committed_ms=int(committed), boost=int(rest[1]),
                          booster=int(rest[2]))  # fmt: skip
        else:
            visibility = "direct" if kind == NOTE else "public"
            event = Event(kind, int(post), int(author), visibility, committed_ms=int(committed))
        home = [Pushed(int(u), Entry(str(i), event), str(rest[0]) if rest else None) for u, i, *rest in pairs]
    counts = {int(p): (int(likes), int(replies)) for p, likes, replies in data.get("c", ())}
    return home, counts


class LocalStreams:
    """The embedded mode's streams, in this process's memory (lost at restart: clients then resync)."""

    def __init__(self) -> None:
        self._streams: dict[str, deque[Entry]] = {}
        self._expires: dict[str, float] = {}
        self._last = (0, 0)
        self._on_posts: list[PostsHandler] = []
        self._on_push: list[PushHandler] = []
        self._on_reset: list[ResetHandler] = []

    def listen(self, on_posts: PostsHandler, on_push: PushHandler, on_reset: ResetHandler) -> None:
        self._on_posts.append(on_posts)
        self._on_push.append(on_push)
        self._on_reset.append(on_reset)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    def _add(self, key: str, event: Event | None, kept: int) -> str:
        stream = self._streams.setdefault(key, deque(maxlen=kept))
        entry = Entry(self._next_id(), event)  # type: ignore[arg-type]
        stream.append(entry)
        return entry.id

    async def publish_posts(self, events: Sequence[Event], *, retried_since_ms: int | None = None) -> bool:
        """As :meth:`RedisStreams.publish_posts`: events appended since ``retried_since_ms`` are not added again."""
        if retried_since_ms is not None:
            kept = self._streams.get(POSTS_STREAM, ())
            seen = {entry.event for entry in kept if parse_id(entry.id)[0] >= retried_since_ms}
            events = [event for event in events if event not in seen]
        for event in events:
            entry = Entry(self._add(POSTS_STREAM, event, POSTS_KEPT), event)
            for handler in self._on_posts:
                handler(entry)
        return True

    async def publish_counts(self, counts: dict[int, tuple[int, int]]) -> bool:
        for handler in self._on_push:
            handler([], counts)
        return True

    async def append_home(self, event: Event, user_ids: Sequence[int]) -> int:
        self._expire()
        home = []
        for user_id in user_ids:
            key = user_stream(user_id)
            stream = self._streams.get(key)
            if stream is None or (stream and stream[-1].event == event):
                continue  # no client of theirs was here lately; or a retried fan-out wrote it already
            prev = stream[-1].id if stream else None
            home.append(Pushed(user_id, Entry(self._add(key, event, USER_KEPT), event), prev))
        if home:
            for handler in self._on_push:
                handler(home, {})
        return len(home)

    async def open_user(self, user_id: int) -> bool:
        """Make the user's stream if it is missing (True if it was) and renew its retention."""
        self._expire()
        key = user_stream(user_id)
        created = key not in self._streams
        if created:
            self._add(key, None, USER_KEPT)  # a marker: the stream's first entry
        self._expires[key] = time.monotonic() + USER_RETENTION_MS / 1000
        return created

    async def touch(self, user_ids: Iterable[int]) -> None:
        until = time.monotonic() + USER_RETENTION_MS / 1000
        for user_id in user_ids:
            if (key := user_stream(user_id)) in self._streams:
                self._expires[key] = until

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, until in self._expires.items() if until < now]:
            self._streams.pop(key, None)
            self._expires.pop(key, None)

    async def replay(self, key: str, after: str) -> Replay | None:
        stream = self._streams.get(key)
        if not stream:
            return Replay([], False)
        position = parse_id(after)
        ids = [parse_id(e.id) for e in stream]
        if ids[0] > position:
            return Replay([], False)
        start = bisect.bisect_right(ids, position)
        found = [e for e in list(stream)[start:] if e.event is not None]
        return Replay(found[:REPLAY_LIMIT], len(found) <= REPLAY_LIMIT)

    async def tail(self, key: str) -> str | None:
        stream = self._streams.get(key)
        return stream[-1].id if stream else None


# K: user streams.  A: the event's fields as k1, v1, k2, v2 ..., then maxlen.  Appends to each stream that exists
# (unless its newest entry is this same event: a retried fan-out, whose announcement may have been lost); returns,
# for each stream that holds the event now, the stream, the event's entry id and the id of the entry before it.
_APPEND_HOME = """
local nfields = tonumber(A[1])
local fields = {}
for i = 1, nfields do fields[i] = A[1 + i] end
local maxlen = A[nfields + 2]
local written = {}
for _, key in ipairs(K) do
  if redis.call('EXISTS', key) == 1 then
    local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 2)
    local same = false
    if #last >= 1 then
      local f = last[1][2]
      same = #f == nfields
      for i = 1, nfields do if f[i] ~= fields[i] then same = false end end
    end
    written[#written + 1] = key
    if same then
      written[#written + 1] = last[1][1]
      written[#written + 1] = last[2] and last[2][1] or '0-0'
    else
      written[#written + 1] = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
      written[#written + 1] = last[1] and last[1][1] or '0-0'
    end
  end
end
return written
"""

# KEYS: a user stream.  ARGV: maxlen, retention ms.  Makes the stream (its first entry a marker) if it is missing.
_OPEN_USER = """
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'k', 'hello')
  created = 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return created
"""


class RedisStreams:
    """Streams in Redis through the process's link (an outage is "no answer", see ``feed.redis_link``)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._scripts = Scripts()
        self._open_script: Any = None
        self._on_posts: list[PostsHandler] = []
        self._on_push: list[PushHandler] = []
        self._on_reset: list[ResetHandler] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._epoch: bytes | None = None
        self._posts_at = "$"
        self._blocking: Redis | None = None

    def listen(self, on_posts: PostsHandler, on_push: PushHandler, on_reset: ResetHandler) -> None:
        self._on_posts.append(on_posts)
        self._on_push.append(on_push)
        self._on_reset.append(on_reset)

    async def start(self) -> None:
        self._blocking = self.link.client_like(timeout=_BLOCK_MS / 1000 + 3)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_posts()), loop.create_task(self._read_push())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._blocking is not None:
            await close_client(self._blocking)

    # -- writing

    async def publish_posts(self, events: Sequence[Event], *, retried_since_ms: int | None = None) -> bool:
        """Append to the posts stream; False if Redis did not take them. ``retried_since_ms``: these events may
        have been appended already by a relay that died (since then), so those found there are not added again."""
        if not events:
            return True

        async def publish(r: Any) -> bool:
            todo = list(events)
            if retried_since_ms is not None:
                seen = {tuple(e.event.fields().items()) for e in _decode_entries(
                    await r.xrange(POSTS_STREAM, min=f"{retried_since_ms}-0", max="+"))}  # fmt: skip
                todo = [e for e in todo if tuple(e.fields().items()) not in seen]
            async with r.pipeline(transaction=False) as pipe:
                for event in todo:
                    pipe.xadd(POSTS_STREAM, event.fields(), maxlen=POSTS_KEPT, approximate=True)
                await pipe.execute()
            return True

        return bool(await self.link.run(publish))

    async def publish_counts(self, counts: dict[int, tuple[int, int]]) -> bool:
        if not counts:
            return True
        message = _push_message([], None, counts)
        return await self.link.run(lambda r: self.link.publish(r, PUSH_CHANNEL, message)) is not None

    async def append_home(self, event: Event, user_ids: Sequence[int]) -> int:
        """Add "this post joined your home" to the streams of ``user_ids`` that exist, and announce it; how many
        streams hold it. Raises ConnectionError if Redis did not take it or the announcement (the caller's job is
        retried: the streams that have it already are announced again)."""
        if not user_ids:
            return 0
        fields = [x for pair in event.fields().items() for x in pair]

        async def append(r: Any) -> list[Any]:
            keys = [user_stream(u) for u in user_ids]
            args = [len(fields), *fields, USER_KEPT]
            done = await self._scripts.per_node(r, "append", _APPEND_HOME, keys, lambda some: (some, args))
            return [x for written in done for x in written]

        written = await self.link.run(append)
        if written is None:
            raise ConnectionError("Redis unavailable")
        by_key = {user_stream(u): u for u in user_ids}
        triples = zip(written[::3], written[1::3], written[2::3], strict=True)
        home = [(by_key[key.decode()], at.decode(), prev.decode()) for key, at, prev in triples]
        if home:
            message = _push_message(home, event, {})
            if await self.link.run(lambda r: self.link.publish(r, PUSH_CHANNEL, message)) is None:
                raise ConnectionError("Redis unavailable")
        return len(home)

    async def open_user(self, user_id: int) -> bool | None:
        """Make the user's stream if missing (True if it was) and renew its retention; None if Redis is down."""
        key = user_stream(user_id)

        async def open_stream(r: Any) -> bool:
            if self._open_script is None:
                self._open_script = r.register_script(_OPEN_USER)
            return bool(await self._open_script(keys=[key], args=[USER_KEPT, USER_RETENTION_MS]))

        return await self.link.run(open_stream)

    async def touch(self, user_ids: Iterable[int]) -> None:
        keys = [user_stream(u) for u in user_ids]
        if not keys:
            return

        async def touch(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(key, USER_RETENTION_MS)
                await pipe.execute()

        await self.link.run(touch)

    # -- reading

    async def replay(self, key: str, after: str) -> Replay | None:
        """Entries after ``after`` (exclusive); None if Redis is down."""

        async def read(r: Any) -> Replay:
            async with r.pipeline(transaction=False) as pipe:
                pipe.xrange(key, min="-", max="+", count=1)
                pipe.xrange(key, min=f"({after}", max="+", count=REPLAY_LIMIT + 1)
                first, rest = await pipe.execute()
            if not first or parse_id(first[0][0].decode()) > parse_id(after):
                return Replay([], False)
            return Replay(_decode_entries(rest[:REPLAY_LIMIT]), len(rest) <= REPLAY_LIMIT)

        return await self.link.run(read)

    async def tail(self, key: str) -> str | None:
        found = await self.link.run(lambda r: r.xrevrange(key, max="+", min="-", count=1))
        return found[0][0].decode() if found else None

    # -- listening

    def _reset(self, lost: bool) -> None:
        for handler in self._on_reset:
            handler(lost)

    async def _check_epoch(self) -> bool:
        """True if Redis lost its data since this process last looked."""
        client = self.link.client
        await client.set(EPOCH, secrets.token_hex(8), nx=True)
        epoch = await client.get(EPOCH)
        lost = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        return lost

    async def _link_up(self, limit: float = 10.0) -> None:
        """Until the process's link (which answers nothing while it thinks Redis is down) has noticed Redis is back:
        what the reset handlers do goes through it."""
        deadline = time.monotonic() + limit
        while not self.link.up and time.monotonic() < deadline:  # noqa: ASYNC110 - the link has no event to wait on
            await asyncio.sleep(0.05)

    async def _read_posts(self) -> None:
        await self._forever(self._read_posts_once)

    async def _read_push(self) -> None:
        await self._forever(self._read_push_once)

    async def _forever(self, once: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            try:
                await once()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                self.link.down(exc)
                if self._blocking is not None:
                    reseed(self._blocking, self.link.url)
                delay = min(delay * 2, 2.0)
            await asyncio.sleep(delay)

    async def _read_posts_once(self) -> None:
        assert self._blocking is not None
        if self._posts_at == "$":
            last = await self._blocking.xrevrange(POSTS_STREAM, count=1)
            self._posts_at = last[0][0].decode() if last else "0-0"
        while True:
            found = await self._blocking.xread({POSTS_STREAM: self._posts_at}, block=_BLOCK_MS, count=500)
            for _, raw in found or ():
                for entry_id, _fields in raw:
                    self._posts_at = entry_id.decode()
                for entry in _decode_entries(raw):
                    for handler in self._on_posts:
                        handler(entry)

    async def _read_push_once(self) -> None:
        pubsub = self.link.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(PUSH_CHANNEL)
            lost = await self._check_epoch()
            await self._link_up()
            # Subscribed first, then told what may have been missed: everything announced from here on arrives.
            self._reset(lost)
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None or message["type"] != "message":
                    continue
                try:
                    home, counts = _read_push(message["data"])
                except (ValueError, KeyError, TypeError):
                    log.warning("malformed push message ignored")
                    continue
                for handler in self._on_push:
                    handler(home, counts)
        finally:
            try:
                await asyncio.wait_for(pubsub.aclose(), timeout=1.0)
            except (RedisError, OSError, TimeoutError):
                pass


Streams = LocalStreams | RedisStreams
