"""What every service function receives: the resources opened by the app's lifespan, as plain values."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from anyio import CapacityLimiter
from argon2 import PasswordHasher
from cachetools import LRUCache
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from feed.bus import Bus
from feed.cache import Cache
from feed.home_feeds import RedisFeeds
from feed.queue import JobMetrics, Queue
from feed.replicas import Replicas
from feed.services.keys import KeyStore
from feed.streams import Streams

T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


class Database:
    """Sessions for services: ``db()`` for reads (autocommit: each statement sees the latest commits, several
    statements are not one snapshot), ``db.begin()`` for a write transaction that commits at the end.

    Write transactions are marked so that SQLite takes its write lock at BEGIN (``BEGIN IMMEDIATE``, see
    ``feed.db``): a transaction that reads and then writes is atomic there, as it is on PostgreSQL.
    """

    def __init__(self, engine: AsyncEngine, replicas: Replicas | None = None) -> None:
        # Reads run in autocommit: no BEGIN/ROLLBACK round trips around every page's queries.
        self._read = async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
        self._write = async_sessionmaker(engine.execution_options(cipherfeed_write=True), expire_on_commit=False)
        self.replicas = replicas

    def __call__(self) -> AsyncSession:
        return self._read()

    async def lagged(self, reader: int | None, work: Callable[[AsyncSession], Awaitable[T]]) -> tuple[T, bool]:
        """``work(session)`` for a read that may lag a little and that no cache keeps: on a replica that holds what
        ``reader`` (None: a visitor) wrote, if there is one (``feed.replicas``), else on the primary. With whether
        it came from a replica: then rows about others (a block, a post's visibility) may be seconds old, and the
        caller checks them again against the caches, which the primary fills."""
        if self.replicas is None:
            async with self._read() as session:
                return await work(session), False
        return await self.replicas.read(reader, work, self._read)

    def begin(self) -> Any:
        return self._write.begin()


@dataclass(frozen=True, slots=True)
class ThrottleRules:
    """Limits of the login throttle (``feed.services.throttle``), and of app registrations, counted the same way."""

    per_account: int  # an account from one address, or from one known device
    per_ip: int  # one address, whatever the account
    window: timedelta
    per_account_unknown: int = 20  # an account from every device it does not know
    apps_per_ip: int = 20  # app registrations from one address (POST /api/v1/apps)


@dataclass(frozen=True, slots=True)
class Secrets:
    """Keys derived from the server secret, one per purpose. Never shown in a repr."""

    secret_index_key: bytes  # the email index of rows from before it was keyed from the root key; erasure receipts
    throttle_key: bytes  # names of login-throttle buckets (they would otherwise hold typed names and IPs)
    token_key: bytes  # stored hashes of session ids and API tokens

    def __repr__(self) -> str:
        return "Secrets(...)"


@dataclass(frozen=True, slots=True, repr=False)
class Services:
    db: Database
    cache: Cache
    bus: Bus
    keys: KeyStore
    secrets: Secrets
    hasher: PasswordHasher
    # Argon2 runs in threads; this bounds how many at once (each takes ~64 MiB and a core for ~50 ms).
    hash_slots: CapacityLimiter
    dummy_hash: str  # verified against when the username is unknown, so both paths cost the same
    session_ttl: timedelta
    throttle: ThrottleRules
    queue: Queue  # background jobs (arq in the scaled mode, this process in the embedded one)
    feeds: RedisFeeds | None = None  # home feeds (scaled mode); None: home timelines come from the database
    fanout_max_followers: int = 10_000  # above this, an author's posts join home timelines when they are read
    feed_inactive_days: int = 30  # feeds of users away longer are dropped by a cleanup job
    fanout_batch: int = 1000  # feeds written per Redis round trip
    job_metrics: JobMetrics | None = None
    streams: Streams | None = None  # live events (feed.streams); None: nobody listens (the CLI)
    relay: Any = None  # the outbox relay to wake after a commit (feed.relay.Relay); None: other processes relay
    crash_after_commit: bool = False  # a fault point for tests (CIPHERFEED_TEST_CRASH_AFTER_COMMIT)
    job_pause: int = 0  # a fault point for tests: seconds each queued job waits first (CIPHERFEED_TEST_JOB_PAUSE)
    media: Any = None  # the media store (feed.media.store.MediaStore); None: media cannot be stored here
    media_max_bytes: int = 16 * 1024 * 1024
    # Registered apps by id, as statuses name them (``oauth.applications``): an app never changes, so kept here.
    apps: LRUCache[int, Any] = field(default_factory=lambda: LRUCache(maxsize=4096))

    def __repr__(self) -> str:
        return "Services(...)"
