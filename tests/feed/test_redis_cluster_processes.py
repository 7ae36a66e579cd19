"""The scaled mode on a real Redis Cluster: two ``cipherfeed serve`` processes and a worker on three Redis primaries
(``redis+cluster://``), the job queue on a Redis of its own (arq needs one server), PostgreSQL.

Runs once, in the PostgreSQL pass (several processes on one database is the scaled mode).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from feed.events import HOME, Event
from feed.home_feeds import feed_key
from feed.streams import user_stream
from tests.conftest import BACKEND, empty_tables
from tests.feed.conftest import deployment
from tests.feed.processes import Account, Cluster, RedisClusterNodes, RedisServer, like_count, metric, process_env
from tests.feed.sse import open_stream, post_id_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="the scaled mode's processes run once, in the PostgreSQL pass"),
]


@pytest.fixture
async def on_cluster(
    processes_engine: Any, processes_database_url: str, env: dict[str, str], tmp_path: Path
) -> AsyncIterator[Cluster]:
    nodes, queue = RedisClusterNodes(tmp_path / "cluster"), RedisServer(tmp_path)
    nodes.start()
    queue.start()
    try:
        await empty_tables(processes_engine)
        settings = process_env(env | {"CIPHERFEED_DATABASE_URL": processes_database_url}, nodes.url)
        settings["CIPHERFEED_QUEUE_REDIS_URL"] = queue.url
        async with deployment(settings, nodes, tmp_path) as made:
            yield made
    finally:
        nodes.stop()
        queue.kill()


def nodes_of(cluster: Cluster) -> RedisClusterNodes:
    assert isinstance(cluster.redis, RedisClusterNodes)
    return cluster.redis


async def user_id(account: Account) -> int:
    found = await account.on["a"].get("/api/v1/accounts/lookup", params={"acct": account.name})
    assert found.status_code == 200, found.text
    return int(found.json()["id"])


async def live_home(account: Account, where: str) -> Any:
    page = (await account.on[where].get("/")).text
    url = page.split('sse-connect="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    return await open_stream(account.on[where], url)


async def until(check: Any, what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_feeds_caches_push_and_jobs_work_on_three_primaries(on_cluster: Cluster) -> None:
    nodes = nodes_of(on_cluster)
    alice = await on_cluster.account("alice")
    # Followers until their feeds sit on every node: one fan-out writes to all three.
    followers: dict[int, Account] = {}
    while len({nodes.port_of(feed_key(uid)) for uid in followers}) < len(nodes.ports):
        assert len(followers) < 24, "24 users' feeds all on fewer than three nodes"
        follower = await on_cluster.account(f"reader{len(followers)}")
        assert (await follower.post("a", f"/@{alice.name}/follow")).status_code == 303
        assert (await follower.on["b"].get("/")).status_code == 200  # their home feed is built
        followers[await user_id(follower)] = follower
    redis = nodes.client()
    try:
        await until(lambda: asyncio.to_thread(lambda: all(redis.exists(feed_key(u)) for u in followers)),
                    "the followers' home feeds were not built")  # fmt: skip
        first_id, first = next(iter(followers.items()))
        home = await live_home(first, "b")
        try:
            post = await alice.compose("a", "to every node")
            assert post_id_of(await home.next("post", timeout=10)) == post  # pushed, through B, from a stream
            assert await asyncio.to_thread(redis.exists, user_stream(first_id))

            def in_every_feed() -> bool:
                return all(redis.zscore(feed_key(u), str(post)) is not None for u in followers)

            await until(lambda: asyncio.to_thread(in_every_feed), "the fan-out missed a node")
            for follower in followers.values():  # each home drops its page once the fan-out's invalidation is in

                async def shows(reader: Account = follower) -> bool:
                    return f'id="post-{post}"' in (await reader.on["b"].get("/")).text

                await until(shows, "a home page missed the post", seconds=5)

            # The cache: B holds the post; a like through A shows on B at the next request, and is pushed.
            assert like_count((await first.on["b"].get(f"/posts/{post}")).text, post) == 0
            assert (await first.post("a", f"/posts/{post}/like")).status_code == 303
            assert like_count((await first.on["b"].get(f"/posts/{post}")).text, post) == 1
            assert json.loads((await home.next("counts", timeout=10)).data) == {str(post): [1, 0]}

            # An entry whose announcement never came (written while the channel's node was away): the next
            # announcement names the entry before it, and B reads the gap from the stream.
            carol = await on_cluster.account("carol")
            unseen = await carol.compose("a", "announced nowhere")
            event = Event(HOME, unseen, await user_id(carol), "public", committed_ms=unseen >> 16)
            await asyncio.to_thread(redis.xadd, user_stream(first_id), event.fields())
            after = await alice.compose("a", "after the gap")
            assert [post_id_of(await home.next("post", timeout=10)) for _ in range(2)] == [unseen, after]
        finally:
            await home.close()

        # /readyz and the metrics report every primary.
        ready = (await on_cluster.anonymous["a"].get("/readyz")).text.splitlines()
        assert ready[0] == "ready" and sorted(ready[1:]) == sorted(f"redis 127.0.0.1:{p}: up" for p in nodes.ports)
        assert metric(await on_cluster.metrics("a"), "cipherfeed_redis_node_up") == len(nodes.ports)

        # A maintenance job scans every node: feeds over their size are cut back wherever they are.
        oversized = {str(post - n - 1): 1 + n for n in range(900)}
        for uid in followers:
            redis.zadd(feed_key(uid), oversized)
        over = sum(redis.zcard(feed_key(uid)) - 801 for uid in followers)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "feed", "jobs", "run", "trim_feeds"],
            env=on_cluster.procs["a"].env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"entries trimmed={over}" in done.stdout, done.stdout
        assert all(redis.zcard(feed_key(u)) == 801 for u in followers)
    finally:
        redis.close()


async def test_a_node_killed_and_restarted_mid_stream_loses_no_post_and_no_event(on_cluster: Cluster) -> None:
    """Posts go on through A while the node holding the reader's stream and feed dies and comes back (its
    append-only file keeps what it acknowledged): every acknowledged post reaches the reader's live stream on B once,
    without a resync, and the reader's home feed."""
    nodes = nodes_of(on_cluster)
    alice, bob = await on_cluster.account("alice"), await on_cluster.account("bob")
    assert (await bob.post("a", f"/@{alice.name}/follow")).status_code == 303
    assert (await bob.on["b"].get("/")).status_code == 200
    bob_id = await user_id(bob)
    victim = nodes.port_of(user_stream(bob_id))
    assert victim == nodes.port_of(feed_key(bob_id)), "a user's stream and feed share a slot"
    home = await live_home(bob, "b")
    acknowledged: list[int] = []
    try:
        for n in range(30):
            if n == 10:
                await asyncio.to_thread(nodes.kill_node, victim)

                async def reported_down() -> bool:  # /readyz names the node that is down (the page is still ready)
                    body = (await on_cluster.anonymous["a"].get("/readyz")).text
                    return body.startswith("ready") and f"redis 127.0.0.1:{victim}: down" in body

                await until(reported_down, "/readyz did not report the node down", 10)
            if n == 20:
                await asyncio.to_thread(nodes.start_node, victim)
            acknowledged.append(await alice.compose("a", f"through a node crash {n}"))
            await asyncio.sleep(0.15)
        await asyncio.to_thread(nodes.wait_ok)
        got: list[int] = []
        while len(got) < len(acknowledged):
            event = await home.next(timeout=20)
            assert event.event != "resync", "the stream survived the node's restart: nothing to resync"
            if event.event == "post":
                got.append(post_id_of(event))
        # Each once; fan-outs retried after the outage run side by side, so those may come in another order.
        assert sorted(got) == acknowledged
        assert await home.quiet(1.0, "post") == []
    finally:
        await home.close()
    redis = nodes.client()
    try:

        def in_feed() -> bool:
            return all(redis.zscore(feed_key(bob_id), str(post)) is not None for post in acknowledged)

        await until(lambda: asyncio.to_thread(in_feed), "a post is missing from the home feed")
    finally:
        redis.close()
