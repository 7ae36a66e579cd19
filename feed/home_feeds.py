"""Home feeds in Redis: one sorted set of post ids per user, newest kept, written by fan-out jobs.

A feed exists only once it was built (it holds a sentinel member ``0`` with score 0): fan-out writes only into
feeds that exist, so a missing feed always means "not built" (new user, away too long, Redis flushed), never
"empty", and readers fall back to the database while a job rebuilds it. Scores are the post's milliseconds (an id
is too large for a double); ids of one millisecond have equal length, so Redis's tie order by member is id order.

A feed's key (``cf:feed:{u<id>}``) shares its hash tag with the user's event stream (``feed.streams``), so on a Redis
Cluster both sit in one slot; a fan-out groups the followers' feeds by node and writes each group with one script
call, the nodes at the same time (:class:`feed.redis_link.Scripts`). Every other write touches one feed per command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from feed.redis_link import FAILURES, RedisLink, Scripts, delete_many, scan_keys

PREFIX = "cf:feed:"
SENTINEL = "0"

# K: feeds.  A: score, member, size.  Adds the member to each feed that exists, keeping the newest ``size``.
_ADD_TO_EXISTING = """
local keep = -(tonumber(A[3]) + 1)
local n = 0
for _, key in ipairs(K) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', key, A[1], A[2])
    redis.call('ZREMRANGEBYRANK', key, 1, keep)
    n = n + 1
  end
end
return n
"""

# KEYS: a feed.  ARGV: size, replace (1: a rebuild, else a merge into a feed that exists), then score, member pairs.
_WRITE_ONE = """
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 1, -(tonumber(ARGV[1]) + 1))
return 1
"""


def feed_key(user_id: int) -> str:
    return f"{PREFIX}{{u{user_id}}}"  # the hash tag of the user's stream (feed.streams.user_stream)


def _user_of(key: bytes | str) -> int | None:
    """The user id in a feed's key, or None for another key."""
    name = key.decode() if isinstance(key, bytes) else key
    tag = name[len(PREFIX) :]
    if tag.startswith("{u") and tag.endswith("}") and tag[2:-1].isdigit():
        return int(tag[2:-1])
    return None


def score(post_id: int) -> int:
    return post_id >> 16  # feed.ids: milliseconds in the high bits


class RedisFeeds:
    def __init__(self, link: RedisLink, *, size: int = 800) -> None:
        self.link = link
        self.size = size
        self._scripts = Scripts()
        self._write_script: Any = None

    async def add(self, post_id: int, user_ids: Sequence[int]) -> int:
        """Put the post into the feeds of ``user_ids`` that exist; how many did. Idempotent."""
        if not user_ids:
            return 0
        args = [score(post_id), post_id, self.size]

        async def add(r: Any) -> int:
            keys = [feed_key(u) for u in user_ids]
            done = await self._scripts.per_node(r, "add", _ADD_TO_EXISTING, keys, lambda some: (some, args))
            return sum(int(n) for n in done)

        return int(await self._run(add))

    async def add_many(self, user_id: int, post_ids: Iterable[int]) -> None:
        """Merge posts into one feed, if it exists (a follow brings the followee's recent posts)."""
        await self._write(user_id, post_ids, replace=False)

    async def _write(self, user_id: int, post_ids: Iterable[int], *, replace: bool) -> None:
        pairs: list[int | str] = [x for p in post_ids for x in (score(p), p)]
        if replace:
            pairs += [0, SENTINEL]
        elif not pairs:
            return

        async def write(r: Any) -> None:
            if self._write_script is None:
                self._write_script = r.register_script(_WRITE_ONE)
            await self._write_script(keys=[feed_key(user_id)], args=[self.size, int(replace), *pairs], client=r)

        await self._run(write)

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
        await self._write(user_id, post_ids, replace=True)

    async def drop(self, user_ids: Sequence[int]) -> None:
        if user_ids:
            await self._run(lambda r: delete_many(r, [feed_key(u) for u in user_ids]))

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
        """The user ids of every feed, in batches (SCAN, never KEYS: Redis keeps serving meanwhile). Raises
        FeedsUnavailable if Redis is away (the job is run again)."""
        if not self.link.up:
            raise FeedsUnavailable
        try:
            async for keys in scan_keys(self.link.client, match=f"{PREFIX}*", count=batch):
                ids = [u for u in map(_user_of, keys) if u is not None]
                earlier = [k for k in keys if k[len(PREFIX) :].isdigit()]  # the layout before hash tags: unused
                if earlier:
                    await self._run(lambda r, old=earlier: delete_many(r, old))
                if ids:
                    yield ids
        except FAILURES as exc:
            self.link.down(exc)
            raise FeedsUnavailable from exc

    async def _run(self, work: Any) -> Any:
        result = await self.link.run(work)
        if result is None and not self.link.up:
            raise FeedsUnavailable
        return result


class FeedsUnavailable(ConnectionError):
    """Redis is down: readers use the database, writers leave feeds to be rebuilt."""
