"""``open_runtime(settings, role)``: the resources every cipherfeed process opens, in one place.

The web app's lifespan, ``cipherfeed worker`` and the CLI commands all open their services here: the database
engine (its schema checked), the Redis link, the two-tier cache and the invalidation bus, the unwrapped-key store,
the job queue, the live-event streams, the outbox relay, and the :class:`~feed.services.context.Services` value
that service functions receive. What only the web needs (templates, live connections) is added by ``feed.app``.

Roles:

- ``web``: serves pages; relays the outbox; in the embedded mode, runs the jobs and the maintenance schedule itself.
- ``worker``: runs queued jobs (arq) and relays the outbox.
- ``cli``: one command's services; relays nothing (the server's relay does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from alembic.script import ScriptDirectory
from anyio import CapacityLimiter
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncEngine

from feed import db
from feed.bus import Bus, Invalidation, LocalBus, RedisBus
from feed.cache import PAGE_SPACES, Cache, with_derived
from feed.home_feeds import RedisFeeds
from feed.keyfile import derive, load_ring, load_secret
from feed.media.store import MediaStore
from feed.metrics import Registry
from feed.queue import ArqQueue, JobMetrics, LocalQueue
from feed.redis_link import RedisLink
from feed.relay import Relay
from feed.replicas import Replicas
from feed.services.context import Database, Secrets, Services, ThrottleRules
from feed.services.jobs import run_cron
from feed.services.keys import KeyStore
from feed.settings import ConfigError, Settings
from feed.streams import LocalStreams, RedisStreams, Streams

ROLES = ("web", "worker", "cli")


@dataclass(frozen=True, slots=True, repr=False)
class Runtime:
    """What one process opened. Every field but ``services`` is there for the process's own plumbing."""

    settings: Settings
    role: str
    metrics: Registry
    engine: AsyncEngine
    link: RedisLink | None
    cache: Cache
    bus: Bus
    queue: ArqQueue | LocalQueue
    streams: Streams | None
    relay: Relay | None
    services: Services
    secret: bytes
    outage: db.Outage  # whether the database answers, logged once per outage

    def __repr__(self) -> str:
        return f"Runtime({self.role})"


def make_queue(settings: Settings, link: RedisLink | None) -> ArqQueue | LocalQueue:
    """arq on Redis in the scaled mode; in the embedded mode the jobs run in this process."""
    if settings.queue_redis_url is None:
        from jobs.registry import QUEUED, attempt

        return LocalQueue(QUEUED, attempt)
    # The process's link says when Redis is down only if the queue is on that Redis.
    same = settings.queue_redis_url == settings.redis_url
    return ArqQueue.from_url(settings.queue_redis_url, link if same else None)


def forget_user(keys: KeyStore, cache: Cache, user_id: int) -> None:
    """A person's keys changed or were destroyed: no unwrapped key of theirs stays here, nor any viewer's page blob
    (an erasure: any of them may hold that person's words)."""
    keys.forget(user_id)
    for space in PAGE_SPACES:
        cache.drop_space(space)


def _wire(metrics: Registry, cache: Cache, bus: Bus, keys: KeyStore, link: RedisLink | None) -> None:
    """Who tells whom: the cache publishes its invalidations on the bus; the bus drops keys from this L1 and
    unwrapped keys from memory, and flushes L1 when it may have missed something; Redis coming back replays the
    invalidations it missed, waits for the bus to listen again, then flushes L1."""

    async def publish(names: list[str]) -> None:
        await bus.publish(Invalidation(keys=names))

    def apply(message: Invalidation) -> None:
        cache.drop(with_derived(message.keys))  # the sender derived them too, unless it is older than a space
        for user_id in message.users:
            forget_user(keys, cache, user_id)

    async def flush() -> None:
        cache.flush()

    cache.on_invalidate = publish
    bus.on_message(apply)
    bus.on_reset(cache.flush)
    if link is not None:
        link.on_recovery(cache.replay_pending)
        link.on_recovery(bus.listening)
        link.on_recovery(flush)
    metrics.gauge_callback("cipherfeed_cache_l1_bytes", "Bytes held in this process's L1 cache", lambda: cache.l1_bytes)
    metrics.gauge_callback(
        "cipherfeed_cache_l1_evictions", "Values evicted from L1 to stay within its size", lambda: cache.l1_evictions
    )
    metrics.gauge_callback("cipherfeed_cache_l1_flushes", "Whole-L1 flushes", lambda: cache.stats.flushes)
    metrics.gauge_callback(
        "cipherfeed_page_blobs_bytes",
        "Bytes of viewers' page blobs in this process's L1",
        lambda: sum(cache.l1_space(space)[0] for space in PAGE_SPACES),
    )
    metrics.gauge_callback(
        "cipherfeed_page_blobs",
        "Viewers' page blobs in this process's L1",
        lambda: sum(cache.l1_space(space)[1] for space in PAGE_SPACES),
    )
    metrics.gauge_callback(
        "cipherfeed_page_blob_viewers",
        "Viewers with at least one page blob in this process's L1",
        lambda: len({viewer for space in PAGE_SPACES for viewer in cache.l1_keys(space)}),
    )


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, role: str) -> AsyncIterator[Runtime]:
    """Open everything a ``role`` process needs, and close it all, in the reverse order, at the end."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    metrics = Registry()  # first: the cache, the bus and the relay register in it
    embedded = settings.is_sqlite
    if embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ring = load_ring(settings, create=embedded)
    secret = load_secret(settings, create=embedded)
    engine = db.make_engine(settings.database_url)
    outage = db.Outage()
    outage.watch(engine)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
        if await db.current_revision(engine) != head:
            raise ConfigError("the database schema is not up to date: run `cipherfeed db upgrade`")
        link = RedisLink.connect(settings.redis_url, metrics=metrics) if settings.redis_url else None
        if link is not None:
            stack.push_async_callback(link.close)
        budgets = dict.fromkeys(PAGE_SPACES, settings.cache_pages_bytes)  # each kind of page blob its own
        cache = Cache(link, l1_bytes=settings.cache_l1_bytes, budgets=budgets, metrics=metrics)
        bus: Bus = RedisBus(link, metrics=metrics) if link else LocalBus()
        keys = KeyStore(ring)
        streams: Streams | None = None
        if link is not None:
            streams = RedisStreams(link)
        elif role == "web":
            streams = LocalStreams()  # the embedded server is its own only listener
        queue = make_queue(settings, link)
        relay = None
        if role != "cli" and streams is not None:
            relay = Relay(engine, cache=cache, bus=bus, queue=queue, streams=streams,
                          forget=partial(forget_user, keys, cache), link=link, metrics=metrics)  # fmt: skip
        replicas = None
        if settings.replica_urls and role == "web":  # the pages' reads; jobs read what they are about to change
            replicas = Replicas.open(engine, settings.replica_urls, max_lag=settings.replica_max_lag_seconds,
                                     link=link, metrics=metrics)  # fmt: skip
            stack.push_async_callback(replicas.close)
            await replicas.start()
        hasher = PasswordHasher()
        services = Services(
            db=Database(engine, replicas),
            cache=cache,
            bus=bus,
            keys=keys,
            secrets=Secrets(
                secret_index_key=derive(secret, "email-index"),
                throttle_key=derive(secret, "throttle"),
                token_key=derive(secret, "token"),
            ),
            hasher=hasher,
            hash_slots=CapacityLimiter(max(2, os.cpu_count() or 2)),
            dummy_hash=hasher.hash("cipherfeed-dummy-password"),
            session_ttl=timedelta(days=settings.session_days),
            throttle=ThrottleRules(
                per_account=settings.login_attempts_per_account,
                per_ip=settings.login_attempts_per_ip,
                window=timedelta(seconds=settings.login_window_seconds),
                per_account_unknown=settings.login_attempts_per_account_unknown,
                apps_per_ip=settings.apps_per_ip,
            ),
            queue=queue,
            feeds=RedisFeeds(link) if link is not None else None,
            fanout_max_followers=settings.fanout_max_followers,
            feed_inactive_days=settings.feed_inactive_days,
            fanout_batch=settings.fanout_batch,
            job_metrics=JobMetrics.register(metrics),
            streams=streams,
            relay=relay,
            crash_after_commit=settings.crash_after_commit,
            job_pause=settings.job_pause,
            media=MediaStore.open(settings.media_store),
            media_max_bytes=settings.media_max_bytes,
        )
        _wire(metrics, cache, bus, keys, link)
        await bus.start()
        stack.push_async_callback(bus.stop)
        if isinstance(queue, LocalQueue):
            queue.ctx["services"] = services
            stack.push_async_callback(queue.drain)
        else:
            stack.push_async_callback(queue.close)
        if isinstance(queue, LocalQueue) and role == "web" and settings.embedded_cron:
            from jobs.registry import MAINTENANCE

            cron = asyncio.get_running_loop().create_task(run_cron(services, [*MAINTENANCE.values()]))
            stack.push_async_callback(_cancel, cron)
        if relay is not None:
            await relay.start()
            stack.push_async_callback(relay.stop)
        if role != "cli" and link is not None:  # answers `cipherfeed audit` about its L1
            from feed.audit.l1 import answer_requests

            listener = asyncio.get_running_loop().create_task(answer_requests(link, cache, role))
            stack.push_async_callback(_cancel, listener)
        if role != "cli" and link is not None:
            watcher = asyncio.get_running_loop().create_task(link.watch_nodes())
            stack.push_async_callback(_cancel, watcher)
        if role != "cli":  # callback gauges written for the processes a scrape does not reach (feed.metrics)
            refresh = asyncio.get_running_loop().create_task(metrics.run_refresh())
            stack.push_async_callback(_cancel, refresh)
            stack.callback(metrics.process_ended)
        yield Runtime(settings, role, metrics, engine, link, cache, bus, queue, streams, relay, services, secret,
                      outage)  # fmt: skip


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end (a maintenance run records itself cancelled on the way out)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
