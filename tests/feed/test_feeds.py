"""Home feeds (issue 5): fan-out on write into Redis feeds by a real arq worker, rebuilds, the database fallback
while a feed is missing, popular authors merged when read, and the feed cleanup jobs."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from feed.events import BOOST, NEW, Event
from feed.home_feeds import feed_key
from feed.ids import new_id
from feed.services import accounts, boosts, fanout, posts
from feed.services.context import now
from feed.services.jobs import run_maintenance
from feed.services.models import User
from feed.storage.tables import follows, users
from feed.streams import POSTS_STREAM, LocalStreams
from jobs.registry import maintenance
from tests.conftest import TEST_REDIS_DB_URL, client_for
from tests.feed.processes import AppProcess, process_env
from tests.worker import settle, start_worker, stop_worker

pytestmark = pytest.mark.anyio


async def make_users(svc: Any, count: int, prefix: str = "reader") -> list[int]:
    """Accounts straight into the table (registering a thousand through Argon2 would take a minute)."""
    when = now()
    rows = [
        dict(
            id=new_id(),
            username=f"{prefix}{i}",
            username_lower=f"{prefix}{i}",
            password_hash="x",
            key_version=1,
            created_at=when,
            updated_at=when,
            last_seen_at=when,
        )
        for i in range(count)
    ]
    async with svc.db.begin() as session:
        await session.execute(users.insert(), rows)
    return [r["id"] for r in rows]


async def follow_all(svc: Any, followers: list[int], followee: int) -> None:
    rows = [{"follower_id": f, "followee_id": followee, "created_at": now()} for f in followers]
    async with svc.db.begin() as session:
        await session.execute(follows.insert(), rows)


async def build_feeds(svc: Any, user_ids: list[int]) -> None:
    for user_id in user_ids:
        await fanout.rebuild(svc, user_id)


async def feed_of(app: Any, user_id: int) -> list[int]:
    members = await app.state.cache.link.client.zrevrange(feed_key(user_id), 0, -1)
    return [int(m) for m in members if m != b"0"]


async def home_ids(app: Any, user_id: int) -> list[int]:
    token = (await accounts.open_session(app.state.services, user_id)).token
    async with client_for(app, cookies={"cf_session": token}) as http:
        page = await http.get("/")
    assert page.status_code == 200
    return [int(i) for i in re.findall(r'<article class="post[^"]*" id="post-(\d+)"', page.text)]


@pytest.fixture
async def author(redis_clean: Any) -> User:
    return await accounts.register(redis_clean.state.services, "author", "correct horse battery staple")


async def test_a_post_reaches_a_thousand_feeds_in_order(redis_clean: Any, author: User) -> None:
    app, svc = redis_clean, redis_clean.state.services
    followers = await make_users(svc, 1000)
    await follow_all(svc, followers, author.id)
    older = await posts.create(svc, author, "the older post")
    await settle(app)
    await build_feeds(svc, followers)
    newer = await posts.create(svc, author, "the newer post")
    await settle(app)
    for follower in followers:
        assert await feed_of(app, follower) == [newer.id, older.id], f"feed of {follower}"
    for follower in followers[::10]:
        assert await home_ids(app, follower) == [newer.id, older.id]
    metrics = app.state.metrics.render()
    assert re.search(r"cipherfeed_fanout_seconds_count [1-9]", metrics)
    assert re.search(r'cipherfeed_job_seconds_count\{job="fan_out"\} [1-9]', metrics)


async def test_a_missing_feed_is_served_from_the_database_and_rebuilt(redis_clean: Any, author: User) -> None:
    app, svc = redis_clean, redis_clean.state.services
    followers = await make_users(svc, 30)
    await follow_all(svc, followers, author.id)
    made = [(await posts.create(svc, author, f"post {i}")).id for i in range(3)]
    await settle(app)
    await app.state.cache.link.client.flushdb()  # Redis lost everything
    app.state.cache.flush()
    for follower in followers:
        assert await home_ids(app, follower) == made[::-1], "the page is right while the feed is missing"
    await settle(app)  # the rebuild jobs the readers queued
    for follower in followers:
        assert await feed_of(app, follower) == made[::-1], "the rebuilt feed matches the database"


async def test_deletes_unfollows_and_follows_change_feeds(redis_clean: Any, author: User) -> None:
    app, svc = redis_clean, redis_clean.state.services
    (reader,) = await make_users(svc, 1)
    first = await posts.create(svc, author, "first")
    second = await posts.create(svc, author, "second")
    await fanout.rebuild(svc, reader)
    reader_user = await accounts.get_user(svc, reader)
    from feed.services import follows as follow_service

    await follow_service.follow(svc, reader_user, author.id)
    await settle(app)
    assert await feed_of(app, reader) == [second.id, first.id], "a follow merges the followee's recent posts"
    await posts.delete(svc, author, first.id)
    await settle(app)
    assert await feed_of(app, reader) == [second.id]
    await follow_service.unfollow(svc, reader_user, author.id)
    await settle(app)
    assert await feed_of(app, reader) == []
    assert await home_ids(app, reader) == []


async def test_popular_authors_are_merged_when_read(redis_clean: Any, author: User) -> None:
    app, svc = redis_clean, redis_clean.state.services
    followers = await make_users(svc, 5)
    await follow_all(svc, followers, author.id)
    await build_feeds(svc, [*followers, author.id])
    object.__setattr__(svc, "fanout_max_followers", 3)
    try:
        post = await posts.create(svc, author, "for many")
        await settle(app)
        assert await feed_of(app, followers[0]) == [], "not fanned out"
        assert await home_ids(app, followers[0]) == [post.id], "merged when read"
        assert await feed_of(app, author.id) == [post.id], "the author's own feed takes it all the same"
    finally:
        object.__setattr__(svc, "fanout_max_followers", 10_000)


async def test_a_popular_boosters_boost_goes_to_the_posts_stream_once(redis_clean: Any, author: User) -> None:
    """No fan-out brings a popular booster's boost to their followers' live streams: the fan-out job appends it to
    the shared posts stream instead (feed.web.hub takes it from there), once however often the job runs."""
    app, svc = redis_clean, redis_clean.state.services
    booster = await accounts.register(svc, "booster", "correct horse battery staple")
    followers = await make_users(svc, 5)
    await follow_all(svc, followers, booster.id)
    await build_feeds(svc, [*followers, booster.id])
    client = app.state.cache.link.client

    async def boosts_in_stream() -> list[dict[str, str]]:
        entries = await client.xrange(POSTS_STREAM)
        return [
            {k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries if fields.get(b"k") == b"boost"
        ]

    post = await posts.create(svc, author, "worth a boost")
    object.__setattr__(svc, "fanout_max_followers", 3)
    try:
        _, boost_id = await boosts.boost(svc, booster, post.id)
        await settle(app)
        assert await feed_of(app, followers[0]) == [], "not fanned out"
        assert await feed_of(app, booster.id) == [boost_id], "the booster's own feed takes it all the same"
        found = await boosts_in_stream()
        assert [(e["p"], e["a"], e["b"], e["bb"]) for e in found] == [
            (str(post.id), str(author.id), str(boost_id), str(booster.id))
        ]
        await fanout.fan_out_boost(svc, boost_id)  # a rerun (after a crash) appends nothing twice
        assert len(await boosts_in_stream()) == 1
    finally:
        object.__setattr__(svc, "fanout_max_followers", 10_000)
    other = await posts.create(svc, author, "a boost of someone less followed")
    await boosts.boost(svc, booster, other.id)
    await settle(app)
    assert len(await boosts_in_stream()) == 1, "a fanned-out boost reaches the streams by the fan-out alone"


async def test_a_retried_event_is_appended_once_in_either_mode(redis_clean: Any) -> None:
    """What a job run again appends to the posts stream (a popular booster's boost) is there once, in Redis and in
    the embedded mode's memory alike."""
    made_ms = int(time.time() * 1000)
    event = Event(BOOST, 11, 12, "public", committed_ms=made_ms, boost=13, booster=14)
    for streams in (LocalStreams(), redis_clean.state.services.streams):
        assert await streams.publish_posts([Event(NEW, 10, 12, "public")])  # where the reading starts
        after = await streams.tail(POSTS_STREAM)
        assert after is not None
        for _ in range(2):
            assert await streams.publish_posts([event], retried_since_ms=made_ms - 5_000)
        replay = await streams.replay(POSTS_STREAM, after)
        assert replay is not None and [entry.event for entry in replay.entries].count(event) == 1, streams


async def test_feed_cleanup_jobs_dry_run_then_idempotent(redis_clean: Any, author: User) -> None:
    app, svc = redis_clean, redis_clean.state.services
    active, idle = await make_users(svc, 2)
    await follow_all(svc, [active, idle], author.id)
    await posts.create(svc, author, "hello")
    await settle(app)
    await build_feeds(svc, [active, idle])
    async with svc.db.begin() as session:
        await session.execute(users.update().where(users.c.id == idle).values(last_seen_at=now() - timedelta(days=400)))
    client = app.state.cache.link.client
    base = new_id()
    await client.zadd(feed_key(active), {str(base - 1000 * i): 1 + i for i in range(900)})  # over its size
    for name in ("trim_feeds", "vacuum_feeds"):
        before = {key: await client.zcard(key) for key in (feed_key(active), feed_key(idle))}
        dry = await run_maintenance(svc, maintenance(name), dry_run=True)
        assert dry.changed, f"{name} has something to do"
        assert {key: await client.zcard(key) for key in before} == before, f"{name} --dry-run changed nothing"
        done = await run_maintenance(svc, maintenance(name))
        assert done.changed == dry.changed
        again = await run_maintenance(svc, maintenance(name))
        assert again.changed == {}, f"{name} run twice changes nothing the second time"
    assert await client.zcard(feed_key(active)) == 801  # the sentinel and the newest 800
    assert not await client.exists(feed_key(idle))


async def test_a_worker_killed_mid_fan_out_finishes_after_a_restart(
    redis_clean: Any, author: User, redis_env: dict[str, str], tmp_path: Path
) -> None:
    app, svc = redis_clean, redis_clean.state.services
    followers = await make_users(svc, 1000)
    await follow_all(svc, followers, author.id)
    await build_feeds(svc, followers)
    client = app.state.cache.link.client
    await stop_worker(app)  # this test's jobs go to real `cipherfeed worker` processes only
    try:
        post = await posts.create(svc, author, "through a crash")
        # Small batches, so the fan-out takes long enough to be killed half way; a killed worker's job is picked
        # up again 5 + 10 s after it started, and goes on from its checkpoint.
        small = {"CIPHERFEED_FANOUT_BATCH": "3", "CIPHERFEED_JOB_TIMEOUT": "5"}
        settings = process_env(redis_env, TEST_REDIS_DB_URL) | small

        async def holding() -> int:
            async with client.pipeline(transaction=False) as pipe:
                for follower in followers:
                    pipe.zscore(feed_key(follower), str(post.id))
                return sum(1 for found in await pipe.execute() if found is not None)

        first = AppProcess("worker-1", settings, tmp_path, ["worker"])
        try:
            first.wait_ready()
            with anyio.fail_after(30):
                while not await holding():  # noqa: ASYNC110 - polling Redis, which cannot signal us
                    await anyio.sleep(0.01)
        finally:
            first.proc.kill()
            first.proc.wait()
        halfway = await holding()
        assert 0 < halfway < len(followers), f"killed with {halfway} feeds written"
        second = AppProcess("worker-2", settings, tmp_path, ["worker"])
        try:
            second.wait_ready()
            with anyio.fail_after(60):
                while await holding() < len(followers):  # noqa: ASYNC110 - polling Redis
                    await anyio.sleep(0.2)
        finally:
            second.stop()
        for follower in followers:
            assert await client.zrevrange(feed_key(follower), 0, -1) == [str(post.id).encode(), b"0"]
    finally:
        await start_worker(app)


async def test_the_author_sees_their_own_post_at_once_with_the_worker_stopped(redis_clean: Any, author: User) -> None:
    app, svc = redis_clean, redis_clean.state.services
    [reader] = await make_users(svc, 1)
    await follow_all(svc, [reader], author.id)
    await build_feeds(svc, [author.id, reader])
    assert await home_ids(app, author.id) == []  # the home page is cached now
    await stop_worker(app)
    try:
        post = await posts.create(svc, author, "mine, at once")
        token = (await accounts.open_session(svc, author.id)).token
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                                     cookies={"cf_session": token}) as http:  # fmt: skip
            page = await http.get("/")
            profile = await http.get(f"/@{author.username}")
        assert f'id="post-{post.id}"' in page.text, "on the author's home page right after the request"
        assert f'id="post-{post.id}"' in profile.text
        assert post.id in await feed_of(app, author.id)
        assert post.id not in await feed_of(app, reader), "the fan-out to followers waits for a worker"
    finally:
        await start_worker(app)
    await settle(app)
    assert post.id in await feed_of(app, reader)
