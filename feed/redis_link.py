"""Redis as an optional accelerator: every call goes through :class:`RedisLink`, which turns an outage into
"no answer" instead of an error, logs it once, probes in the background and runs the recovery steps when Redis
answers again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
T = TypeVar("T")


def make_client(url: str) -> Redis:
    """Short timeouts: a slow Redis must not hold a page; the page falls back to the database."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry_on_timeout=False,
        health_check_interval=15,
    )
    return client


class RedisLink:
    def __init__(self, client: Redis, *, probe_every: float = 0.5, metrics: Any = None) -> None:
        self.client = client
        self.up = True
        self._probe_every = probe_every
        self._probe: asyncio.Task[None] | None = None
        self._recovery: list[Callable[[], Awaitable[None]]] = []
        self._errors = (
            metrics.counter("cipherfeed_redis_errors_total", "Redis calls that failed (then served without it)")
            if metrics is not None
            else None
        )

    def on_recovery(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` (in registration order) each time Redis answers again after an outage."""
        self._recovery.append(step)

    async def run(self, operation: Callable[[Redis], Awaitable[T]]) -> T | None:
        """``operation(client)``, or None while Redis is down or when this call fails.

        While down, only the recovery steps (run by the probe task) reach Redis.
        """
        if not self.up and (self._probe is None or asyncio.current_task() is not self._probe):
            return None
        try:
            return await operation(self.client)
        except (RedisError, OSError) as exc:
            self.down(exc)
            return None

    def down(self, exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.inc()
        if not self.up:
            return
        self.up = False
        log.warning("Redis unavailable (%s); serving from memory and the database until it is back", type(exc).__name__)
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        # Pooled connections opened before the outage may look open but be dead; start afresh after it.
        await self.client.connection_pool.disconnect()
        while True:
            await asyncio.sleep(self._probe_every)
            try:
                await self.client.ping()
            except (RedisError, OSError):
                continue
            try:
                for step in self._recovery:
                    await step()
            except (RedisError, OSError):
                continue  # went away again during recovery: keep probing
            if not await self._still_up():
                continue
            self.up = True
            self._probe = None
            log.warning("Redis is back; caches were flushed and missed invalidations replayed")
            return

    async def _still_up(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError):
            return False
        return True

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()
