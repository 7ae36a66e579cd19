"""Home feeds in Redis: one sorted set of post ids per user, newest kept, written by fan-out jobs.

A feed exists only once it was built (it holds a sentinel member ``0`` with score 0): fan-out writes only into
feeds that exist, so a missing feed always means "not built" (new user, away too long, Redis flushed), never
"empty", and readers fall back to the database while a job rebuilds it. Scores are the post's milliseconds (an id
is too large for a double); ids of one millisecond have equal length, so Redis's tie order by member is id order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from feed.redis_link import RedisLink

PREFIX = "cf:feed:"
SENTINEL = "0"

# KEYS: feeds.  ARGV: score, member, size.  Adds the member to each feed that exists, keeping the newest ``size``.
_ADD_TO_EXISTING = """
local keep = -(tonumber(ARGV[3]) + 1)
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', key, ARGV[1], ARGV[2])
    redis.call('ZREMRANGEBYRANK', key, 1, keep)
    n = n + 1
  end
end
return n
"""


def feed_key(user_id: int) -> str:
    return f"{PREFIX}{user_id}"


def score(post_id: int) -> int:
    return post_id >> 16  # feed.ids: milliseconds in the high bits


class RedisFeeds:
    def __init__(self, link: RedisLink, *, size: int = 800) -> None:
        self.link = link
        self.size = size
        self._add_script: Any = None

    async def add(self, post_id: int, user_ids: Sequence[int]) -> int:
        """Put the post into the feeds of ``user_ids`` that exist; how many did. Idempotent."""
        if not user_ids:
            return 0

        async def add(r: Any) -> int:
            if self._add_script is None:
                self._add_script = r.register_script(_ADD_TO_EXISTING)
            return int(await self._add_script(keys=[feed_key(u) for u in user_ids], args=[score(post_id), post_id,
                                                                                          self.size]))  # fmt: skip

        return int(await self._run(add))

    async def add_many(self, user_id: int, post_ids: Iterable[int]) -> None:
        """Merge posts into one feed, if it exists (a follow brings the followee's recent posts)."""
        members = {str(p): score(p) for p in post_ids}
        if not members:
            return

        async def merge(r: Any) -> None:
            if await r.exists(feed_key(user_id)):
                async with r.pipeline(transaction=True) as pipe:
                    pipe.zadd(feed_key(user_id), members)
                    pipe.zremrangebyrank(feed_key(user_id), 1, -(self.size + 1))
                    await pipe.execute()

        await self._run(merge)

    async def remove(self, post_ids: Sequence[int], user_ids: Sequence[int]) -> None:
        if not post_ids or not user_ids:
            return

        async def remove(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.zrem(feed_key(user_id), *[str(p) for p in post_ids])
                await pipe.execute()

        await self._run(remove)

    async def read(self, user_id: int, count: int) -> list[int] | None:
        """The newest ``count`` post ids of the feed, or None if it does not exist."""
        found = await self._run(lambda r: r.zrevrange(feed_key(user_id), 0, count))
        if not found:
            return None
        return [int(m) for m in found if m != b"0"][:count]

    async def replace(self, user_id: int, post_ids: Iterable[int]) -> None:
        """The feed, built anew (a rebuild)."""
        members = {str(p): score(p) for p in post_ids}
        members[SENTINEL] = 0

        async def replace(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(feed_key(user_id))
                pipe.zadd(feed_key(user_id), members)
                pipe.zremrangebyrank(feed_key(user_id), 1, -(self.size + 1))
                await pipe.execute()

        await self._run(replace)

    async def drop(self, user_ids: Sequence[int]) -> int:
        if not user_ids:
            return 0
        return int(await self._run(lambda r: r.delete(*[feed_key(u) for u in user_ids])))

    async def trim(self, user_ids: Sequence[int]) -> int:
        """Cut feeds back to their size; how many entries went."""

        async def trim(r: Any) -> int:
            async with r.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.zremrangebyrank(feed_key(user_id), 1, -(self.size + 1))
                return sum(int(n) for n in await pipe.execute())

        return int(await self._run(trim))

    async def oversized(self, user_ids: Sequence[int]) -> int:
        """How many entries :meth:`trim` would remove (for a dry run)."""

        async def count(r: Any) -> int:
            async with r.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.zcard(feed_key(user_id))
                return sum(max(0, int(n) - 1 - self.size) for n in await pipe.execute())

        return int(await self._run(count))

    async def users(self, batch: int = 500) -> AsyncIterator[list[int]]:
        """The user ids of every feed, in batches (SCAN, never KEYS: Redis keeps serving meanwhile)."""
        cursor: Any = 0
        while True:
            found = await self._run(lambda r, at=cursor: r.scan(at, match=f"{PREFIX}*", count=batch))
            cursor, keys = found
            ids = [int(k[len(PREFIX) :]) for k in keys if k[len(PREFIX) :].isdigit()]
            if ids:
                yield ids
            if int(cursor) == 0:
                return

    async def _run(self, work: Any) -> Any:
        result = await self.link.run(work)
        if result is None and not self.link.up:
            raise FeedsUnavailable
        return result


class FeedsUnavailable(ConnectionError):
    """Redis is down: readers use the database, writers leave feeds to be rebuilt."""
