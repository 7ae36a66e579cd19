"""Job queues behind ``feed.services.jobs.Queue``: arq on Redis (scaled mode), or an in-process runner (embedded).

Both take a job name and integer arguments only, so that nothing readable can reach a queue; both drop a job
whose key is already queued (arq's job id), and retry a failing job with growing delays before recording it as
failed. The in-process runner runs the same job functions as the arq worker (``jobs/``), in this process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

JobFunction = Callable[..., Awaitable[Any]]
MAX_TRIES = 5


def check_args(name: str, args: tuple[Any, ...]) -> None:
    """Job arguments are ids and small numbers: anything else is a bug, refused before it reaches a queue."""
    for arg in args:
        if type(arg) is not int:
            raise TypeError(f"job {name}: arguments must be ints, not {type(arg).__name__}")


def retry_delay(tries: int) -> float:
    """Seconds before try ``tries + 1``: 1, 4, 9, 16 ..."""
    return float(tries * tries)


class ArqQueue:
    """Jobs for arq workers (``cipherfeed worker``), through an ``arq.connections.ArqRedis`` pool. ``link`` is the
    process's Redis link: while it knows Redis is down, nothing is tried (a page must not wait for a queue)."""

    def __init__(self, pool: Any, link: Any = None) -> None:
        self.pool = pool
        self.link = link

    async def enqueue(
        self, name: str, *args: int, key: str | None = None, delay: float = 0, strict: bool = False
    ) -> bool:
        """Queue a job; False if it was not (a job of that key waits already, or Redis is away). ``strict``: Redis
        being away raises ConnectionError instead (the outbox relay then keeps the job and tries again)."""
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
        from arq.constants import default_queue_name

        try:
            return int(await self.pool.zcard(default_queue_name))
        except RedisError as exc:
            raise ConnectionError("Redis unavailable") from exc

    async def close(self) -> None:
        await self.pool.aclose()


class LocalQueue:
    """Runs jobs as tasks of this process (the embedded mode has no workers), with arq's keys and retries."""

    def __init__(self, functions: Mapping[str, JobFunction], *, max_tries: int = MAX_TRIES) -> None:
        self.functions = dict(functions)
        self.max_tries = max_tries
        self.ctx: dict[str, Any] = {}
        self.on_failure: Callable[[str, tuple[int, ...], BaseException], Awaitable[None]] | None = None
        self._queued: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = 0

    async def enqueue(
        self, name: str, *args: int, key: str | None = None, delay: float = 0, strict: bool = False
    ) -> bool:
        check_args(name, args)
        if name not in self.functions:
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

    async def _run(self, name: str, args: tuple[int, ...], key: str | None, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            self._waiting -= 1
            if key is not None:
                self._queued.discard(key)  # a job queued from now on runs again, as with arq's job ids
            for tries in range(1, self.max_tries + 1):
                try:
                    await self.functions[name]({**self.ctx, "job_try": tries}, *args)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if tries == self.max_tries:
                        log.error("job %s failed for good after %d tries (%s)", name, tries, type(exc).__name__)
                        if self.on_failure is not None:
                            await self.on_failure(name, args, exc)
                        return
                    log.warning("job %s failed (%s); try %d in %.0f s", name, type(exc).__name__, tries + 1,
                                retry_delay(tries))  # fmt: skip
                    await asyncio.sleep(retry_delay(tries))
        except asyncio.CancelledError:
            pass

    async def drain(self, grace: float = 10.0) -> None:
        """Wait for the jobs under way (at shutdown, or in tests), cancelling what is left after ``grace`` seconds."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
