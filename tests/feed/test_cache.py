"""The two-tier cache against a real Redis: what it accepts, single flight, the generation guard, early refresh,
the byte bound, outages, the Redis round trips a timeline page costs, and the synchronous L1 lookup."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from crypto import RootKeyRing, UserKey, seal_fields
from feed.bus import RedisBus
from feed.cache import (
    BLOCKED,
    HOME,
    PAGE_SPACES,
    PAGES,
    POSTS,
    STATUS_PAGES,
    TIMELINES,
    Cache,
    Space,
    redis_key,
    shown,
    with_derived,
)
from feed.cache import Request as CacheRequest
from feed.metrics import Registry
from feed.records import (
    IdList,
    IdSet,
    NotCacheable,
    PostRecord,
    RefList,
    SealedFrame,
    SealedPage,
    SessionRecord,
    UserRecord,
    WrappedKey,
    decode,
    encode,
)
from feed.redis_link import RedisLink, make_client
from feed.runtime import _wire
from feed.services.keys import KeyStore
from tests.conftest import TEST_REDIS_DB_URL
from tests.feed.test_metrics import parse, series
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FAST = Space("test", l1_ttl=0.2, l2_ttl=0.5)
EXPIRING = Space("expiring", l1_ttl=0.05, l2_ttl=1, refresh_after=2)  # expires before an early refresh is due
SLOW = Space("slow", l1_ttl=1, l2_ttl=5, refresh_after=0.5)  # due for early refresh from 0.5 s, expired from 0.9 s


@functools.cache
def post_record(post_id: int = 7, likes: int = 0) -> PostRecord:
    key = UserKey.generate(1, 1)
    sealed = seal_fields(key, {"body": "hello", "cw": "spoiler"}, object_id=post_id, owner_id=1, revision=1)
    return PostRecord(
        post_id, 1, "public", None, None, 1, 1, likes, 0, NOW, None, sealed["body"], sealed["cw"], ((2, "bob"),)
    )


@pytest.fixture
async def cache() -> AsyncIterator[Cache]:
    link = RedisLink(make_client(TEST_REDIS_DB_URL))
    await link.client.flushdb()
    yield Cache(link)
    await link.client.flushdb()
    await link.close()


class Loader:
    """A database stand-in that counts its calls and can be held mid-read."""

    def __init__(self, values: dict[Any, Any]) -> None:
        self.values = values
        self.calls: list[list[Any]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, keys: list[Any]) -> dict[Any, Any]:
        self.calls.append(keys)
        snapshot = {k: self.values[k] for k in keys if k in self.values}
        if self.gate is not None:
            await self.gate.wait()
        return snapshot


def test_every_record_type_round_trips_and_plain_values_are_refused() -> None:
    ring = RootKeyRing.generate()
    for value in (
        post_record(),
        UserRecord(1, "alice", "Alice", "bio <b>", 1, NOW),
        SessionRecord(1, NOW),
        IdList((3, 2, 1)),
        IdSet(frozenset({5, 7}), floor=5),
        RefList(((3, 1, 1, 0), (2, 4, 2, 1))),
        SealedFrame(2, 12345, post_record().body),
        SealedPage(
            "home|ab12",
            1,
            1_800_000_000,
            ((9, 2, 0), (8, 1, 4)),
            ((1, "alice", "Alice"), (4, "bo", "\x00")),
            "culdprkbP",
            1_700_000_000_000,
            post_record().body,
        ),
        WrappedKey(ring.wrap_user_key(UserKey.generate(1, 1))),
    ):
        assert decode(encode(value)) == value
        if isinstance(value, SealedPage):  # the digest its seal is bound to survives the trip
            assert decode(encode(value)).header_digest() == value.header_digest()  # type: ignore[union-attr]
    for bad in ("plain text", b"raw bytes", {"text": "x"}, 42):
        with pytest.raises(NotCacheable):
            encode(bad)  # type: ignore[arg-type]


async def test_a_loader_returning_plain_text_is_refused(cache: Cache) -> None:
    with pytest.raises(NotCacheable):
        await cache.get_many(POSTS, [1], Loader({1: "decrypted text"}))
    assert cache.l1_values() == []
    assert await cache.link.client.keys("*") == []  # type: ignore[union-attr]


async def test_two_hundred_readers_of_one_cold_key_cause_one_load(cache: Cache) -> None:
    loader = Loader({7: post_record()})
    loader.gate = asyncio.Event()
    readers = [asyncio.ensure_future(cache.get(POSTS, 7, loader)) for _ in range(200)]
    await asyncio.sleep(0.05)
    loader.gate.set()
    assert all(value == post_record() for value in await asyncio.gather(*readers))
    assert loader.calls == [[7]]
    assert await cache.get(POSTS, 7, loader) == post_record()  # now from L1
    cache.flush()
    assert await cache.get(POSTS, 7, loader) == post_record()  # from L2
    assert loader.calls == [[7]]


async def test_a_refill_that_raced_an_invalidation_is_not_kept(cache: Cache) -> None:
    loader = Loader({7: post_record(likes=1)})
    loader.gate = asyncio.Event()
    reader = asyncio.ensure_future(cache.get(POSTS, 7, loader))
    await asyncio.sleep(0.05)  # the reader has read the database (likes=1) and is about to store it
    loader.values[7] = post_record(likes=2)  # a writer commits...
    await cache.invalidate([(POSTS, 7)])  # ...and invalidates
    loader.gate.set()
    assert (await reader).likes_count == 1  # that reader answers with what it read
    assert cache.l1_values() == []  # but neither tier kept it
    assert await cache.link.client.get(redis_key(POSTS, 7)) is None  # type: ignore[union-attr]
    assert (await cache.get(POSTS, 7, loader)).likes_count == 2  # type: ignore[union-attr]


async def test_the_changes_stamp_moves_with_whatever_l1_may_hold_anew(cache: Cache) -> None:
    """``Cache.changes``: a check of what L1 held is still good while it stands (``feed.web.page_blobs``)."""
    loader = Loader({7: post_record(likes=1)})
    stamps = [cache.changes(POSTS)]
    await cache.get(POSTS, 7, loader)  # kept in L1
    stamps.append(cache.changes(POSTS))
    assert cache.cached(POSTS, 7) is not None and cache.changes(POSTS) == stamps[-1]  # a read moves nothing
    await cache.get(TIMELINES, "public", Loader({"public": post_record()}))
    assert cache.changes(POSTS) == stamps[-1]  # nor does another space
    await cache.invalidate([(POSTS, 7)])
    stamps.append(cache.changes(POSTS))
    await cache.get(POSTS, 7, loader)  # from Redis or the database again: kept anew
    stamps.append(cache.changes(POSTS))
    cache.flush()
    stamps.append(cache.changes(POSTS))
    assert len(set(stamps)) == len(stamps), stamps


async def test_invalidation_from_another_process_reaches_redis_and_the_bus(cache: Cache) -> None:
    loader = Loader({7: post_record()})
    await cache.get(POSTS, 7, loader)
    published: list[list[str]] = []

    async def publish(names: list[str]) -> None:
        published.append(names)

    cache.on_invalidate = publish
    await cache.invalidate([(POSTS, 7)])
    assert published == [[redis_key(POSTS, 7)]]
    assert await cache.link.client.get(redis_key(POSTS, 7)) is None  # type: ignore[union-attr]


async def test_hot_keys_are_refreshed_early_in_the_background(cache: Cache) -> None:
    loader = Loader({"k": IdList((1,))})
    assert await cache.get(FAST, "k", loader) == IdList((1,))
    loader.values["k"] = IdList((2, 1))
    await asyncio.sleep(0.17)  # past 80% of L1's 0.2 s: served from L1, refilled from L2 behind the reader
    assert await cache.get(FAST, "k", loader) == IdList((1,))
    await asyncio.sleep(0.25)  # past 80% of L2's 0.5 s: served, and reloaded from the database behind the reader
    cache.flush()
    assert await cache.get(FAST, "k", loader) == IdList((1,))
    await asyncio.sleep(0.05)
    assert len(loader.calls) == 2
    assert await cache.get(FAST, "k", loader) == IdList((2, 1))


async def test_l1_stays_within_its_byte_bound() -> None:
    cache = Cache(None, l1_bytes=20_000)
    loader = Loader({i: post_record(i) for i in range(100)})
    for i in range(100):
        await cache.get(POSTS, i, loader)
    assert 0 < cache.l1_bytes <= 20_000
    assert cache.l1_evictions > 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_redis_down_falls_back_to_the_database_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    link = RedisLink(make_client(f"redis://127.0.0.1:{closed_port()}/0"), probe_every=60)
    cache = Cache(link)
    loader = Loader({i: post_record(i) for i in range(5)})
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            assert await cache.get(POSTS, i, loader) == post_record(i)
        await cache.invalidate([(POSTS, 1)])
    warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert cache._pending == {(POSTS, 1)}  # replayed when Redis is back
    await link.close()


async def test_a_home_page_missing_l1_costs_one_redis_round_trip(make_redis_browser: Any, redis_app: Any) -> None:
    alice = await make_redis_browser("alice")
    bob = await make_redis_browser("bob")
    await alice.post("/@bob/follow")
    for i in range(12):
        await alice.compose(f"alice {i}")
        await bob.compose(f"bob {i}")
    for _ in range(100):  # bob's posts reach alice's home feed through the worker's fan-out
        page = await alice.get("/")  # warms both tiers
        ids = [int(i) for i in re.findall(r'<article class="post[^"]*" id="post-(\d+)"', page.text)]
        if len(ids) == 20:
            break
        await asyncio.sleep(0.1)
    assert len(ids) == 20
    cache: Cache = redis_app.state.cache
    cache.drop([redis_key(POSTS, i) for i in ids])  # the posts leave L1 (Redis still has them)
    client = cache.link.client  # type: ignore[union-attr]
    calls: list[str] = []
    real_execute = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return await real_execute(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]
    try:
        again = await alice.get("/")
    finally:
        del client.execute_command
    assert [int(i) for i in re.findall(r'<article class="post[^"]*" id="post-(\d+)"', again.text)] == ids
    assert calls == ["MGET"], calls


async def test_expensive_refills_happen_in_one_process(cache: Cache) -> None:
    other = Cache(RedisLink(make_client(TEST_REDIS_DB_URL)))  # a second process's cache, same Redis
    first, second = Loader({"public": IdList((3, 2, 1))}), Loader({"public": IdList((3, 2, 1))})
    first.gate = asyncio.Event()
    one = asyncio.ensure_future(cache.get(TIMELINES, "public", first))
    await asyncio.sleep(0.05)  # the first process holds the refill lock
    two = asyncio.ensure_future(other.get(TIMELINES, "public", second))
    await asyncio.sleep(0.1)
    first.gate.set()
    assert await one == await two == IdList((3, 2, 1))
    assert len(first.calls) == 1 and second.calls == []  # the second process waited for the first's result
    await other.link.close()  # type: ignore[union-attr]


async def test_unwrapped_keys_are_forgotten_in_every_process(redis_clean: Any, redis_env: dict[str, str]) -> None:
    from feed.app import create_app
    from feed.services import accounts, lookup
    from feed.settings import load_settings
    from tests.conftest import PASSWORD

    here = redis_clean.state.services
    other_app = create_app(load_settings(redis_env))
    async with other_app.router.lifespan_context(other_app):
        there = other_app.state.services
        await asyncio.wait_for(other_app.state.bus.ready.wait(), 5)
        user = await accounts.register(here, "keyholder", PASSWORD)
        async with there.db() as session:
            await there.keys.get(session, user.id, 1)  # the other process has the unwrapped key in memory
        assert (user.id, 1) in there.keys._memory
        await lookup.forget_user_keys(here, user.id, [1])
        for _ in range(100):
            if (user.id, 1) not in there.keys._memory:
                break
            await asyncio.sleep(0.01)
        assert (user.id, 1) not in there.keys._memory


async def test_waiters_fill_for_themselves_when_the_filling_request_goes_away(cache: Cache) -> None:
    loader = Loader({7: post_record()})
    loader.gate = asyncio.Event()
    owner = asyncio.ensure_future(cache.get(POSTS, 7, loader))
    await asyncio.sleep(0.02)
    waiter = asyncio.ensure_future(cache.get(POSTS, 7, loader))
    await asyncio.sleep(0.02)
    owner.cancel()  # e.g. its client disconnected
    await asyncio.sleep(0.02)
    loader.gate.set()
    assert await waiter == post_record()
    assert owner.cancelled()


async def test_a_zero_byte_l1_means_no_l1() -> None:
    cache = Cache(None, l1_bytes=0)
    loader = Loader({7: post_record()})
    assert await cache.get(POSTS, 7, loader) == post_record()
    assert await cache.get(POSTS, 7, loader) == post_record()
    assert len(loader.calls) == 2 and cache.l1_values() == []


def l1_hits(registry: Registry, space: Space) -> float:
    return parse(registry.render()).get(series("cipherfeed_cache_hits_total", tier="l1", space=space.name), 0.0)


async def test_the_synchronous_lookup_gives_what_l1_holds_and_nothing_else() -> None:
    registry = Registry()
    cache = Cache(None, metrics=registry)
    loader = Loader({i: post_record(i) for i in range(4)})
    assert cache.cached(POSTS, 1) is None and cache.cached_many(POSTS, [1, 2]) == {}  # cold: nothing is loaded
    assert loader.calls == [] and l1_hits(registry, POSTS) == 0
    await cache.get_many(POSTS, [1, 2], loader)
    assert cache.cached(POSTS, 1) == post_record(1)
    assert cache.cached_many(POSTS, [1, 2, 2, 3]) == {1: post_record(1), 2: post_record(2)}  # 3 was never read
    assert l1_hits(registry, POSTS) == 3  # one per distinct key returned
    await cache.invalidate([(POSTS, 1)])
    assert cache.cached(POSTS, 1) is None
    assert cache.cached_many(POSTS, [1, 2]) == {2: post_record(2)}
    assert loader.calls == [[1, 2]]
    assert await cache.get_many(POSTS, [1, 2], loader) == {1: post_record(1), 2: post_record(2)}
    assert loader.calls == [[1, 2], [1]]
    assert l1_hits(registry, POSTS) == 5


async def test_an_expired_entry_is_not_served_and_leaves_l1() -> None:
    cache = Cache(None)
    loader = Loader({"k": IdList((1,))})
    await cache.get(EXPIRING, "k", loader)
    assert cache.cached(EXPIRING, "k") == IdList((1,))
    await asyncio.sleep(0.06)
    assert cache.cached(EXPIRING, "k") is None
    assert cache.cached_many(EXPIRING, ["k"]) == {}
    assert cache.l1_values() == []
    loader.values["k"] = IdList((2,))
    assert await cache.get(EXPIRING, "k", loader) == IdList((2,))
    assert len(loader.calls) == 2


async def test_a_key_due_for_early_refresh_is_left_to_the_async_path() -> None:
    registry = Registry()
    cache = Cache(None, metrics=registry)
    loader = Loader({"k": IdList((1,))})
    await cache.get(SLOW, "k", loader)
    loader.values["k"] = IdList((2, 1))
    await asyncio.sleep(0.55)
    assert cache.cached_many(SLOW, ["k"]) == {} and l1_hits(registry, SLOW) == 0  # get_many counts it
    assert await cache.get_many(SLOW, ["k"], loader) == {"k": IdList((1,))}  # from L1, refreshed behind the reader
    assert l1_hits(registry, SLOW) == 1
    for _ in range(100):
        if len(loader.calls) == 2 and cache.cached(SLOW, "k") is not None:
            break
        await asyncio.sleep(0.01)
    assert cache.cached(SLOW, "k") == IdList((2, 1))
    assert len(loader.calls) == 2


async def test_expired_entries_make_room_before_live_ones_are_evicted() -> None:
    records = {i: post_record(i) for i in range(100)}
    fit = 20_000 // max(record.size for record in records.values())
    cache = Cache(None, l1_bytes=20_000)
    await cache.get_many(EXPIRING, range(fit), Loader(records))
    await asyncio.sleep(0.06)
    await cache.get_many(POSTS, range(fit), Loader(records))
    assert cache.l1_evictions == 0
    assert len(cache.cached_many(POSTS, range(fit))) == fit
    assert 0 < cache.l1_bytes <= 20_000


async def test_a_hit_keeps_its_key_from_eviction() -> None:
    loader = Loader({i: post_record(i) for i in range(4)})
    cache = Cache(None, l1_bytes=3 * max(record.size for record in loader.values.values()))
    await cache.get_many(POSTS, [0, 1, 2], loader)
    assert cache.cached(POSTS, 0) == post_record(0)  # now 1 is the least recently used
    await cache.get(POSTS, 3, loader)
    assert sorted(cache.cached_many(POSTS, range(4))) == [0, 2, 3]
    assert cache.l1_evictions == 1


async def test_redis_counts_as_back_only_once_invalidations_reach_this_process_again() -> None:
    """A Redis that kept its data may hold a value that another process's relay is about to invalidate: this
    process must be listening on the bus before it reads Redis again, however long its listener has backed off."""
    redis_db = urlsplit(TEST_REDIS_DB_URL)
    proxy = TcpProxy(redis_db.port or 6379).start()
    link = RedisLink(make_client(f"redis://127.0.0.1:{proxy.port}{redis_db.path}"), probe_every=0.02)
    cache, bus = Cache(link), RedisBus(link)
    _wire(Registry(), cache, bus, KeyStore(RootKeyRing.generate()), link)
    back = asyncio.get_running_loop().create_future()

    async def listening_when_back() -> None:  # the last recovery step: how things stand when the link is up
        if not back.done():
            back.set_result(bus.ready.is_set())

    link.on_recovery(listening_when_back)
    await bus.start()
    try:
        await asyncio.wait_for(bus.ready.wait(), 5)
        proxy.cut()
        await cache.get(POSTS, 1, Loader({1: post_record(1)}))  # notices the outage
        assert not link.up
        await asyncio.sleep(2.5)  # the listener's back-off has grown past a second
        proxy.restore()
        assert await asyncio.wait_for(back, 5), "Redis counted as back before this process listened for invalidations"
    finally:
        await bus.stop()
        await link.close()
        proxy.stop()


async def test_page_blobs_have_an_l1_of_their_own_that_keeps_the_viewers_who_read() -> None:
    """Page blobs are large: in their own bounded L1 they never push out the small values every page reads, and of
    themselves the least recently read go first (active viewers keep theirs)."""
    sealed = seal_fields(UserKey.generate(1, 1), {"page:home": "x" * 20_000}, object_id=1, owner_id=1, revision=0)
    blob = SealedPage("home|v", 1, 2**31, ((1, 1, 0),), ((1, "alice", ""),), "p", 0, sealed["page:home"])
    cache = Cache(None, l1_bytes=100_000, budgets={PAGES: blob.size * 4})
    posts = Loader({i: post_record(i) for i in range(10)})
    await cache.get_many(POSTS, list(range(10)), posts)
    for viewer in range(4):
        await cache.get(PAGES, viewer, Loader({viewer: blob}))
    for _ in range(3):  # viewers 0 and 1 keep reading
        assert cache.cached(PAGES, 0) is blob and cache.cached(PAGES, 1) is blob
    for viewer in range(4, 6):
        await cache.get(PAGES, viewer, Loader({viewer: blob}))
    held = {viewer for viewer in range(6) if cache.cached(PAGES, viewer) is not None}
    assert held == {0, 1, 4, 5}, held
    assert cache.l1_space(PAGES) == (4 * blob.size, 4)
    assert len(cache.cached_many(POSTS, range(10))) == 10, "a page blob pushed a post out of the shared L1"


# The shown log (feed.cache.shown): what a blob read from Redis is checked against, instead of the records of the
# posts and people on it.


async def log_of(cache: Cache) -> shown.Log:
    log = await cache.shown_log()
    assert log is not None
    return log


async def test_a_mark_tells_whether_any_of_a_pages_ids_changed_since(cache: Cache) -> None:
    drawn = await log_of(cache)  # started by the first read
    assert drawn.seq == 0 and drawn.kept == 0
    mark = drawn.mark()
    assert drawn.changed(mark, {1, 2}) is False
    await cache.note_shown([5, 6])
    await cache.note_shown([7])
    now = await log_of(cache)
    assert now.epoch == drawn.epoch and now.seq == 3
    assert now.changed(mark, {1, 6}) is True
    assert now.changed(mark, {7}) is True
    assert now.changed(mark, {1, 2}) is False
    assert now.changed(now.mark(), {5, 6, 7}) is False  # drawn after them


async def test_a_mark_the_log_cannot_vouch_for_means_check(cache: Cache) -> None:
    first = await log_of(cache)
    mark = first.mark()
    await cache.note_shown(range(10, 10 + shown.MOST))
    full = await log_of(cache)
    assert full.kept == shown.MOST and full.changed(mark, {1}) is False  # every entry since is still kept
    await cache.note_shown([99])
    assert (await log_of(cache)).changed(mark, {1}) is None  # one entry since the mark is gone: cannot tell
    for made_up in ("", "nonsense", f"{first.epoch.hex()}:x", f"{first.epoch.hex()}:{10**6}"):
        assert full.changed(made_up, {1}) is None
    # The log lost (Redis restarted, the key evicted): a new one with a new epoch vouches for no older mark.
    await cache.link.client.delete(shown.KEY)  # type: ignore[union-attr]
    again = await log_of(cache)
    assert again.epoch != first.epoch and again.changed(full.mark(), {1}) is None


async def test_a_page_showing_what_the_log_names_is_marked_before_it(cache: Cache) -> None:
    """The drawing process's L1 may not have heard of a change the log already names: the mark makes readers
    elsewhere check the page."""
    await cache.note_shown([1, 2, 3])
    log = await log_of(cache)
    assert log.mark_for({9}) == log.mark()
    mark = log.mark_for({2, 9})
    assert mark == log.mark(1)
    assert log.changed(mark, {2}) is True and log.changed(mark, {1}) is False


async def test_a_log_that_turned_over_within_the_bus_lag_gives_no_mark(cache: Cache) -> None:
    now_ms = int(time.time() * 1000)
    old = shown.entries(range(100, 100 + shown.MOST), now_ms - shown.LAG_MS - 1_000)
    await cache._shown(old)  # type: ignore[attr-defined]
    log = await log_of(cache)
    assert log.mark_for({1}) == log.mark()  # full, but its oldest change is older than the lag
    await cache.note_shown(range(1_000, 1_000 + shown.MOST))  # pushed out all within the lag
    # A change pushed out may not have reached this L1 yet: no mark, its readers elsewhere check the page.
    assert (await log_of(cache)).mark_for({1}) == ""


async def test_changes_noted_while_redis_is_away_are_noted_once_it_is_back(cache: Cache) -> None:
    mark = (await log_of(cache)).mark()
    link = cache.link
    assert link is not None
    link.up = False  # as RedisLink.down leaves it, without its reconnecting task
    await cache.note_shown([41, 42])
    link.up = True
    assert (await log_of(cache)).changed(mark, {41}) is False
    await cache.replay_pending()
    assert (await log_of(cache)).changed(mark, {42}) is True


async def test_the_log_holds_ids_and_times_only() -> None:
    log = shown.Log.parse(b"\x01" * 8 + (2).to_bytes(8, "big") + shown.entries([7, 8], 1_700_000_000_000))
    assert log is not None and log.seq == 2 and log.kept == 2
    for bad in (None, b"", b"short", b"\x01" * 8 + (2).to_bytes(8, "big") + b"odd"):
        assert shown.Log.parse(bad) is None


async def test_strings_are_read_with_a_requests_own_keys_never_before_them(cache: Cache) -> None:
    """A request with keys of its own to read reads the strings it asks for in that same round trip, not from
    another request's read begun earlier (which may still be loading from the database)."""
    held = Loader({})
    held.gate = asyncio.Event()
    loading = asyncio.Event()

    async def load(keys: list[Any]) -> dict[Any, Any]:
        loading.set()
        return await held(keys)

    first = asyncio.create_task(cache.get_multi_with([CacheRequest(POSTS, [1], load)], [shown.KEY]))
    await loading.wait()  # the first request is past its Redis read, in its database load
    await cache.note_shown([42])
    _, read = await cache.get_multi_with([CacheRequest(POSTS, [2], Loader({}))], [shown.KEY])
    assert read is not None
    log = shown.Log.parse(read[shown.KEY])
    assert log is not None and log.seq == 1, "the log as it is now, with 42 in it"
    held.gate.set()
    _, before = await first
    assert before is not None and before[shown.KEY] is None  # the first read it before there was a log


def test_an_invalidation_received_drops_what_it_derives_whichever_release_sent_it() -> None:
    """A process that receives an invalidation adds the keys it derives (feed.cache.DERIVED) itself: a sender of an
    older release may not know a page blob space added since, and its block would leave that blob standing."""
    sent = [redis_key(BLOCKED, 7), redis_key(HOME, 8), redis_key(POSTS, 9), redis_key(TIMELINES, "public"),
            shown.KEY, "cf:{x:", "cf:{z:1}", "elsewhere"]  # fmt: skip
    received = with_derived(sent)
    assert received[: len(sent)] == sent
    assert set(received[len(sent) :]) == {redis_key(space, 7) for space in PAGE_SPACES} | {
        redis_key(PAGES, 8),
        redis_key(STATUS_PAGES, 8),
    }
    assert with_derived(received) == received
