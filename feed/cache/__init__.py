"""The two-tier cache: L1 in this process (bounded in bytes), L2 in Redis, the database behind both.

Every key name and TTL is in :data:`SPACES`. Values are the declared types of :mod:`feed.records` only.

Consistency, in the order things happen:

- Reads fill L1 from L2 and L2 from the database (the caller's loader), one Redis round trip for any number of
  keys across spaces, plus one more to store what the database gave.
- A writer calls :meth:`Cache.invalidate` after its commit: the keys leave this L1, their generation counters in
  Redis are incremented and the values deleted (one MULTI), and the bus tells every other process to drop them.
- A refill that raced with an invalidation cannot be kept: L2 values are stored by a script that compares the
  generation read before the database was asked; L1 values are kept only if no invalidation of that key arrived
  in this process meanwhile.
- Worst case: a writer that dies between its commit and its invalidation leaves the old value in L2 until its TTL
  (``l2_ttl``, at most 10 minutes) and in L1s until theirs (at most 5 minutes). Nothing else is stale longer.
- Redis down: reads come from L1 and the database, writes invalidate L1 and remember their keys; when Redis is back
  the remembered keys are invalidated there first, then every L1 is flushed (by the bus's reconnect).

The package, bottom up: :mod:`~feed.cache.spaces` (spaces and key names), :mod:`~feed.cache.stamps` (what L2 stores),
:mod:`~feed.cache.l1` (the in-process store), :mod:`~feed.cache.stats` (hit and miss counts) and
:mod:`~feed.cache.tiers` (the :class:`Cache` itself).
"""

from __future__ import annotations

from feed.cache.spaces import (
    API_TOKENS,
    BLOCKED,
    BOOKMARKED,
    BOOSTED,
    COUNTS,
    DERIVED,
    FOLLOWING,
    FRAME_SPACES,
    FRAMES,
    HOME,
    LIKED,
    MUTED,
    PAGE_SPACES,
    PAGES,
    POSTS,
    PREFIX,
    PUBLIC_PAGES,
    PUBLIC_STATUS_PAGES,
    SESSIONS,
    SPACES,
    STATUS_FRAMES,
    STATUS_PAGES,
    TIMELINES,
    UNREAD,
    USER_KEYS,
    USERS,
    Key,
    Space,
    generation_key,
    generation_of,
    lock_key,
    redis_key,
    with_derived,
)
from feed.cache.tiers import REFILL_LOCK_SECONDS, Cache, Loader, Request

__all__ = [
    "API_TOKENS",
    "BLOCKED",
    "BOOKMARKED",
    "BOOSTED",
    "COUNTS",
    "DERIVED",
    "FOLLOWING",
    "FRAMES",
    "FRAME_SPACES",
    "HOME",
    "LIKED",
    "MUTED",
    "PAGES",
    "PAGE_SPACES",
    "POSTS",
    "PREFIX",
    "PUBLIC_PAGES",
    "PUBLIC_STATUS_PAGES",
    "REFILL_LOCK_SECONDS",
    "SESSIONS",
    "SPACES",
    "STATUS_FRAMES",
    "STATUS_PAGES",
    "TIMELINES",
    "UNREAD",
    "USERS",
    "USER_KEYS",
    "Cache",
    "Key",
    "Loader",
    "Request",
    "Space",
    "generation_key",
    "generation_of",
    "lock_key",
    "redis_key",
    "with_derived",
]
