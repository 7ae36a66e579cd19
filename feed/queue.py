"""Background jobs as services see them: a :class:`Queue` that takes a job name and integer arguments only, with two
implementations, arq on Redis (scaled mode) and an in-process runner (embedded mode).

Nothing readable can reach a queue: arguments are ids and small numbers (:func:`check_args`). Both queues drop a job
whose key is already queued (arq's job id). How a job is tried, retried and recorded is decided in one place,
``jobs.runner.attempt``, which both the arq worker and the in-process runner call; arq itself (its pool, its keys)
stays behind :class:`ArqQueue` here and the worker in ``jobs/worker.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from feed.redis_link import TIMEOUTS, close_client, parse_redis_url

log = logging.getLogger(__name__)

JobFunction = Callable[..., Awaitable[Any]]  # ``async def name(ctx, *ids)``

# One try of a job (``jobs.runner.attempt``): None when it is over (done, or failed for good and recorded),
# otherwise the seconds to wait before the next try.
Attempt = Callable[[dict[str, Any], str, tuple[int, ...]], Awaitable[float | None]]


class Queue(Protocol):
    async def enqueue(
        self, name: str, *args: int, key: str | None = None, delay: float = 0, strict: bool = False
    ) -> bool:
        """Queue job ``name``; with ``key``, not if a job of that key is already queued. False if not queued.
        ``strict``: raise ConnectionError when the queue is unreachable, instead of giving up on the job."""
        ...

    async def depth(self) -> int:
        """Jobs waiting (not counting those running)."""
        ...

    async def drop_keyed(self, suffix: str) -> int:
        """Drop the waiting jobs whose key ends with ``suffix`` (``:<user id>``); how many went."""
        ...


def check_args(name: str, args: tuple[Any, ...]) -> None:
    """Job arguments are ids and small numbers: anything else is a bug, refused before it reaches a queue."""
    for arg in args:
        if type(arg) is not int:
            raise TypeError(f"job {name}: arguments must be ints, not {type(arg).__name__}")


@dataclass(frozen=True, slots=True)
class JobMetrics:
    """Queue depth, job durations and failures, and fan-out latency, in the process's metrics registry."""

    waiting: Any  # Gauge, set when /metrics is read
    seconds: Any  # Histogram by job name
    failures: Any  # Counter by job name
    fanout_seconds: Any  # Histogram

    @classmethod
    def register(cls, registry: Any) -> JobMetrics:
        return cls(
            waiting=registry.gauge("cipherfeed_jobs_waiting", "Jobs queued and not yet started"),
            seconds=registry.histogram("cipherfeed_job_seconds", "Job run time", ("job",)),
            failures=registry.counter("cipherfeed_job_failures_total", "Job runs that raised", ("job",)),
            fanout_seconds=registry.histogram(
                "cipherfeed_fanout_seconds",
                "From a post's creation to the last home feed its fan-out wrote",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
        )


def arq_settings(url: str) -> Any:
    """arq's settings for the worker: one server, or the primary the Sentinels watch (arq follows a failover)."""
    from arq.connections import RedisSettings

    target = parse_redis_url(url)
    if target.kind == "sentinel":
        return RedisSettings(host=list(target.nodes), sentinel=True, sentinel_master=target.service,
                             database=target.db, username=target.username, password=target.password,
                             ssl=target.tls)  # fmt: skip
    return RedisSettings.from_dsn(url)


class ArqQueue:
    """Jobs for arq workers (``cipherfeed worker``), through an ``arq.connections.ArqRedis`` pool. ``link`` is the
    process's Redis link: while it knows Redis is down, nothing is tried (a page must not wait for a queue)."""

    def __init__(self, pool: Any, link: Any = None) -> None:
        self.pool = pool
        self.link = link

    @classmethod
    def from_url(cls, url: str, link: Any = None) -> ArqQueue:
        from arq.connections import ArqRedis

        # Not arq's create_pool: that one pings Redis at start, and the server must start (and serve) without it.
        # Short timeouts, as for the cache: a slow Redis must not hold a page.
        target = parse_redis_url(url)
        if target.kind == "sentinel":
            from redis.asyncio.sentinel import Sentinel

            sentinel = Sentinel(list(target.nodes), sentinel_kwargs=dict(TIMEOUTS), ssl=target.tls,  # type: ignore[no-untyped-call]
                                username=target.username, password=target.password, **TIMEOUTS)  # fmt: skip
            return cls(sentinel.master_for(target.service, redis_class=ArqRedis, db=target.db), link)
        pool = ArqRedis.from_url(url, socket_timeout=TIMEOUTS["socket_timeout"],
                                 socket_connect_timeout=TIMEOUTS["socket_connect_timeout"])  # fmt: skip
        return cls(pool, link)

    async def enqueue(
        self, name: str, *args: int, key: str | None = None, delay: float = 0, strict: bool = False
    ) -> bool:
        check_args(name, args)
        if self.link is not None and not self.link.up:
            log.debug("job %s not queued: Redis is down", name)
            if strict:
                raise ConnectionError("Redis is down")
            return False
        try:
            job = await self.pool.enqueue_job(name, *args, _job_id=key, _defer_by=delay or None)
        except (RedisError, ConnectionError, OSError) as exc:
            if strict:
                raise ConnectionError("Redis unavailable") from exc
            # Redis is away: so is everything the job would write to (feeds), and what it would fix is rebuilt
            # when readers find it missing. Say so once per failure, without the job's arguments.
            log.warning("job %s not queued: Redis unavailable (%s)", name, type(exc).__name__)
            return False
        return job is not None

    async def depth(self) -> int:
        try:
            return int(await self.pool.zcard(self.pool.default_queue_name))
        except RedisError as exc:
            raise ConnectionError("Redis unavailable") from exc

    async def drop_keyed(self, suffix: str) -> int:
        """arq keeps a waiting job as a member of its queue (a sorted set of job ids) plus the job's own key and,
        when deferred for a retry, a retry key; all go in one transaction. A job a worker has taken runs to its end.
        """
        from arq.constants import job_key_prefix, retry_key_prefix

        name = self.pool.default_queue_name
        ending = suffix.encode()
        try:
            scan = self.pool.zscan_iter(name, match=f"*{suffix}", count=1000)
            found = [member async for member, _ in scan if member.endswith(ending)]
            if not found:
                return 0
            async with self.pool.pipeline(transaction=True) as pipe:
                for job_id in found:
                    pipe.zrem(name, job_id)
                    pipe.delete(job_key_prefix + job_id.decode(), retry_key_prefix + job_id.decode())
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ConnectionError("Redis unavailable") from exc
        return sum(int(n) for n in results[0::2])

    async def close(self) -> None:
        await close_client(self.pool)


class LocalQueue:
    """Runs jobs as tasks of this process (the embedded mode has no workers), with arq's keys and the same tries
    (``attempt``, given the job's try number as ``ctx["job_try"]``)."""

    def __init__(self, names: Collection[str], attempt: Attempt) -> None:
        self.names = frozenset(names)
        self.attempt = attempt
        self.ctx: dict[str, Any] = {}
        self._queued: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = 0

    async def enqueue(
        self, name: str, *args: int, key: str | None = None, delay: float = 0, strict: bool = False
    ) -> bool:
        check_args(name, args)
        if name not in self.names:
            raise LookupError(f"no job named {name}")
        if key is not None:
            if key in self._queued:
                return False
            self._queued.add(key)
        self._waiting += 1
        task = asyncio.get_running_loop().create_task(self._run(name, args, key, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def depth(self) -> int:
        return self._waiting

    async def drop_keyed(self, suffix: str) -> int:
        return 0  # jobs start at once here: there is no waiting job to drop

    async def _run(self, name: str, args: tuple[int, ...], key: str | None, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            self._waiting -= 1
            if key is not None:
                self._queued.discard(key)  # a job queued from now on runs again, as with arq's job ids
            tries = 1
            while (wait := await self.attempt({**self.ctx, "job_try": tries}, name, args)) is not None:
                await asyncio.sleep(wait)
                tries += 1
        except asyncio.CancelledError:
            pass

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def drain(self, grace: float = 10.0) -> None:
        """Wait for the jobs under way (at shutdown, or in tests), cancelling what is left after ``grace`` seconds."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
