"""Where Redis is: one server, a Redis Cluster or a Sentinel-watched primary, from ``CIPHERFEED_REDIS_URL``; and the
link to a real three-node Redis Cluster living through a node's crash."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from feed.bus import Invalidation, RedisBus
from feed.cache import POSTS, TIMELINES, Cache
from feed.queue import ArqQueue
from feed.records import IdList
from feed.redis_link import BadRedisUrl, RedisLink, close_client, make_client, parse_redis_url
from feed.settings import ConfigError, load_settings
from tests.conftest import BACKEND
from tests.feed.processes import RedisClusterNodes, RedisSentinels
from tests.feed.test_cache import Loader, post_record


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "db", "service"),
    [
        ("redis://127.0.0.1:6379/3", "single", [("127.0.0.1", 6379)], 3, ""),
        ("redis://redis", "single", [("redis", 6379)], 0, ""),
        ("redis+cluster://a:7000,b:7001,c", "cluster", [("a", 7000), ("b", 7001), ("c", 6379)], 0, ""),
        ("redis+sentinel://s1:26379,s2/mymaster", "sentinel", [("s1", 26379), ("s2", 26379)], 0, "mymaster"),
        ("redis+sentinel://s1/mymaster/2", "sentinel", [("s1", 26379)], 2, "mymaster"),
        ("rediss+cluster://u:p%40ss@[::1]:7000", "cluster", [("::1", 7000)], 0, ""),
    ],
)
def test_a_redis_url_says_where_redis_is(
    url: str, kind: str, nodes: list[tuple[str, int]], db: int, service: str
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, list(target.nodes), target.db, target.service) == (kind, nodes, db, service)
    assert "p@ss" not in repr(target)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://redis:6379", "starts with"),
        ("redis+mesh://a", "starts with"),
        ("redis://a:7000,b:7001", "several hosts"),
        ("redis+sentinel://s1:26379", "names its primary"),
        ("redis+cluster://a:7000/2", "database 0 only"),
        ("redis://a:port", "not a number"),
        ("redis://a/zero", "is a number"),
    ],
)
def test_a_bad_redis_url_is_one_clear_error(url: str, words: str) -> None:
    with pytest.raises(BadRedisUrl, match=words):
        parse_redis_url(url)
    with pytest.raises(ConfigError, match=f"CIPHERFEED_REDIS_URL: .*{words}"):
        load_settings({"CIPHERFEED_REDIS_URL": url, "CIPHERFEED_SECRET_KEY": "s" * 40})


def test_each_kind_gets_its_client() -> None:
    assert isinstance(make_client("redis://127.0.0.1:6379/0"), Redis)
    assert isinstance(make_client("redis+cluster://127.0.0.1:7000"), RedisCluster)
    primary = make_client("redis+sentinel://127.0.0.1:26379/mymaster")
    assert isinstance(primary, Redis) and "Sentinel" in type(primary.connection_pool).__name__


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.mark.anyio
@pytest.mark.skipif(BACKEND != "postgresql", reason="a fault test: once, in the PostgreSQL pass")
async def test_the_link_lives_through_a_cluster_node_crash(redis_cluster: RedisClusterNodes) -> None:
    link = RedisLink.connect(redis_cluster.url, probe_every=0.1)
    recovered = asyncio.Event()

    async def recovery() -> None:
        recovered.set()

    link.on_recovery(recovery)
    keys = [f"cf:test:{n}" for n in range(30)]  # spread over every node's slots
    for key in keys:
        assert await link.run(lambda r, key=key: r.set(key, key)) is True
    assert await link.run(lambda r: r.mget_nonatomic(keys)) == [k.encode() for k in keys]
    victim = redis_cluster.ports[1]
    redis_cluster.kill_node(victim)
    answers: list[Any] = [await link.run(lambda r, key=key: r.get(key)) for key in keys]
    assert None in answers and not link.up  # no exception: "no answer", and the link knows
    redis_cluster.start_node(victim)  # its append-only file brings back what it acknowledged
    redis_cluster.wait_ok()
    await asyncio.wait_for(recovered.wait(), timeout=20)
    for _ in range(100):
        if link.up:
            break
        await asyncio.sleep(0.1)
    assert link.up
    assert await link.run(lambda r: r.mget_nonatomic(keys)) == [k.encode() for k in keys]
    await link.close()
    await link.client.aclose()


@pytest.mark.anyio
@pytest.mark.skipif(BACKEND != "postgresql", reason="a fault test: once, in the PostgreSQL pass")
async def test_the_two_tier_cache_works_on_a_cluster_and_through_a_node_crash(
    redis_cluster: RedisClusterNodes,
) -> None:
    """Values spread over every node, read by another process from L2, invalidated across slots (a refill that read
    the database before is not kept), refilled under a lock; with a node down, reads go to the loader."""
    one = Cache(RedisLink.connect(redis_cluster.url, probe_every=0.1))
    two = Cache(RedisLink.connect(redis_cluster.url, probe_every=0.1))
    ids = list(range(1, 41))
    loader = Loader({i: post_record(i) for i in ids})
    found = await one.get_many(POSTS, ids, loader)
    assert found == {i: post_record(i) for i in ids} and loader.calls == [ids]
    nodes = [Redis(port=port) for port in redis_cluster.ports]
    sizes = [await node.dbsize() for node in nodes]
    assert all(size > 0 for size in sizes), sizes  # every node holds some
    elsewhere = Loader({})
    assert await two.get_many(POSTS, ids, elsewhere) == found and elsewhere.calls == []  # from L2

    stale = Loader({i: post_record(i) for i in ids})
    stale.gate = asyncio.Event()
    two.flush()
    racing = asyncio.ensure_future(two.get_many(POSTS, ids[:5], stale))  # read the database before the write
    await asyncio.sleep(0.05)
    await one.invalidate([(POSTS, i) for i in ids])  # the write's invalidation, on every slot
    stale.gate.set()
    await racing
    fresh = Loader({i: post_record(i, likes=1) for i in ids})
    one.flush()
    assert all(r.likes_count == 1 for r in (await one.get_many(POSTS, ids, fresh)).values())
    assert fresh.calls == [ids]  # the raced refill was not kept in L2

    timeline = Loader({"public": IdList((3, 2, 1))})
    assert await one.get(TIMELINES, "public", timeline) == IdList((3, 2, 1))  # under the refill lock

    victim = redis_cluster.ports[0]
    redis_cluster.kill_node(victim)
    one.flush()
    fallback = Loader({i: post_record(i, likes=2) for i in ids})
    got = await one.get_many(POSTS, ids, fallback)  # no exception: the loader answers
    assert set(got) == set(ids) and fallback.calls
    redis_cluster.start_node(victim)
    redis_cluster.wait_ok()
    for cache in (one, two):
        assert cache.link is not None
        for _ in range(200):
            if cache.link.up:
                break
            await asyncio.sleep(0.05)
        assert cache.link.up
        await cache.link.close()
        await close_client(cache.link.client)
    for node in nodes:
        await node.aclose()


async def subscribed_node(nodes: RedisClusterNodes) -> int:
    """The node a pub/sub subscriber is connected to."""
    for port in nodes.ports:
        node = Redis(port=port)
        try:
            if any(int(client.get("sub", 0)) for client in await node.client_list()):
                return port
        finally:
            await node.aclose()
    raise AssertionError("no subscriber on any node")


@pytest.mark.anyio
@pytest.mark.skipif(BACKEND != "postgresql", reason="a fault test: once, in the PostgreSQL pass")
async def test_invalidations_cross_a_cluster_and_a_listener_moves_off_a_dead_node(
    redis_cluster: RedisClusterNodes,
) -> None:
    """The bus of one process reaches another's on a cluster (published where the sequence key lives, heard on
    another node); the listener whose node dies resubscribes on another one, and flushes (it may have missed some)."""
    links = [RedisLink.connect(redis_cluster.url, probe_every=0.1) for _ in range(2)]
    sender, listener = RedisBus(links[0]), RedisBus(links[1])
    heard: list[tuple[str, ...]] = []
    resets: list[int] = []
    listener.on_message(lambda message: heard.append(tuple(message.keys)))
    listener.on_reset(lambda: resets.append(1))
    await listener.start()
    await asyncio.wait_for(listener.ready.wait(), timeout=10)
    await sender.publish(Invalidation(keys=["cf:{p:1}", "cf:{u:2}"]))
    for _ in range(100):
        if heard:
            break
        await asyncio.sleep(0.02)
    assert heard == [("cf:{p:1}", "cf:{u:2}")]
    listened_on = await subscribed_node(redis_cluster)
    before = len(resets)
    redis_cluster.kill_node(listened_on)
    redis_cluster.start_node(listened_on)
    redis_cluster.wait_ok()
    for _ in range(200):
        if len(resets) > before and listener.ready.is_set():
            break
        await asyncio.sleep(0.05)
    assert len(resets) > before  # resubscribed, and flushed what it holds
    heard.clear()
    for _ in range(100):  # the sender's link may need a moment after the restart
        await sender.publish(Invalidation(keys=["cf:{p:3}"]))
        await asyncio.sleep(0.05)
        if heard:
            break
    assert ("cf:{p:3}",) in heard
    await listener.stop()
    for link in links:
        await link.close()
        await close_client(link.client)


@pytest.fixture
def redis_sentinels(tmp_path: Path) -> Iterator[RedisSentinels]:
    setup = RedisSentinels(tmp_path)
    setup.start()
    yield setup
    setup.stop()


@pytest.mark.anyio
@pytest.mark.skipif(BACKEND != "postgresql", reason="a fault test: once, in the PostgreSQL pass")
async def test_a_sentinel_failover_under_load_is_followed_without_a_restart(redis_sentinels: RedisSentinels) -> None:
    """Writes keep coming while the primary is killed: after the Sentinels promote the replica, the cache, the bus
    and the job queue go on against the new primary, with the same clients."""
    link = RedisLink.connect(redis_sentinels.url, probe_every=0.1)
    cache, bus = Cache(link), RedisBus(link)
    queue = ArqQueue.from_url(redis_sentinels.url)
    heard: list[tuple[str, ...]] = []
    bus.on_message(lambda message: heard.append(tuple(message.keys)))
    await bus.start()
    await asyncio.wait_for(bus.ready.wait(), timeout=10)
    assert await queue.enqueue("fan_out", 1, key="before-failover") is True
    stop = asyncio.Event()
    written: list[int] = []

    async def load() -> None:  # a write (a cache store after a load) every 20 ms, through the failover
        n = 0
        while not stop.is_set():
            n += 1
            await cache.get_many(POSTS, [n], Loader({n: post_record(n)}))
            written.append(n)
            await asyncio.sleep(0.02)

    writer = asyncio.ensure_future(load())
    await asyncio.sleep(0.3)
    old = redis_sentinels.primary
    redis_sentinels.kill(old)
    deadline = asyncio.get_running_loop().time() + 30
    while redis_sentinels.primary_now() == old:
        assert asyncio.get_running_loop().time() < deadline, "the Sentinels did not fail over"
        await asyncio.sleep(0.2)
    assert redis_sentinels.primary_now() == redis_sentinels.replica
    for _ in range(200):  # the link notices, probes the new primary, and is up again
        if link.up and await link.run(lambda r: r.set("cf:test:after", "1")):
            break
        await asyncio.sleep(0.1)
    assert link.up
    stop.set()
    await writer
    assert len(written) > 20  # the load never stopped on an error
    newest = written[-1] + 1
    await cache.get_many(POSTS, [newest], Loader({newest: post_record(newest)}))
    other = Cache(RedisLink.connect(redis_sentinels.url))
    nothing = Loader({})
    assert await other.get_many(POSTS, [newest], nothing) == {newest: post_record(newest)} and nothing.calls == []
    sender = RedisBus(other.link)  # another process's bus (a bus does not hear its own messages)
    for _ in range(200):  # what was published before it resubscribed it missed, and flushed for (tested elsewhere)
        await sender.publish(Invalidation(keys=["cf:{p:9}"]))
        await asyncio.sleep(0.05)
        if ("cf:{p:9}",) in heard:
            break
    assert ("cf:{p:9}",) in heard  # the listener resubscribed on the new primary
    assert await queue.enqueue("fan_out", 2, key="after-failover") is True
    await queue.close()
    await bus.stop()
    for each in (link, other.link):
        assert each is not None
        await each.close()
        await close_client(each.client)


def test_the_job_queue_runs_on_one_redis_or_sentinel_never_a_cluster() -> None:
    base = {"CIPHERFEED_SECRET_KEY": "s" * 40}
    assert load_settings(base | {"CIPHERFEED_REDIS_URL": "redis://r/1"}).queue_redis_url == "redis://r/1"
    sentinel = "redis+sentinel://s1,s2/main"
    assert load_settings(base | {"CIPHERFEED_REDIS_URL": sentinel}).queue_redis_url == sentinel
    cluster = {"CIPHERFEED_REDIS_URL": "redis+cluster://a:7000,b:7000"}
    with pytest.raises(ConfigError, match="CIPHERFEED_QUEUE_REDIS_URL is needed with a Redis Cluster"):
        load_settings(base | cluster)
    both = load_settings(base | cluster | {"CIPHERFEED_QUEUE_REDIS_URL": "redis://q:6379/0"})
    assert both.queue_redis_url == "redis://q:6379/0"
    with pytest.raises(ConfigError, match="cannot run on a Redis Cluster"):
        load_settings(base | cluster | {"CIPHERFEED_QUEUE_REDIS_URL": "redis+cluster://a"})
    assert load_settings(base).queue_redis_url is None  # the embedded mode runs its jobs itself
    with pytest.raises(ConfigError, match="needs CIPHERFEED_REDIS_URL"):
        load_settings(base | {"CIPHERFEED_QUEUE_REDIS_URL": "redis://q"})
