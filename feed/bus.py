"""Invalidations between processes: Redis pub/sub with sequence numbers, or in-process in embedded mode.

A message names cache keys and user ids, never values. Each carries a sequence number from one Redis counter,
incremented and published in one script, so every subscriber sees them in order. A subscriber that sees a number
jump (a message was lost) or whose connection drops flushes its whole L1: it cannot know what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.exceptions import RedisError

from feed.redis_link import FAILURES, RedisLink

log = logging.getLogger(__name__)

CHANNEL = "cf:bus"
SEQUENCE = "cf:bus:seq"
LISTEN_SECONDS = 2.0  # how long a recovery waits for the listener to subscribe again before it tries once more
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], seq .. '|' .. ARGV[2])
return seq
"""


@dataclass(frozen=True, slots=True)
class Invalidation:
    keys: Sequence[str] = ()  # cache keys to drop from L1
    users: Sequence[int] = ()  # users whose unwrapped keys to forget
    sent_at: float = field(default_factory=time.time)


Handler = Callable[[Invalidation], None]
ResetHandler = Callable[[], None]


class Bus(Protocol):
    """Invalidations between the processes of a deployment. ``publish`` reaches *other* processes only (the
    publisher has applied its own change); ``on_message`` handlers get theirs; ``on_reset`` handlers run when
    messages may have been lost (every cached value is then suspect)."""

    def on_message(self, handler: Handler) -> None: ...

    def on_reset(self, handler: ResetHandler) -> None: ...

    async def publish(self, message: Invalidation) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def listening(self) -> None: ...


class _Handlers:
    """Who to tell: the part every bus shares."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._resets: list[ResetHandler] = []

    def on_message(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def on_reset(self, handler: ResetHandler) -> None:
        self._resets.append(handler)


class LocalBus(_Handlers):
    """Embedded mode: one process, no one else to tell."""

    async def publish(self, message: Invalidation) -> None:
        pass

    async def start(self) -> None:
        pass

    async def listening(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class RedisBus(_Handlers):
    """Scaled mode: Redis pub/sub, with the sequence numbers that tell a subscriber it missed something."""

    def __init__(self, link: RedisLink, *, metrics: Any = None) -> None:
        super().__init__()
        self.link = link
        self.origin = secrets.token_hex(8)
        self.last_seq = 0
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._retry = asyncio.Event()  # cuts the listener's back-off short
        self._script: Any = None
        self._sent = self._applied = self._lag = None
        if metrics is not None:
            self._sent = metrics.counter("cipherfeed_invalidations_sent_total", "Invalidation messages published")
            self._applied = metrics.counter(
                "cipherfeed_invalidations_applied_total", "Invalidation messages from other processes applied"
            )
            self._lag = metrics.histogram(
                "cipherfeed_invalidation_lag_seconds",
                "From publishing an invalidation to applying it in another process",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            )

    async def publish(self, message: Invalidation) -> None:
        body = json.dumps(
            {"o": self.origin, "t": message.sent_at, "k": list(message.keys), "u": list(message.users)},
            separators=(",", ":"),
        )

        async def send(r: Any) -> Any:
            if self._script is None:
                self._script = r.register_script(_PUBLISH)
            return await self._script(keys=[SEQUENCE], args=[CHANNEL, body])

        if await self.link.run(send) is not None and self._sent is not None:
            self._sent.inc()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # A listener cancelled mid-subscribe can take a moment to let go of its connection; do not wait long.
            await asyncio.wait({self._task}, timeout=2.0)

    async def listening(self) -> None:
        """Return once this process is subscribed again (raises ConnectionError after a while): a recovery step,
        so that Redis counts as back, and L1 is filled from it again, only once invalidations reach this process.
        Without it, a value read from a Redis that kept its data (a cluster node's append-only file) before the
        relay invalidated it would stay in L1, its invalidation published before this process listened."""
        self._retry.set()
        try:
            async with asyncio.timeout(LISTEN_SECONDS):
                await self.ready.wait()
        except TimeoutError:
            raise ConnectionError("not subscribed to invalidations yet") from None

    def _reset(self, why: str) -> None:
        log.info("flushing this process's cache: %s", why)
        for handler in self._resets:
            handler()

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                if self._stopping:
                    return
                # Back off while Redis stays away; a connection that had subscribed starts the count again.
                delay = 0.1 if self.ready.is_set() else min(delay * 2, 2.0)
                self.ready.clear()
                self.link.down(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), delay)
            self._retry.clear()

    async def _listen(self) -> None:
        pubsub = self.link.pubsub(near=SEQUENCE, ignore_subscribe_messages=True)  # the node that publishes
        try:
            await pubsub.subscribe(CHANNEL)
            # Subscribed first, then read the counter: anything published after this point reaches us.
            self.last_seq = int(await self.link.client.get(SEQUENCE) or 0)
            self._reset("(re)subscribed to invalidations")
            self.ready.set()
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is not None and message["type"] == "message":
                    self._receive(message["data"])
        finally:
            try:
                await asyncio.wait_for(pubsub.aclose(), timeout=1.0)
            except (RedisError, OSError, TimeoutError):
                pass

    def _receive(self, data: bytes) -> None:
        raw_seq, _, body = data.partition(b"|")
        seq = int(raw_seq)
        if seq > self.last_seq + 1:
            self._reset(f"invalidations {self.last_seq + 1}..{seq - 1} were lost")
        self.last_seq = max(self.last_seq, seq)
        payload = json.loads(body)
        if payload["o"] == self.origin:
            return
        message = Invalidation(keys=payload["k"], users=payload["u"], sent_at=payload["t"])
        for handler in self._handlers:
            handler(message)
        if self._applied is not None:
            self._applied.inc()
        if self._lag is not None:
            self._lag.observe(max(0.0, time.time() - message.sent_at))
