"""The two-tier cache itself: reads through L1 and L2 to the caller's loader, invalidation, and the Redis calls.

Its guarantees are in the docstring of :mod:`feed.cache`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from feed.cache import shown
from feed.cache.l1 import _L1, _Entry
from feed.cache.spaces import DERIVED, PREFIX, Key, Space, generation_key, generation_of, lock_key, redis_key
from feed.cache.stamps import _INVALIDATE, _STORE_IF_UNCHANGED, _stamp, _unstamp
from feed.cache.stats import _Stats
from feed.records import Cacheable, CorruptValue, check
from feed.redis_link import RedisLink, Scripts, delete_many, read_many

log = logging.getLogger("feed.cache")  # the package's name, which log configuration and filters know

Loader = Callable[[list[Any]], Awaitable[Mapping[Any, Cacheable]]]
REFILL_LOCK_SECONDS = 1.0
_SPACE_AT = len(PREFIX) + 2  # where a Redis name's space begins: cf:{p:123}


class Request(NamedTuple):
    """One space's part of a :meth:`Cache.get_multi` call (a tuple: a page makes a dozen)."""

    space: Space
    keys: Sequence[Key]
    load: Loader


class Cache:
    def __init__(
        self,
        link: RedisLink | None,
        *,
        l1_bytes: int = 64 * 1024 * 1024,
        budgets: Mapping[Space, int] | None = None,
        metrics: Any = None,
    ) -> None:
        self.link = link
        self._l1 = _L1(l1_bytes)
        # Spaces with an L1 of their own (``budgets``: its bytes), so that their large values (page blobs) never
        # push the small ones everything else reads out of the shared one. Least recently read goes first in each.
        self._own = {space.name: _L1(size) for space, size in (budgets or {}).items()}
        self._stores = [self._l1, *self._own.values()]
        # Per key, how many invalidations this process has seen: a refill keeps its value only if unchanged.
        self._generations: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Future[Cacheable | None]] = {}
        self._raw_inflight: dict[str, asyncio.Future[bytes | None]] = {}  # get_multi_with's strings, being read
        self._refreshing: set[str] = set()
        self._pending: set[tuple[Space, Key]] = set()  # invalidations Redis missed while it was down
        self._shown_pending: dict[int, None] = {}  # the same for the shown log (feed.cache.shown)
        # Per space name, how many of its keys this process has dropped, and how many flushes: see changes().
        self._changes: dict[str, int] = {}
        self._flushes = 0
        self._scripts = Scripts()
        self.stats = _Stats(metrics)
        self.on_invalidate: Callable[[list[str]], Awaitable[None]] | None = None

    # -- reading

    def cached(self, space: Space, key: Key) -> Cacheable | None:
        """:meth:`cached_many` for one key: its value, or None where that would leave it out."""
        found: dict[Any, Cacheable] = {}
        self._from_l1(space, (key,), found)
        return found.get(key)

    def cached_many(self, space: Space, keys: Iterable[Key]) -> dict[Any, Cacheable]:
        """What L1 holds for ``keys`` now, without Redis, a loader or an event loop: for the hot path to skip the
        coroutine of :meth:`get_many` when everything is in L1.

        Left out, for the caller to pass to :meth:`get_many` (or :meth:`get_multi`): keys L1 does not hold, keys
        whose entry has expired (removed now), and keys due for early refresh, which ``get_many`` serves from L1
        while it refreshes them behind the reader. Each key returned counts as one L1 hit; keys left out count
        nothing here (``get_many`` counts them)."""
        found: dict[Any, Cacheable] = {}
        self._from_l1(space, dict.fromkeys(keys), found)
        return found

    def changes(self, space: Space) -> tuple[int, int]:
        """A stamp that moves whenever what L1 holds for ``space`` may change: a key of it dropped, a value of it
        kept (a refill, after an expiry too), L1 flushed. While it stands, the values L1 held for ``space`` are the
        ones it holds (what was checked against them then, and found there, is checked against them now)."""
        return self._flushes, self._changes.get(space.name, 0)

    async def get(self, space: Space, key: Key, load: Loader) -> Cacheable | None:
        found: dict[Any, Cacheable] = {}
        if self._from_l1(space, (key,), found):
            return (await self.get_multi([Request(space, (key,), load)]))[0].get(key)
        return found[key]

    async def get_many(self, space: Space, keys: Sequence[Key], load: Loader) -> dict[Any, Cacheable]:
        found: dict[Any, Cacheable] = {}
        if rest := self._from_l1(space, dict.fromkeys(keys), found):
            found.update((await self.get_multi([Request(space, [key for key, _, _ in rest], load)]))[0])
        return found

    async def get_multi(self, requests: Sequence[Request]) -> list[dict[Any, Cacheable]]:
        """Values for every request's keys (absent where the loader has none), in one Redis round trip for all
        the keys L1 does not hold, and one more to store what the loaders returned."""
        return (await self.get_multi_with(requests, ()))[0]

    async def get_multi_with(
        self, requests: Sequence[Request], raw: Sequence[str]
    ) -> tuple[list[dict[Any, Cacheable]], dict[str, bytes | None] | None]:
        """:meth:`get_multi`, and the Redis strings named ``raw`` as they are, read in the same round trip if there
        is one (a read that joins another's gets what that one read). The strings are None (not read) when L1
        held everything, or Redis is away."""
        results: list[dict[Any, Cacheable]] = [{} for _ in requests]
        wanted: list[tuple[int, Space, Key, str]] = []
        for index, request in enumerate(requests):
            for key, name, entry in self._from_l1(request.space, dict.fromkeys(request.keys), results[index]):
                if entry is None:
                    wanted.append((index, request.space, key, name))
                else:  # served from L1 all the same, and refreshed behind the reader
                    results[index][key] = entry.value
                    self.stats.hit("l1", request.space)
                    self._refresh_soon(request, key, name)
        read: dict[str, bytes | None] | None = None
        if wanted:
            read = {} if raw else None
            await self._fill(requests, wanted, results, raw, read)
        return results, read

    def _from_l1(
        self, space: Space, keys: Iterable[Key], found: dict[Any, Cacheable]
    ) -> list[tuple[Key, str, _Entry | None]]:
        """The one L1 read path: puts the values L1 holds for ``keys`` (distinct) into ``found``, counted as hits,
        and returns the others, each with its Redis name and, if it is only due for early refresh (not expired,
        no refresh under way), its entry; ``None`` if L1 does not hold it (an expired entry is removed here)."""
        now = time.monotonic()
        store = self._own.get(space.name, self._l1)
        recent, refreshing, prefix = store.recent, self._refreshing, space.key_prefix
        rest: list[tuple[Key, str, _Entry | None]] = []
        hits = 0
        for key in keys:
            name = f"{prefix}{key}}}"  # redis_key(space, key)
            entry = recent.get(name)
            if entry is None:
                rest.append((key, name, None))
            elif now >= entry.expires:
                store.discard(name)
                rest.append((key, name, None))
            else:
                recent.move_to_end(name)
                if now >= entry.refresh_at and name not in refreshing:
                    rest.append((key, name, entry))
                else:
                    found[key] = entry.value
                    hits += 1
        if hits:
            self.stats.hit("l1", space, hits)
        return rest

    async def _fill(
        self,
        requests: Sequence[Request],
        wanted: list[tuple[int, Space, Key, str]],
        results: list[dict[Any, Cacheable]],
        raw: Sequence[str] = (),
        read: dict[str, bytes | None] | None = None,
    ) -> None:
        """Single-flight per key: keys another task is already filling are awaited, the rest filled here (and the
        ``raw`` strings read with them into ``read``, or had from a read under way)."""
        waiting: list[tuple[int, Key, asyncio.Future[Cacheable | None]]] = []
        mine: list[tuple[int, Space, Key, str]] = []
        for item in wanted:
            future = self._inflight.get(item[3])
            if future is None:
                mine.append(item)
            else:
                waiting.append((item[0], item[2], future))
        # The strings are read with this request's own keys, never before them; only a request with no key of its
        # own to read has another's read of them, which hands them over as soon as it has them.
        raw_waiting = [] if mine else [(name, self._raw_inflight[name]) for name in raw if name in self._raw_inflight]
        raw_mine = [name for name in raw if mine or name not in self._raw_inflight]
        futures = {item[3]: asyncio.get_running_loop().create_future() for item in mine}
        raw_futures = {name: asyncio.get_running_loop().create_future() for name in raw_mine}
        self._inflight.update(futures)
        for name, raw_future in raw_futures.items():
            self._raw_inflight.setdefault(name, raw_future)

        def strings_read(got: Mapping[str, bytes | None]) -> None:
            for name, raw_future in raw_futures.items():
                if not raw_future.done():
                    raw_future.set_result(got.get(name))
                if self._raw_inflight.get(name) is raw_future:
                    del self._raw_inflight[name]

        try:
            found, got = await self._fetch(requests, mine, raw_mine, strings_read) if mine or raw_mine else ({}, {})
            for name, future in futures.items():
                future.set_result(found.get(name))
            strings_read(got)
        except BaseException as exc:
            for future in (*futures.values(), *raw_futures.values()):
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()  # the filling request went away; its waiters fill for themselves
                else:
                    future.set_exception(exc)
                    future.exception()  # retrieved: waiters re-raise it, nobody else should warn
            raise
        finally:
            for name in futures:
                self._inflight.pop(name, None)
            for name, raw_future in raw_futures.items():
                if self._raw_inflight.get(name) is raw_future:
                    del self._raw_inflight[name]
        for index, _space, key, name in mine:
            if (value := found.get(name)) is not None:
                results[index][key] = value
        if read is not None:
            read.update(got)
            for name, raw_future in raw_waiting:
                try:
                    read[name] = raw_future.result() if raw_future.done() else await asyncio.shield(raw_future)
                except asyncio.CancelledError:
                    if not raw_future.cancelled():
                        raise  # this request itself was cancelled
                except Exception:  # noqa: S110 - the other read failed: the strings are not had (None)
                    pass
        retry: list[tuple[int, Space, Key, str]] = []
        for index, key, future in waiting:
            try:  # (one filled with the others is done by the time the first is: no wait, no shield for it)
                value = future.result() if future.done() else await asyncio.shield(future)
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this request itself was cancelled
                retry.append(next(item for item in wanted if item[0] == index and item[2] == key))
                continue
            if value is not None:
                results[index][key] = value
        if retry:
            await self._fill(requests, retry, results)

    async def _fetch(
        self,
        requests: Sequence[Request],
        items: list[tuple[int, Space, Key, str]],
        strings: Sequence[str] = (),
        strings_read: Callable[[Mapping[str, bytes | None]], None] | None = None,
    ) -> tuple[dict[str, Cacheable], dict[str, bytes | None]]:
        """Read ``items`` from Redis (with the ``strings``, handed to ``strings_read`` at once), then load the rest
        from the database and store them."""
        seen = {name: self._generations.get(name, 0) for *_, name in items}
        found: dict[str, Cacheable] = {}
        shared = [item for item in items if item[1].l2_ttl]  # the others live in L1 only
        names = [name for *_, name in shared]
        generation_names = [generation_key(space, key) for _, space, key, _ in shared]
        raw = await self._l2_read(names + generation_names + list(strings)) if shared or strings else None
        got: dict[str, bytes | None] = {}
        l2_generations: dict[str, bytes] = {}
        if raw is not None:
            got = dict(zip(strings, raw[2 * len(shared) :], strict=True))
        if strings_read is not None:
            strings_read(got)
        if raw is not None:
            values, generations = raw[: len(shared)], raw[len(shared) : 2 * len(shared)]
            for (index, space, key, name), data, generation in zip(shared, values, generations, strict=True):
                l2_generations[name] = generation or b""
                if data is None:
                    continue
                try:
                    stored_at, value = _unstamp(data)
                except CorruptValue:
                    log.warning("undecodable cache value in space %s; treated as a miss", space.name)
                    continue
                found[name] = value
                self.stats.hit("l2", space)
                self._keep(space, name, value, seen[name])
                if time.time() - stored_at > space.l2_ttl * space.refresh_after and name not in self._refreshing:
                    self._reload_soon(requests[index], key, name)
        missing = [item for item in items if item[3] not in found]
        if raw is not None:
            missing = await self._wait_for_other_process(missing, found, seen)
        if not missing:
            return found, got
        by_request: dict[int, list[tuple[int, Space, Key, str]]] = {}
        for item in missing:
            self.stats.miss(item[1])
            by_request.setdefault(item[0], []).append(item)
        to_store: list[tuple[Space, str, Cacheable]] = []
        for index, group in by_request.items():
            loaded = await requests[index].load([key for _, _, key, _ in group])
            for _, space, key, name in group:
                fresh = loaded.get(key)
                if fresh is None:
                    continue
                found[name] = check(fresh)
                self._keep(space, name, fresh, seen[name])
                if space.l2_ttl:
                    to_store.append((space, name, fresh))
        if to_store and raw is not None:
            await self._l2_store(to_store, l2_generations)
        if raw is not None and (locks := [lock_key(name) for _, space, _, name in missing if space.shared_refill]):
            await self.link.run(lambda r: delete_many(r, locks))  # type: ignore[union-attr]
        return found, got

    async def _wait_for_other_process(
        self, missing: list[tuple[int, Space, Key, str]], found: dict[str, Cacheable], seen: dict[str, int]
    ) -> list[tuple[int, Space, Key, str]]:
        """For expensive refills: take a short Redis lock per key; keys another process is refilling are read
        from L2 once it has stored them (or loaded here after all if it takes too long)."""
        shared = [item for item in missing if item[1].shared_refill]
        if not shared:
            return missing
        assert self.link is not None

        async def take(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                for *_, name in shared:
                    pipe.set(lock_key(name), b"1", nx=True, px=int(REFILL_LOCK_SECONDS * 1000))
                return list(await pipe.execute())

        taken = await self.link.run(take)
        if taken is None:
            return missing
        others = [item for item, mine in zip(shared, taken, strict=True) if not mine]
        deadline = time.monotonic() + REFILL_LOCK_SECONDS
        while others and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            values = await self._l2_read([name for *_, name in others])
            if values is None:
                break
            still = []
            for item, data in zip(others, values, strict=True):
                if data is None:
                    still.append(item)
                    continue
                try:
                    found[item[3]] = _unstamp(data)[1]
                except CorruptValue:
                    still.append(item)
                    continue
                self._keep(item[1], item[3], found[item[3]], seen[item[3]])
            others = still
        return [item for item in missing if item[3] not in found]

    def _keep(self, space: Space, name: str, value: Cacheable, generation_seen: int) -> None:
        store = self._own.get(space.name, self._l1)
        if store.maxsize == 0 or value.size > store.maxsize:
            return  # L1 switched off (CIPHERFEED_CACHE_L1_BYTES=0), or the value is larger than all of it
        if self._generations.get(name, 0) != generation_seen:
            return  # invalidated while we were reading: the value may be stale
        now = time.monotonic()
        ttl = space.l1_ttl * random.uniform(0.9, 1.0)  # spread expiries of keys filled together
        store[name] = _Entry(value, now + ttl, now + ttl * space.refresh_after, value.size)
        self._changes[space.name] = self._changes.get(space.name, 0) + 1  # a value in L1 anew: see changes()

    def _refresh_soon(self, request: Request, key: Key, name: str) -> None:
        """Early refresh of a hot key: one background refill while readers keep the current value."""
        self._refreshing.add(name)

        async def refresh() -> None:
            store = self._own.get(request.space.name, self._l1)
            try:
                entry = store.pop(name, None)
                try:
                    await self._fill([request], [(0, request.space, key, name)], [{}])
                except Exception:
                    if entry is not None and name not in store:
                        store[name] = entry
                    log.warning("background refresh failed in space %s", request.space.name)
            finally:
                self._refreshing.discard(name)

        asyncio.get_running_loop().create_task(refresh())

    def _reload_soon(self, request: Request, key: Key, name: str) -> None:
        """Early refresh of a hot key in L2: reload it from the database in the background, before it expires
        there and every process's readers go to the database at once."""
        self._refreshing.add(name)
        generation = self._generations.get(name, 0)

        async def reload() -> None:
            try:
                l2_generation = await self._l2_read([generation_key(request.space, key)])
                value = (await request.load([key])).get(key)
                if value is None or l2_generation is None:
                    return
                self._keep(request.space, name, check(value), generation)
                await self._l2_store([(request.space, name, value)], {name: l2_generation[0] or b""})
            except Exception:
                log.warning("background reload failed in space %s", request.space.name)
            finally:
                self._refreshing.discard(name)

        asyncio.get_running_loop().create_task(reload())

    # -- writing

    async def invalidate(self, keys: Iterable[tuple[Space, Key]], *, broadcast: bool = True) -> None:
        """Drop ``keys`` here, in Redis and (over the bus, unless ``broadcast`` is False because the outbox relay
        will) in every other process. Call after the commit."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        if derived := [(also, key) for space, key in keys for also in DERIVED.get(space.name, ())]:
            keys = list(dict.fromkeys([*keys, *derived]))
        names = [redis_key(space, key) for space, key in keys]
        self.drop(names)
        shared = [(space, key) for space, key in keys if space.l2_ttl]
        if self.link is not None and shared:
            if not await self._l2_invalidate(shared):
                self._pending.update(shared)
        if broadcast and self.on_invalidate is not None:
            await self.on_invalidate(names)

    async def put(self, space: Space, values: Mapping[Any, Cacheable]) -> None:
        """Store values that have no loader (drawn by the reader that missed them, like post frames) in L1 and
        L2. For values checked against their source when read: unlike a refill, a put that races with an
        invalidation of its key may land after it (and stay until its TTL)."""
        named = {redis_key(space, key): check(value) for key, value in values.items()}
        for name, value in named.items():
            self._keep(space, name, value, self._generations.get(name, 0))
        if self.link is None or not named or not space.l2_ttl:
            return
        ttl = int(space.l2_ttl * 1000)

        async def store(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for name, value in named.items():
                    pipe.set(name, _stamp(value), px=ttl)
                await pipe.execute()

        await self.link.run(store)

    def drop(self, names: Iterable[str]) -> None:
        """Forget these keys in this process (a local write, or an invalidation from the bus)."""
        changes = self._changes
        for name in names:
            self._generations[name] = self._generations.get(name, 0) + 1
            space = name[_SPACE_AT : name.find(":", _SPACE_AT)]
            changes[space] = changes.get(space, 0) + 1
            for store in self._stores:
                store.discard(name)
        if len(self._generations) > 100_000:
            # Only the counts of keys being refilled right now matter; a fresh start makes refills in flight
            # look raced, and they simply do not keep their value.
            self._generations = {name: 1 for name in self._inflight}

    def drop_space(self, space: Space) -> None:
        """Forget every key of ``space`` in this process (an erased account's words may be in any page blob)."""
        store = self._own.get(space.name, self._l1)
        held = [name for name in list(store.recent) if name.startswith(space.key_prefix)]
        self.drop([*held, *(name for name in self._inflight if name.startswith(space.key_prefix))])  # fills too

    def flush(self) -> None:
        """Forget everything in L1 (the bus lost messages, or Redis came back)."""
        for name in list(self._inflight):
            self._generations[name] = self._generations.get(name, 0) + 1
        for store in self._stores:
            store.clear()
        self._flushes += 1
        self.stats.flushes += 1

    async def replay_pending(self) -> None:
        """After an outage: the invalidations Redis missed, before anything is read from it again."""
        keys, self._pending = list(self._pending), set()
        if keys and not await self._l2_invalidate(keys):
            self._pending.update(keys)
            raise ConnectionError("Redis went away again while replaying invalidations")
        ids, self._shown_pending = list(self._shown_pending), {}
        if ids:
            await self.note_shown(ids)
            if self._shown_pending:
                raise ConnectionError("Redis went away again while replaying the shown log")

    async def note_shown(self, ids: Iterable[int]) -> None:
        """Add posts and people that look different on a page now to the shown log (:mod:`feed.cache.shown`), after
        their invalidation; kept for when Redis is back if it is away."""
        added = list(dict.fromkeys(ids))
        if self.link is None or not added:
            return
        if await self._shown(shown.entries(added)) is None:
            self._shown_pending.update(dict.fromkeys(added))

    async def shown_log(self) -> shown.Log | None:
        """The shown log now, started if there is none (None: no Redis, or it is away)."""
        return shown.Log.parse(await self._shown(b"")) if self.link is not None else None

    async def _shown(self, added: bytes) -> bytes | None:
        assert self.link is not None

        def shape(names: list[str]) -> tuple[list[str], list[Any]]:
            return names, [shown.MOST, shown.new_epoch(), added]

        done = await self.link.run(lambda r: self._scripts.per_node(r, "shown", shown.APPEND, [shown.KEY], shape))
        return None if done is None else done[0]

    # -- Redis

    async def _l2_read(self, names: list[str]) -> list[bytes | None] | None:
        if self.link is None:
            return None
        result: list[Any] | None = await self.link.run(lambda r: read_many(r, names))
        return result

    async def _l2_store(self, items: list[tuple[Space, str, Cacheable]], generations: dict[str, bytes]) -> None:
        assert self.link is not None
        named = {name: (space, value) for space, name, value in items}

        def shape(names: list[str]) -> tuple[list[str], list[Any]]:
            args: list[Any] = [len(names)]
            args += [generations.get(name, b"") for name in names]
            args += [int(named[name][0].l2_ttl * 1000) for name in names]
            args += [_stamp(named[name][1]) for name in names]
            return names + [generation_of(n) for n in names], args

        await self.link.run(lambda r: self._scripts.per_node(r, "store", _STORE_IF_UNCHANGED, list(named), shape))

    async def _l2_invalidate(self, keys: list[tuple[Space, Key]]) -> bool:
        """Each key's generation counter up (so that a refill that read the database before this does not keep its
        value) and its value gone: one script per hash slot (every slot, on one Redis)."""
        assert self.link is not None
        ttls = {redis_key(space, key): int(space.l2_ttl * 2000) for space, key in keys}

        def shape(names: list[str]) -> tuple[list[str], list[Any]]:
            return names + [generation_of(n) for n in names], [len(names), *(ttls[name] for name in names)]

        done = await self.link.run(lambda r: self._scripts.per_node(r, "invalidate", _INVALIDATE, list(ttls), shape))
        return done is not None

    # -- metrics

    @property
    def l1_bytes(self) -> int:
        return sum(int(store.currsize) for store in self._stores)

    @property
    def l1_evictions(self) -> int:
        return sum(store.evictions for store in self._stores)

    def l1_space(self, space: Space) -> tuple[int, int]:
        """(bytes, values) held in L1 for ``space``, if it has an L1 of its own (else the shared one's)."""
        store = self._own.get(space.name, self._l1)
        return int(store.currsize), len(store.recent)

    def l1_keys(self, space: Space) -> list[str]:
        """The keys of ``space`` (as given to :meth:`get`, in their text form) whose values L1 holds."""
        store, prefix = self._own.get(space.name, self._l1), space.key_prefix
        return [name[len(prefix) : -1] for name in list(store.recent) if name.startswith(prefix)]

    def l1_items(self) -> list[tuple[str, Cacheable]]:
        """Every key and value in L1 (for the audit of a running process: ``feed.audit.l1``)."""
        return [(name, entry.value) for store in self._stores for name, entry in list(store.recent.items())]

    def l1_values(self) -> list[Cacheable]:
        """Everything in L1, expired entries not yet removed included (for the privacy audit and its test)."""
        return [entry.value for store in self._stores for entry in store.recent.values()]
