"""PostgreSQL streaming replicas, for the reads that tolerate a short lag and that no cache keeps (timeline and
profile pages past what is cached): what a cache keeps is read from the primary, so that no stale row outlives the
invalidation that should have removed it.

**How fresh a replica is.** Every :data:`POLL_SECONDS` this process notes the primary's write-ahead log position
(``pg_current_wal_lsn()``) with the time it asked, and each replica's replayed position
(``pg_last_wal_replay_lsn()``). A replica that has replayed past a noted position holds every commit made before
that note: the note's time is how fresh the replica is, and its lag is the time since then (one clock: this
process's). A replica that does not answer, or was promoted, is left out until it answers again as a replica.

**Read-your-writes.** When a signed-in person (or an app with their token) has written (any request but a GET or
HEAD), the primary's position after it is kept, before the answer goes out, in this process and in Redis
(``cf:wrote:{u<id>}``, for the other processes) for :attr:`Replicas.max_lag` seconds. Their reads then go to a replica
only once it has replayed that far: a person sees their own post and like at once. Past ``max_lag`` every replica
that may be read has it anyway. While Redis is away, a signed-in person's reads go to the primary (they may have
written through another process); a visitor's go to a replica.

A read sent to a replica that fails because the replica went away is run again on the primary (the replica is left
out until it answers again): stopping a replica costs no request. So is one the replica cancelled for a conflict
with the changes it replays.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from feed import db
from feed.redis_link import RedisLink

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_SECONDS = 0.5
CONNECT_TIMEOUT = 2  # seconds: a replica that does not answer is skipped, not waited for
# Seconds a statement on a replica may take (its pooled connections' pre-ping included): a replica that stopped
# answering without closing its connections is left out after this, instead of holding requests and the poll.
QUERY_TIMEOUT = 5
_NOTES = 64  # the primary's positions kept (at POLL_SECONDS each: half a minute)


def lsn(raw: str | None) -> int | None:
    """A ``pg_lsn`` (``16/B374D848``) as a number."""
    if not raw:
        return None
    high, _, low = str(raw).partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _recovery_conflict(exc: BaseException) -> bool:
    """A replica cancelled the query because the WAL it must replay conflicts with it (SQLSTATE 40001, or a
    deadlock with recovery, 40P01): the primary answers instead, and the replica stays in use."""
    cause = getattr(exc, "orig", None)
    for found in (cause, getattr(cause, "__cause__", None)):
        state = getattr(found, "sqlstate", None) or getattr(found, "pgcode", None)
        if state in ("40001", "40P01"):
            return True
    return False


def wrote_key(user_id: int) -> str:
    return f"cf:wrote:{{u{user_id}}}"


@dataclass(eq=False)
class Replica:
    name: str  # host:port/database, no credentials (for metrics and logs)
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    up: bool = False
    replayed: int | None = None  # its replayed position at the last poll
    fresh_as_of: float | None = None  # it holds every commit made before this time (this process's clock)

    def lag(self, now: float) -> float | None:
        return None if self.fresh_as_of is None else max(0.0, now - self.fresh_as_of)


@dataclass(eq=False)
class Replicas:
    primary: AsyncEngine
    replicas: list[Replica]
    max_lag: float
    link: RedisLink | None = None
    _notes: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_NOTES))
    _wrote: dict[int, tuple[int, float]] = field(default_factory=dict)  # user -> (position, until)
    _task: asyncio.Task[None] | None = None
    _reads: Any = None

    @classmethod
    def open(cls, primary: AsyncEngine, urls: Sequence[str], *, max_lag: float, link: RedisLink | None,
             metrics: Any = None) -> Replicas:  # fmt: skip
        replicas = []
        for url in urls:
            parsed = make_url(url)
            engine = db.make_engine(url, pool_size=5, connect_timeout=CONNECT_TIMEOUT, command_timeout=QUERY_TIMEOUT)
            read = async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
            name = f"{parsed.host}:{parsed.port or 5432}/{parsed.database}"
            replicas.append(Replica(name, engine, read))
        made = cls(primary, replicas, max_lag, link)
        if metrics is not None:
            made._reads = metrics.counter("cipherfeed_db_reads_total", "Lag-tolerant reads, by where they went",
                                          ("target",))  # fmt: skip
            metrics.gauge_callback("cipherfeed_db_replica_up", "1 while a replica answers as a replica",
                                   made._up_gauge, ("replica",), mode="livemin")  # fmt: skip
            metrics.gauge_callback("cipherfeed_db_replica_lag_seconds",
                                   "How far behind the primary a replica is (seconds since the newest commit it "
                                   "may be missing)", made._lag_gauge, ("replica",), mode="livemax")  # fmt: skip
        return made

    def _up_gauge(self) -> dict[tuple[str, ...], float]:
        return {(r.name,): float(r.up) for r in self.replicas}

    def _lag_gauge(self) -> dict[tuple[str, ...], float]:
        now = time.monotonic()
        return {(r.name,): lag for r in self.replicas if (lag := r.lag(now)) is not None}

    async def start(self) -> None:
        try:
            await self.poll()
        except Exception as exc:  # the primary is away: the outage handling says so; polling goes on
            log.debug("replica poll failed (%s)", type(exc).__name__)
        self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for replica in self.replicas:
            await replica.engine.dispose()

    # -- freshness

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.poll()
            except Exception as exc:  # the primary is away: the replicas' state stays as it was
                log.debug("replica poll failed (%s)", type(exc).__name__)

    async def poll(self) -> None:
        """Note the primary's position, then ask each replica how far it has replayed."""
        asked = time.monotonic()
        async with self.primary.connect() as conn:
            position = lsn((await conn.execute(text("SELECT pg_current_wal_lsn()::text"))).scalar())
        if position is not None:
            self._notes.append((asked, position))
        await asyncio.gather(*(self._ask(replica) for replica in self.replicas))

    async def _ask(self, replica: Replica) -> None:
        try:
            async with replica.engine.connect() as conn:
                row = (await conn.execute(
                    text("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"))).one()  # fmt: skip
        except Exception as exc:
            self._down(replica, exc)
            return
        if not row[0]:
            self._down(replica, RuntimeError("not a replica (promoted?)"))
            return
        replica.replayed = lsn(row[1])
        fresh = [at for at, position in self._notes if replica.replayed is not None and position <= replica.replayed]
        if fresh:
            replica.fresh_as_of = max(fresh)
        if not replica.up:
            replica.up = True
            log.warning("database replica %s answers; lag-tolerant reads go to it again", replica.name)

    def _down(self, replica: Replica, exc: BaseException) -> None:
        if replica.up:
            log.warning("database replica %s unavailable (%s); its reads go to the primary", replica.name,
                        type(exc).__name__)  # fmt: skip
        replica.up = False

    # -- read-your-writes

    async def wrote(self, user_id: int) -> None:
        """``user_id`` has just written: their next reads need a replica that has replayed this far."""
        async with self.primary.connect() as conn:
            position = lsn((await conn.execute(text("SELECT pg_current_wal_lsn()::text"))).scalar())
        if position is None:
            return
        earlier = self._wrote.get(user_id)
        if earlier is not None and earlier[0] > position:
            position = earlier[0]  # a write that answered later but read the position first must not lower it
        self._wrote[user_id] = (position, time.monotonic() + self.max_lag)
        if len(self._wrote) > 10_000:
            now = time.monotonic()
            self._wrote = {u: mark for u, mark in self._wrote.items() if mark[1] > now}
        if self.link is not None:
            ms = max(1, int(self.max_lag * 1000))
            await self.link.run(lambda r: r.set(wrote_key(user_id), position, px=ms))

    async def _needs(self, reader: int | None) -> int | None:
        """The position a replica must have replayed for ``reader`` (0: any fresh one will do); None: the primary."""
        if reader is None:
            return 0
        mark = self._wrote.get(reader)
        here = mark[0] if mark is not None and mark[1] > time.monotonic() else 0
        if self.link is None:
            return here
        found = await self.link.run(lambda r: r.get(wrote_key(reader)))
        if found is None and not self.link.up:
            return None  # Redis away: they may have written through another process
        return max(here, int(found) if found else 0)

    async def choose(self, reader: int | None) -> Replica | None:
        """A replica ``reader`` may read from, or None (the primary)."""
        now = time.monotonic()
        usable = [r for r in self.replicas if r.up and (lag := r.lag(now)) is not None and lag <= self.max_lag]
        if not usable:
            return None
        needed = await self._needs(reader)
        if needed is None:
            return None
        usable = [r for r in usable if r.replayed is not None and r.replayed >= needed]
        return random.choice(usable) if usable else None

    async def read(self, reader: int | None, work: Callable[[AsyncSession], Awaitable[T]],
                   primary: Callable[[], AsyncSession]) -> tuple[T, bool]:  # fmt: skip
        """``work(session)`` on a replica ``reader`` may read from, else (or if the replica fails) on the primary;
        with True if a replica answered."""
        replica = await self.choose(reader)
        if replica is not None:
            try:
                async with replica.sessions() as session:
                    found = await work(session)
                self._count("replica")
                return found, True
            except Exception as exc:
                if db.unreachable(exc):
                    self._down(replica, exc)
                elif not _recovery_conflict(exc):
                    raise
        async with primary() as session:
            found = await work(session)
        self._count("primary")
        return found, False

    def _count(self, target: str) -> None:
        if self._reads is not None:
            self._reads.labels(target=target).inc()

    def state(self) -> list[str]:
        """One line per replica, for /readyz."""
        now = time.monotonic()
        lines = []
        for r in self.replicas:
            lag = r.lag(now)
            lag_text = "unknown" if lag is None else f"{lag:.1f} s"
            usable = r.up and lag is not None and lag <= self.max_lag
            lines.append(f"replica {r.name}: {'up' if r.up else 'down'}, lag {lag_text}"
                         f"{'' if usable else ' (not read)'}")  # fmt: skip
        return lines
