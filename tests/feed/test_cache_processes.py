"""Issue 3's "Done when", end to end: two real `cipherfeed serve` processes (A and B) on one database and a Redis
server this test owns, so it can crash it. What one process writes, the other shows on its next request; a Redis
crash costs no request and leaves nothing stale behind; a cold key under a burst costs one database read per
process; like counts converge on the database's.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa

from feed.bus import Invalidation, RedisBus
from feed.cache import POSTS, Cache
from feed.redis_link import RedisLink, make_client
from feed.storage.tables import likes, posts
from tests.conftest import BACKEND
from tests.feed.processes import (
    HITS,
    MISSES,
    Account,
    Cluster,
    ClusterRedis,
    RedisServer,
    like_count,
    metric,
    within,
)

pytestmark = pytest.mark.anyio
APPLIED = "cipherfeed_invalidations_applied_total"


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer | ClusterRedis]:
    """Each test on one Redis server, and (in the PostgreSQL pass) on a Redis Cluster of three primaries."""
    if request.param == "redis-cluster" and BACKEND != "postgresql":
        pytest.skip("the Redis Cluster runs once, in the PostgreSQL pass")
    server = RedisServer(tmp_path) if request.param == "redis" else ClusterRedis(tmp_path)
    server.start()
    yield server
    if isinstance(server, ClusterRedis):
        server.stop()
    else:
        server.kill()


async def db_likes(engine: Any, post_id: int) -> tuple[int, int]:
    """(rows in likes, posts.likes_count) for the post, as the database holds them."""
    async with engine.connect() as conn:
        rows = await conn.scalar(sa.select(sa.func.count()).select_from(likes).where(likes.c.post_id == post_id))
        count = await conn.scalar(sa.select(posts.c.likes_count).where(posts.c.id == post_id))
    return int(rows or 0), int(count or 0)


async def shows_count(client: httpx.AsyncClient, post_id: int, count: int) -> bool:
    response = await client.get(f"/posts/{post_id}")
    assert response.status_code == 200
    return like_count(response.text, post_id) == count


async def test_like_edit_delete_through_a_show_on_b_on_the_next_request(cluster: Cluster) -> None:
    alice = await cluster.account("alice")
    a, b = alice.on["a"], alice.on["b"]
    post_id = await alice.compose("a", "words before the edit")
    url = f"/posts/{post_id}"

    # B holds the record in its L1 (so what follows proves invalidation, not a cold read).
    first = await b.get(url)
    assert first.status_code == 200 and like_count(first.text, post_id) == 0
    await cluster.served_from_l1(b, "b", url)

    assert (await alice.post("a", f"{url}/like")).status_code == 303
    took = await within(1.0, lambda: shows_count(b, post_id, 1))
    assert took is not None, "B still shows the old like count a second after the like on A"

    edit = await a.get(f"{url}/edit")
    assert edit.status_code == 200 and 'name="revision" value="1"' in edit.text
    await cluster.served_from_l1(b, "b", url)
    edited = await alice.post("a", f"{url}/edit", {"status": "words after the edit", "revision": "1"})
    assert edited.status_code == 303, edited.text

    async def shows_edit() -> bool:
        text = (await b.get(url)).text
        return "words after the edit" in text and "words before the edit" not in text

    assert await within(1.0, shows_edit) is not None, "B still shows the old text a second after the edit on A"
    page = await cluster.served_from_l1(b, "b", url)
    assert "words after the edit" in page.text and like_count(page.text, post_id) == 1

    assert (await alice.post("a", f"{url}/delete", {"confirm": "yes"})).status_code == 303

    async def gone() -> bool:
        return (await b.get(url)).status_code == 404

    assert await within(1.0, gone) is not None, "B still serves the post a second after its delete on A"
    assert (await cluster.anonymous["b"].get(url)).status_code == 404


def article_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<article class="post[^"]*" id="post-(\d+)"', html)]


def liked_on_page(html: str, post_id: int) -> bool:
    article = re.search(rf'<article[^>]*id="post-{post_id}".*?</article>', html, re.S)
    assert article, f"post {post_id} is not on the page"
    return 'aria-pressed="true"' in article.group(0)


async def test_a_home_timeline_cached_on_b_follows_posts_likes_and_unfollows_made_on_a(cluster: Cluster) -> None:
    alice = await cluster.account("alice")
    bob = await cluster.account("bob")
    assert (await bob.post("a", "/@alice/follow")).status_code == 303
    older = await alice.compose("a", "before bob looked")
    home = bob.on["b"]

    async def shows_older() -> bool:  # once the worker has run the follow's merge and the post's fan-out
        return article_ids((await home.get("/")).text) == [older]

    assert await within(1.0, shows_older) is not None, "B's home misses a followee's post a second later"

    async def from_l1() -> bool:
        """A home page whose refs came from B's L1 (the first page also queued a rebuild of bob's feed, which
        drops them once more when the worker has run it)."""
        before = await cluster.metrics("b")
        assert article_ids((await home.get("/")).text) == [older]
        return metric(await cluster.metrics("b"), MISSES, space="h") == metric(before, MISSES, space="h")

    assert await within(2.0, from_l1) is not None, "B's home refs are not kept in its L1"

    newer = await alice.compose("a", "after bob looked")

    async def shows_newer() -> bool:
        return article_ids((await home.get("/")).text) == [newer, older]

    assert await within(1.0, shows_newer) is not None, "B's home misses a post made on A a second later"

    assert (await bob.post("a", f"/posts/{older}/like")).status_code == 303

    async def shows_liked() -> bool:
        return liked_on_page((await home.get("/")).text, older)

    assert await within(1.0, shows_liked) is not None, "B's home does not show bob's like made on A"

    assert (await bob.post("a", "/@alice/unfollow")).status_code == 303

    async def empty() -> bool:
        return article_ids((await home.get("/")).text) == []

    assert await within(1.0, empty) is not None, "B's home still shows alice's posts after bob unfollowed on A"


async def test_redis_crash_costs_no_request_and_leaves_nothing_stale(cluster: Cluster, processes_engine: Any) -> None:
    alice = await cluster.account("alice")
    bob = await cluster.account("bob")
    before = await alice.compose("a", "cached on B before the outage")
    during = await alice.compose("a", "first read on B during the outage")
    busy = await alice.compose("a", "liked over and over")
    for where in ("a", "b"):
        assert (await alice.on[where].get(f"/posts/{before}")).status_code == 200

    # (when it ended, process, request, status or error, seconds it took)
    results: list[tuple[float, str, str, int | str, float]] = []
    stop = anyio.Event()
    busy_liked = False

    async def record(where: str, what: str, request: Any) -> None:
        start = time.monotonic()
        try:
            status: int | str = (await request).status_code
        except httpx.HTTPError as exc:
            status = repr(exc)
        results.append((time.monotonic(), where, what, status, time.monotonic() - start))

    async def reader(where: str) -> None:
        while not stop.is_set():
            for url in ("/", "/public", f"/posts/{before}", f"/posts/{busy}"):
                await record(where, f"GET {url}", alice.on[where].get(url))

    async def liker() -> None:
        nonlocal busy_liked
        n = 0
        while not stop.is_set():
            where, action = ("a", "b")[n % 2], ("like", "unlike")[n // 2 % 2]
            await record(where, f"{action} busy", bob.post(where, f"/posts/{busy}/{action}"))
            busy_liked = action == "like"
            n += 1

    async with anyio.create_task_group() as traffic:
        for where in ("a", "b", "a", "b"):
            traffic.start_soon(reader, where)
        traffic.start_soon(liker)
        await anyio.sleep(0.5)

        down_at = time.monotonic()
        cluster.redis.kill()
        await anyio.sleep(0.5)
        # B reads a post for the first time while Redis is down (its L1 now holds what is about to go stale),
        # then A likes and edits both posts.
        page = await alice.on["b"].get(f"/posts/{during}")
        assert page.status_code == 200 and like_count(page.text, during) == 0
        for post_id in (before, during):
            assert (await bob.post("a", f"/posts/{post_id}/like")).status_code == 303
            text = {"status": f"edited during the outage {post_id}", "revision": "1"}
            assert (await alice.post("a", f"/posts/{post_id}/edit", text)).status_code == 303
            page = await alice.on["a"].get(f"/posts/{post_id}")
            assert f"edited during the outage {post_id}" in page.text and like_count(page.text, post_id) == 1
        await anyio.sleep(0.5)

        up_at = time.monotonic()
        cluster.redis.start()

        async def both_back() -> bool:
            return all("Redis is back" in proc.output() for proc in cluster.procs.values())

        recovered = await within(10.0, both_back, every=0.05)
        assert recovered is not None, "a process did not recover from the Redis outage within 10 s"
        await anyio.sleep(0.3)  # some traffic after the recovery too
        stop.set()

    failed = [r for r in results if r[3] not in (200, 303)]
    assert not failed, f"requests failed around the Redis outage: {failed[:10]}"
    slow = [r for r in results if r[4] > 5]
    assert not slow, f"requests hung on the Redis outage: {slow[:10]}"
    for where in ("a", "b"):
        served = [r for r in results if r[1] == where and down_at < r[0] < up_at]
        assert len(served) >= 5, f"process {where} served only {len(served)} requests while Redis was down"

    # Nothing B cached before or during the outage survives it.
    for post_id in (before, during):
        for where in ("a", "b"):
            page = await alice.on[where].get(f"/posts/{post_id}")
            assert f"edited during the outage {post_id}" in page.text, f"{where} shows a stale text after the outage"
            assert like_count(page.text, post_id) == 1, f"{where} shows a stale like count after the outage"

    # The buses are subscribed again: an invalidation relayed by one process is applied by the other (which one
    # relays is whichever holds the outbox relay's lock).
    async def applied_total() -> float:
        return sum([metric(await cluster.metrics(where), APPLIED) for where in ("a", "b")])

    async def b_applies_one() -> bool:
        nonlocal busy_liked
        applied = await applied_total()
        busy_liked = not busy_liked
        assert (await bob.post("a", f"/posts/{busy}/{'like' if busy_liked else 'unlike'}")).status_code == 303

        async def seen() -> bool:
            return await applied_total() > applied

        return await within(0.5, seen) is not None

    assert await within(8.0, b_applies_one, every=0.1) is not None, "a process never resubscribed to invalidations"

    # And with B's L1 warm again, a fresh like on A shows on B within a second.
    b = alice.on["b"]
    await b.get(f"/posts/{before}")
    await cluster.served_from_l1(b, "b", f"/posts/{before}")
    applied = await applied_total()
    assert (await bob.post("a", f"/posts/{before}/unlike")).status_code == 303
    assert await within(1.0, lambda: shows_count(b, before, 0)) is not None, "B missed an invalidation after recovery"
    assert await applied_total() > applied

    rows, count = await db_likes(processes_engine, busy)
    assert rows == count == int(busy_liked)
    for where in ("a", "b"):
        assert await within(1.0, partial(shows_count, alice.on[where], busy, count)) is not None

    for proc in cluster.procs.values():
        output = proc.output()
        assert output.count("Redis unavailable") == 1, f"process {proc.name} did not warn exactly once:\n{output}"
        assert output.count("Redis is back") == 1, output


async def invalidate_from_outside(redis_url: str, post_id: int) -> None:
    """What a third process's write does: drop the post from Redis (generation bumped) and tell every process."""
    link = RedisLink(make_client(redis_url), url=redis_url)
    try:
        cache, bus = Cache(link), RedisBus(link)

        async def publish(names: list[str]) -> None:
            await bus.publish(Invalidation(keys=names))

        cache.on_invalidate = publish
        await cache.invalidate([(POSTS, post_id)])
        assert link.up
    finally:
        await link.close()


async def test_a_burst_on_a_cold_key_reads_the_database_once_per_process(cluster: Cluster) -> None:
    alice = await cluster.account("alice")
    post_id = await alice.compose("a", "everyone wants to read this")
    for where in ("a", "b"):
        for _ in range(2):  # the session and the user records in L1 on both processes
            assert (await alice.on[where].get("/")).status_code == 200
        # Open the connections now, so that the burst reaches the servers together.
        await asyncio.gather(*(alice.on[where].get("/healthz") for _ in range(100)))

    applied = {where: metric(await cluster.metrics(where), APPLIED) for where in ("a", "b")}
    await invalidate_from_outside(cluster.redis.url, post_id)

    async def everyone_dropped_it() -> bool:
        now = {w: metric(await cluster.metrics(w), APPLIED) for w in ("a", "b")}
        return all(now[w] > applied[w] for w in ("a", "b"))

    assert await within(2.0, everyone_dropped_it) is not None

    before = {where: await cluster.metrics(where) for where in ("a", "b")}
    url = f"/posts/{post_id}"
    responses = await asyncio.gather(*(alice.on["ab"[i % 2]].get(url) for i in range(200)))
    after = {where: await cluster.metrics(where) for where in ("a", "b")}

    assert [r.status_code for r in responses] == [200] * 200
    assert all("everyone wants to read this" in r.text for r in responses)
    refills = {w: metric(after[w], MISSES, space="p") - metric(before[w], MISSES, space="p") for w in ("a", "b")}
    # One database read per process at most; the second process may even find the first one's value in Redis.
    assert all(n <= 1 for n in refills.values()), f"database refills per process for one cold key: {refills}"
    assert sum(refills.values()) >= 1, "the key was not cold"
    l2 = {w: metric(after[w], HITS, tier="l2", space="p") - metric(before[w], HITS, tier="l2", space="p") for w in "ab"}
    assert all(refills[w] + l2[w] <= 1 for w in ("a", "b")), f"more than one refill per process: {refills} {l2}"


async def test_like_counts_converge_on_the_database_across_processes(cluster: Cluster, processes_engine: Any) -> None:
    alice = await cluster.account("alice")
    post_id = await alice.compose("a", "like me, or not")
    users = await asyncio.gather(*(cluster.account(f"fan{i}") for i in range(20)))
    url = f"/posts/{post_id}"
    for where in ("a", "b"):
        assert (await alice.on[where].get(url)).status_code == 200

    done = anyio.Event()

    async def reader(where: str) -> None:  # refills racing with the invalidations
        while not done.is_set():
            assert (await alice.on[where].get(url)).status_code == 200

    async def fan(i: int, user: Account) -> None:
        where = "a" if i < 10 else "b"
        actions = ["like", "unlike", "like", "like", "unlike", "like"] + (["unlike"] if i % 2 else [])
        for action in actions:
            response = await user.post(where, f"{url}/{action}")
            assert response.status_code == 303, response.text

    async with anyio.create_task_group() as readers:
        for where in ("a", "b", "a", "b"):
            readers.start_soon(reader, where)
        await asyncio.gather(*(fan(i, user) for i, user in enumerate(users)))
        done.set()

    rows, count = await db_likes(processes_engine, post_id)
    assert rows == count == 10
    for where in ("a", "b"):
        took = await within(1.0, partial(shows_count, alice.on[where], post_id, count))
        assert took is not None, f"process {where} does not show the database's {count} likes a second later"


async def test_blocks_mutes_and_boosts_made_on_a_show_on_b_on_the_next_request(cluster: Cluster) -> None:
    alice, bob, carol = [await cluster.account(name) for name in ("alice", "bob", "carol")]
    assert (await carol.post("a", "/@bob/follow")).status_code == 303
    post = await alice.compose("a", "words bob will stop seeing")
    public_b, carols_home_b = bob.on["b"], carol.on["b"]

    async def bob_sees() -> bool:
        return post in article_ids((await public_b.get("/public")).text)

    assert await bob_sees()  # B has the public page cached for him now
    # A boost made on A: through the worker's fan-out into carol's home, read on B.
    assert (await bob.post("a", f"/posts/{post}/boost")).status_code == 303

    async def carol_has_it() -> bool:
        return article_ids((await carols_home_b.get("/")).text) == [post]

    assert await within(1.0, carol_has_it) is not None, "a boost made on A misses carol's home on B"
    # A mute made on A: carol's home on B no longer shows what bob brings of alice... nor bob's boost of her.
    assert (await carol.post("a", "/@alice/mute")).status_code == 303

    async def carol_muted() -> bool:
        return article_ids((await carols_home_b.get("/")).text) == []

    assert await within(1.0, carol_muted) is not None, "a mute made on A is not in force on B"
    assert (await carol.post("a", "/@alice/unmute")).status_code == 303
    assert await within(1.0, carol_has_it) is not None
    # The boost undone on A leaves carol's home on B.
    assert (await bob.post("a", f"/posts/{post}/unboost")).status_code == 303
    assert await within(1.0, carol_muted) is not None, "an undone boost stays in carol's home on B"
    # A block made on A: bob's next public page on B hides alice's post.
    assert (await alice.post("a", "/@bob/block")).status_code == 303

    async def bob_blind() -> bool:
        return not await bob_sees()

    assert await within(1.0, bob_blind) is not None, "a block made on A is not in force on B"
    assert (await public_b.get("/@alice")).status_code == 404
