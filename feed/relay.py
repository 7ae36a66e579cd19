"""The outbox relay: carries out what committed writes recorded (``feed.events.Effects``), then deletes the rows.

Every web process and worker runs a relay; one at a time works:

- **PostgreSQL:** the relay that holds a session-level advisory lock on its own connection works; it LISTENs on
  that connection for the NOTIFY each write sends at commit, and also looks every :data:`POLL_SECONDS`. When its
  process dies, the connection closes, the lock goes with it, and a standby (each tries every
  :data:`STANDBY_SECONDS`) takes over and relays what is left. Its queries run on the lock's connection, so a
  relay that lost its connection (and so the lock) cannot go on relaying beside the new one.
- **SQLite (embedded):** one server process; its relay is woken by its own writes and looks every
  :data:`POLL_SECONDS` for rows written by other processes (the CLI).

Delivery is at least once: a row is deleted only after everything in it was done. A relay that dies half way leaves
the row, which the next one does again; invalidations and keyed jobs are harmless twice, queued fan-outs are
idempotent, and events of a row tried before are first looked for in the posts stream (see ``feed.streams``). While
Redis is down nothing is relayed (the rows wait), so events written meanwhile are delivered once it is back.

Counts (likes, replies) are read from the database when published, so a count is never older than the last commit,
and coalesced per post: at most one publish per post every :data:`COUNTS_EVERY` seconds (the last change of a burst
is sent when its interval ends; a relay that dies within that moment loses that one live update, not the count).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from feed.bus import Bus, Invalidation
from feed.cache import SPACES, Cache, Space
from feed.events import NOTE, Effects, Event
from feed.redis_link import RedisLink
from feed.storage import outbox as store
from feed.streams import Streams

log = logging.getLogger(__name__)

BATCH = 200
POLL_SECONDS = 0.5
STANDBY_SECONDS = 1.0
COUNTS_EVERY = 0.25
_LOCK = 0x63667278  # "cfrx": one relay at a time per database
_SPACES: dict[str, Space] = {space.name: space for space in SPACES}


class Relay:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cache: Cache,
        bus: Bus,
        queue: Any,
        streams: Streams,
        forget: Callable[[int], None],
        link: RedisLink | None,
        metrics: Any = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.bus = bus
        self.queue = queue
        self.streams = streams
        self.forget = forget
        self.link = link
        self.leader = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._counts_sent: dict[int, float] = {}  # post -> when its counts were last published (monotonic)
        self._counts_due: dict[int, float] = {}  # post -> when its deferred publish is due
        self._relayed = self._lag = self._events = None
        if metrics is not None:
            self._relayed = metrics.counter("cipherfeed_outbox_relayed_total", "Outbox rows relayed")
            self._events = metrics.counter(
                "cipherfeed_events_relayed_total", "Live events and count updates published", ("kind",)
            )
            self._lag = metrics.histogram(
                "cipherfeed_outbox_relay_seconds",
                "From a write's commit to its outbox row being relayed",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            )

    def poke(self) -> None:
        """A write of this process committed: relay soon (the leader; elsewhere NOTIFY or polling does it)."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=3.0)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                if self.engine.dialect.name == "postgresql":
                    await self._lead_postgresql()
                else:
                    await self._lead(None)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except (OSError, DBAPIError, OperationalError) as exc:
                if self.leader:
                    log.warning("outbox relay lost its database connection (%s); trying again", type(exc).__name__)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                log.error("outbox relay failed (%s); trying again", type(exc).__name__)
                delay = min(delay * 2, 2.0)
            finally:
                self.leader = False
            await asyncio.sleep(delay)

    async def _lead_postgresql(self) -> None:
        async with AsyncExitStack() as stack:
            conn = await stack.enter_async_context(self.engine.connect())
            # Never back to the pool: a pooled connection would keep the session's lock after this relay stopped.
            stack.push_async_callback(conn.invalidate)
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            while True:  # a standby until the leader's connection goes
                if await conn.scalar(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK}):
                    break
                await asyncio.sleep(STANDBY_SECONDS)
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.add_listener(store.CHANNEL, self._notified)
            await self._lead(conn)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _lead(self, conn: AsyncConnection | None) -> None:
        """Relay until cancelled (or the connection fails)."""
        self.leader = True
        while True:
            self._wake.clear()
            done = await self._relay_batch(conn)
            await self._publish_due_counts(conn)
            if done == BATCH:
                continue  # more waiting
            timeout = POLL_SECONDS
            if self._counts_due:
                timeout = max(0.0, min(timeout, min(self._counts_due.values()) - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _relay_batch(self, conn: AsyncConnection | None) -> int:
        """Relay one batch of rows; how many were relayed (0 also while Redis is down)."""
        if self.link is not None and not self.link.up:
            return 0
        async with AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self.engine.connect())
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = await store.take(conn, BATCH)
            if not rows:
                return 0
            ids = [row.id for row in rows]
            if not await self._carry_out(rows):
                return 0  # Redis went away: the rows stay, and are done again when it is back
            await store.remove(conn, ids)
            await self._count(conn, rows)
        return len(rows)

    async def _carry_out(self, rows: Sequence[Any]) -> bool:
        parts = []
        for row in rows:
            try:
                parts.append((row, Effects.decode(row.effects)))
            except (ValueError, KeyError, TypeError):
                log.error("outbox row %s is malformed; dropped", row.id)  # written by a newer or broken release
        keys = [(_SPACES[space], key) for _, e in parts for space, key in e.invalidate if space in _SPACES]
        if keys:
            await self.cache.invalidate(keys)
        await self.cache.note_shown(i for _, e in parts for i in e.shown)  # after the invalidation: feed.cache.shown
        if users := sorted({u for _, e in parts for u in e.forget_users}):
            for user_id in users:
                self.forget(user_id)
            await self.bus.publish(Invalidation(users=users))
        # Events before jobs: a client waits for the event, nobody for the job to be queued.
        if not await self._publish_events(parts):
            return False
        try:
            for _, effects in parts:
                for job in effects.jobs:
                    await self.queue.enqueue(job.name, *job.args, key=job.key, strict=True)
        except ConnectionError:
            return False  # the queue is away: the rows stay, and go again (a job queued twice is harmless)
        self._take_counts({post for _, e in parts for post in e.counts})
        return self.link is None or self.link.up

    async def _publish_events(self, parts: Sequence[tuple[Any, Effects]]) -> bool:
        fresh: list[Event] = []
        retried: list[Event] = []
        since: int | None = None
        for row, effects in parts:
            stamped = [_stamped(event, row.created_at) for event in effects.events]
            if row.attempts > 1:  # a relay may have published these before it died
                retried += stamped
                created_ms = int(row.created_at.timestamp() * 1000)
                since = created_ms if since is None else min(since, created_ms)
            else:
                fresh += stamped
        notes = [event for event in (*retried, *fresh) if event.kind == NOTE]
        retried = [event for event in retried if event.kind != NOTE]
        fresh = [event for event in fresh if event.kind != NOTE]
        if retried and not await self.streams.publish_posts(retried, retried_since_ms=(since or 0) - 5_000):
            return False
        if fresh and not await self.streams.publish_posts(fresh):
            return False
        try:
            for note in notes:  # to the stream of the user it is for (an entry written before is not written again)
                await self.streams.append_home(note, [note.author])
        except ConnectionError:
            return False
        if self._events is not None:
            for event in (*retried, *fresh):
                self._events.labels(event.kind).inc()
        return True

    def _take_counts(self, posts: set[int]) -> None:
        now = time.monotonic()
        for post in posts:
            last = self._counts_sent.get(post, -1e9)
            self._counts_due[post] = min(self._counts_due.get(post, 1e18), max(now, last + COUNTS_EVERY))

    async def _publish_due_counts(self, conn: AsyncConnection | None) -> None:
        now = time.monotonic()
        due = [post for post, when in self._counts_due.items() if when <= now]
        if not due:
            return
        async with AsyncExitStack() as stack:
            if conn is None:
                conn = await stack.enter_async_context(self.engine.connect())
            counts = await store.counts(conn, due)
        if not await self.streams.publish_counts(counts):
            return  # Redis is down: tried again when the loop comes round
        for post in due:
            del self._counts_due[post]
            self._counts_sent[post] = now
        if self._events is not None and counts:
            self._events.labels("counts").inc(len(counts))
        if len(self._counts_sent) > 10_000:
            self._counts_sent = {p: t for p, t in self._counts_sent.items() if now - t < COUNTS_EVERY}

    async def _count(self, conn: AsyncConnection, rows: Sequence[Any]) -> None:
        if self._relayed is not None:
            self._relayed.inc(len(rows))
        if self._lag is not None:
            now = time.time()
            for row in rows:
                self._lag.observe(max(0.0, now - row.created_at.timestamp()))


def _stamped(event: Event, committed: Any) -> Event:
    """The event with its write's commit time (for the delivery-lag metric)."""
    if event.committed_ms:
        return event
    return Event(event.kind, event.post, event.author, event.visibility, event.mentions, event.reply_to,
                 int(committed.timestamp() * 1000))  # fmt: skip
