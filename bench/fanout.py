"""Scenario 7 (issue 5): fan-out of one post to every follower of the star, against a raw redis-py pipeline doing
the same feed writes in the same run; and, with a real ``cipherfeed worker``, from a post's commit to its last feed
write.

The star is followed by every seeded account. Each follower's feed is built first (empty, as a rebuild leaves a
user who follows nobody else), so that the fan-out writes into all of them. Timed A/B/A: our fan-out job's body
(``feed.services.fanout.fan_out``: followers read from PostgreSQL in batches, one Lua call per batch, the home caches
of the batch dropped over the bus, a checkpoint per batch), then the peer (a pipeline of ZADD and ZREMRANGEBYRANK
per follower, in batches of the same size), alternating, medians of the repeats.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Mapping
from typing import Any

from bench import http
from bench.report import Row, Target
from bench.servers import Processes
from feed.home_feeds import feed_key, score

PEER = "raw pipeline"


async def fanout(repeats: int, procs: Processes, env: Mapping[str, str], star_id: int) -> list[Row]:
    from feed.runtime import open_runtime
    from feed.services import accounts, fanout, posts
    from feed.settings import load_settings

    redis = procs.redis("redis-fanout")
    url = f"redis://{http.HOST}:{redis.port}/0"
    settings = load_settings({**env, "CIPHERFEED_REDIS_URL": url, "CIPHERFEED_FANOUT_MAX_FOLLOWERS": "1000000"})
    async with open_runtime(settings, "worker") as runtime:
        svc = runtime.services
        assert runtime.link is not None
        client = runtime.link.client
        star = await accounts.get_user(svc, star_id)
        async with svc.db() as session:
            from feed.storage import follows as follow_store

            followers = await follow_store.followers_after(session, star_id, 0, 10_000_000)
        await _build_empty_feeds(client, followers)
        ours: list[float] = []
        peer: list[float] = []
        for round_ in range(repeats * 2 + 1):
            if round_ % 2 == 0:
                post = await posts.create(svc, star, f"fan-out round {round_}")
                started = time.perf_counter()
                written = await fanout.fan_out(svc, post.id)
                ours.append(time.perf_counter() - started)
                assert written >= len(followers), f"fan-out wrote {written} feeds for {len(followers)} followers"
            else:
                started = time.perf_counter()
                await _raw_pipeline(client, followers, svc.fanout_batch, round_)
                peer.append(time.perf_counter() - started)
        print(f"fan-out to {len(followers)} feeds: ours {ours}, raw {peer}", file=sys.stderr)
        latencies = await _commit_to_last_write(procs, settings, {**env, "CIPHERFEED_REDIS_URL": url}, svc, star,
                                                followers, client)  # fmt: skip
    ours_ms, peer_ms = statistics.median(ours) * 1000, statistics.median(peer) * 1000
    note = f"{len(followers)} followers, batches of {settings.fanout_batch}"
    return [
        Row("7", "fan-out of one post", "ms", ours_ms, peer_ms, PEER, Target("<=", 1.5), note),
        Row(
            "7",
            "post commit to last feed write, p50 (real worker)",
            "ms",
            statistics.median(latencies) * 1000,
            target=Target("<=", 150, on="cipherfeed"),
            note=f"{len(latencies)} posts, one at a time",
        ),
        Row("7", "post commit to last feed write, max (real worker)", "ms", max(latencies) * 1000),
    ]


async def _build_empty_feeds(client: Any, followers: list[int]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for follower in followers:
            pipe.delete(feed_key(follower))
            pipe.zadd(feed_key(follower), {"0": 0})
        await pipe.execute()


async def _raw_pipeline(client: Any, followers: list[int], batch: int, round_: int) -> None:
    """The same writes as a fan-out, and nothing else: ZADD then trim, per follower, a batch per round trip."""
    member = str((int(time.time() * 1000) << 16) + round_)
    for start in range(0, len(followers), batch):
        async with client.pipeline(transaction=False) as pipe:
            for follower in followers[start : start + batch]:
                pipe.zadd(feed_key(follower), {member: score(int(member))})
                pipe.zremrangebyrank(feed_key(follower), 1, -801)
            await pipe.execute()


async def _commit_to_last_write(
    procs: Processes, settings: Any, env: Mapping[str, str], svc: Any, star: Any, followers: list[int], client: Any
) -> list[float]:
    """Posts made one at a time with a real worker running: from the commit to the last follower's feed holding it
    (followers are written in id order, so the last is the highest id)."""
    from feed.services import posts

    worker = procs.start("worker", [sys.executable, "-m", "feed", "worker"], env=env, port=0,
                         cpus=procs.cores.server)  # fmt: skip
    deadline = time.monotonic() + 30
    while "worker started" not in worker.log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not start")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1)  # arq's first poll
    last = feed_key(max(followers))
    out: list[float] = []
    for i in range(7):
        post = await posts.create(svc, star, f"latency round {i}")
        committed = post.created_at.timestamp()
        while await client.zscore(last, str(post.id)) is None:  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.001)
        out.append(time.time() - committed)
    worker.popen.terminate()
    return out
