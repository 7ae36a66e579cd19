"""Home feeds: fan-out on write, the read path's first page, rebuilds, and their cleanup.

Scaled mode: each user's home feed is a sorted set in Redis (``feed.home_feeds``). One job per new post (``fan_out``)
adds its id to the feeds of the author, their followers (or, for a direct post, the mentioned) in chunks; authors
with more than ``svc.fanout_max_followers`` followers are skipped there and merged in when a home is read. Deletes
and unfollows remove entries, a follow merges the followee's recent posts. A missing feed is rebuilt by a job with a
fixed key (so a burst of readers queues one), while the page is served from a bounded database query: a home
timeline is never wrongly empty.

Embedded mode (no Redis): the same jobs run in the server and drop the readers' cached first pages, which are then
read from the database.

Every cached first page is checked against its reader when read (``timelines.views(recheck=True)``), so a stale
entry can only be missing, never shown to someone who may not see it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any

from feed.cache import HOME
from feed.events import BOOST as BOOST_EVENT
from feed.events import HOME as HOME_EVENT
from feed.events import Event
from feed.home_feeds import FeedsUnavailable
from feed.services import lookup
from feed.services.context import Services, now
from feed.services.jobs import Maintenance, Run
from feed.storage import boosts as boost_store
from feed.storage import follows as follow_store
from feed.storage import posts as store
from feed.storage import users as user_store
from feed.storage.posts import Page

log = logging.getLogger(__name__)

FIRST_PAGE = 40  # refs a home page's cache holds (timelines.HOME_FIRST_PAGE)
REBUILD_SIZE = 800  # posts a rebuilt feed starts with
FOLLOW_MERGE = 40  # a followee's recent posts merged into the follower's feed
SEEN_EVERY = timedelta(hours=1)


def _rebuild_key(user_id: int) -> str:
    return f"rebuild_feed:{user_id}"


# -- writing (jobs)


async def fan_out(svc: Services, post_id: int) -> int:
    """Put a new post into the home feeds it belongs in; how many feeds took it. Idempotent (a rerun after a crash
    adds nothing twice)."""
    async with svc.db() as session:
        post = await store.get_post(session, post_id)
        if post is None:
            return 0  # deleted before its fan-out ran
        mentioned = [m.id for m in (await store.mentions_of(session, [post_id])).get(post_id, [])]
        big = post.visibility != "direct" and (
            await follow_store.follower_count(session, post.author_id) > svc.fanout_max_followers
        )
    event = Event(HOME_EVENT, post_id, post.author_id, post.visibility, committed_ms=post_id >> 16)
    written = await _deliver(svc, event, [post.author_id, *(mentioned if post.visibility == "direct" else [])])
    if post.visibility != "direct" and not big:
        written += await _to_followers(svc, event, post.author_id)
    _observe_latency(svc, post_id)
    return written


async def _to_followers(svc: Services, event: Event, owner_id: int, skip: int = 0) -> int:
    """Deliver to ``owner_id``'s followers (but ``skip``) in id order, from where a killed or timed-out run of the
    same job stopped; how many feeds took it."""
    entry = event.boost or event.post
    after = await _resume_point(svc, entry)
    written = 0
    while True:
        async with svc.db() as session:
            chunk = await follow_store.followers_after(session, owner_id, after, svc.fanout_batch)
        if not chunk:
            break
        written += await _deliver(svc, event, [uid for uid in chunk if uid != skip])
        after = chunk[-1]
        await _save_point(svc, entry, after)
    await _save_point(svc, entry, None)
    return written


async def fan_out_boost(svc: Services, boost_id: int) -> int:
    """Put a boost into the home feeds of the booster and their followers (not the post's author), under the
    boost's id; how many feeds took it. Idempotent."""
    async with svc.db() as session:
        found = await boost_store.get(session, boost_id)
        post = await store.get_post(session, found.post_id) if found is not None else None
        if found is None or post is None:
            return 0  # undone, or the post deleted, before the job ran
        big = await follow_store.follower_count(session, found.user_id) > svc.fanout_max_followers
    event = Event(HOME_EVENT, post.id, post.author_id, post.visibility, committed_ms=boost_id >> 16, boost=boost_id,
                  booster=found.user_id)  # fmt: skip
    written = await _deliver(svc, event, [found.user_id])
    if not big:
        written += await _to_followers(svc, event, found.user_id, skip=post.author_id)
    elif svc.streams is not None:
        # No fan-out brings it to the followers' live streams: the posts stream does (feed.web.hub), as it does a
        # popular author's new post. A rerun of this job does not append it twice.
        shared = replace(event, kind=BOOST_EVENT)
        if not await svc.streams.publish_posts([shared], retried_since_ms=(boost_id >> 16) - 5_000):
            raise FeedsUnavailable("the posts stream is away")
    return written


async def unfan_boost(svc: Services, boost_id: int, booster_id: int) -> None:
    """Take an undone boost out of the feeds it went to (the booster's and their followers', as a post's)."""
    await unfan(svc, boost_id, booster_id)


async def own_post(svc: Services, post_id: int, author_id: int) -> None:
    """A new post in its author's own feed at once, before the request that made it is answered: the author sees
    it on their home page whatever the workers are doing (their fan-out adds it again, harmlessly, and reaches the
    followers). Without Redis the home page reads the database, which has it already."""
    if svc.feeds is not None:
        try:
            await svc.feeds.add(post_id, [author_id])
        except FeedsUnavailable:
            pass
    await lookup.invalidate(svc, (HOME, author_id))  # after the add: a page cached in between is dropped too


async def _resume_point(svc: Services, post_id: int) -> int:
    """The last follower a killed or timed-out run of this fan-out reached (0: none). Kept in Redis beside the
    feeds it describes; without Redis a fan-out runs in this process and starts over if the process dies."""
    if svc.feeds is None:
        return 0
    found = await svc.feeds.link.run(lambda r: r.get(_progress_key(post_id)))
    return int(found) if found else 0


async def _save_point(svc: Services, post_id: int, follower_id: int | None) -> None:
    """Remember how far the fan-out got (None: it is done, forget it)."""
    if svc.feeds is None:
        return
    key = _progress_key(post_id)
    if follower_id is None:
        await svc.feeds.link.run(lambda r: r.delete(key))
    else:
        await svc.feeds.link.run(lambda r: r.set(key, follower_id, ex=86_400))


def _progress_key(post_id: int) -> str:
    return f"cf:fanout:{post_id}"


async def _deliver(svc: Services, event: Event, user_ids: Sequence[int]) -> int:
    """Into the feeds of ``user_ids`` that exist, and the live streams of those of them who watch."""
    written = 0
    if svc.feeds is not None:
        # FeedsUnavailable (a ConnectionError) goes up: the job is tried again, as a Redis that keeps its data (or a
        # cluster node that comes back) still has the feeds, which must not miss the post.
        written = await svc.feeds.add(event.boost or event.post, user_ids)
    await lookup.invalidate(svc, *((HOME, uid) for uid in user_ids))
    if svc.streams is not None:
        await svc.streams.append_home(event, user_ids)
    return written


async def unfan(svc: Services, post_id: int, author_id: int) -> None:
    """Take a deleted post out of the author's and their followers' feeds (a direct post's mentioned readers are
    done by :func:`remove_from`, while the mentions still exist)."""
    await remove_from(svc, [post_id], [author_id])
    after = 0
    while True:
        async with svc.db() as session:
            chunk = await follow_store.followers_after(session, author_id, after, svc.fanout_batch)
        if not chunk:
            return
        await remove_from(svc, [post_id], chunk)
        after = chunk[-1]


async def remove_from(svc: Services, post_ids: Sequence[int], user_ids: Sequence[int]) -> None:
    if svc.feeds is not None:
        try:
            await svc.feeds.remove(post_ids, user_ids)
        except FeedsUnavailable:
            pass
    await lookup.invalidate(svc, *((HOME, uid) for uid in user_ids))


async def merge_follow(svc: Services, follower_id: int, followee_id: int) -> None:
    """A follow: the followee's recent posts join the follower's feed."""
    if svc.feeds is not None:
        async with svc.db() as session:
            recent = await store.recent_of(session, [followee_id], follower_id, FOLLOW_MERGE)
            shared = await boost_store.recent_by(session, [followee_id], follower_id, FOLLOW_MERGE)
        try:
            await svc.feeds.add_many(follower_id, [lookup.position(r) for r in (*recent, *shared)])
        except FeedsUnavailable:
            pass
    await lookup.invalidate(svc, (HOME, follower_id))


async def unmerge_follow(svc: Services, follower_id: int, followee_id: int) -> None:
    """An unfollow: the followee's posts leave the follower's feed (their own replies and mentions stay visible
    elsewhere; the home timeline shows what the reader follows)."""
    if svc.feeds is not None:
        async with svc.db() as session:
            theirs = await store.recent_of(session, [followee_id], follower_id, REBUILD_SIZE)
            shared = await boost_store.recent_by(session, [followee_id], follower_id, REBUILD_SIZE)
        await remove_from(svc, [lookup.position(r) for r in (*theirs, *shared)], [follower_id])
    await lookup.invalidate(svc, (HOME, follower_id))


async def rebuild(svc: Services, user_id: int) -> None:
    """Build a user's feed from the database. Posts committed while it ran are added after, so a fan-out that found
    the feed missing meanwhile loses nothing."""
    if svc.feeds is None:
        return
    async with svc.db() as session:
        rows = await home_refs(session, user_id, Page(limit=REBUILD_SIZE), once=False)
    try:
        await svc.feeds.replace(user_id, [lookup.position(r) for r in rows])
        newest = lookup.position(rows[0]) if rows else 0
        async with svc.db() as session:
            late = await home_refs(session, user_id, Page(limit=REBUILD_SIZE, since_id=newest), once=False)
        if late:
            await svc.feeds.add_many(user_id, [lookup.position(r) for r in late])
    except FeedsUnavailable:
        return
    await lookup.invalidate(svc, (HOME, user_id))


# -- reading

_touched: dict[int, float] = {}  # user id -> when this process last noted them as seen (monotonic seconds)


async def _seen(svc: Services, user_id: int) -> None:
    """Note that the user is around (for the inactive-feed cleanup), at most hourly per user and process."""
    clock = time.monotonic()
    if clock - _touched.get(user_id, -1e9) < SEEN_EVERY.total_seconds():
        return
    if len(_touched) > 100_000:
        _touched.clear()
    _touched[user_id] = clock
    async with svc.db.begin() as session:
        await user_store.touch_last_seen(session, user_id, now(), SEEN_EVERY)


async def first_page(svc: Services, user_id: int) -> list[Any]:
    """The refs of a home timeline's first page: the feed, merged with the popular followees' posts that were not
    fanned out; or, while the feed is missing, a bounded database query (and its rebuild is queued)."""
    await _seen(svc, user_id)
    ids = None
    if svc.feeds is not None:
        try:
            ids = await svc.feeds.read(user_id, FIRST_PAGE)
        except FeedsUnavailable:
            ids = None
        if ids is None:
            await svc.queue.enqueue("rebuild_feed", user_id, key=_rebuild_key(user_id))
    async with svc.db() as session:
        if ids is None:
            return await home_refs(session, user_id, Page(limit=FIRST_PAGE))
        refs = await store.refs(session, ids)
        if len(refs) < len(ids):  # the others are boosts (or gone)
            refs += await boost_store.refs(session, list(set(ids) - {r.id for r in refs}))
    # Whom the reader follows, and who is popular, in one cache round trip.
    found_following, found_popular = await svc.cache.get_multi(
        [lookup.following_request(svc, user_id), lookup.shared_ids_request("popular", partial(_load_popular, svc))]
    )
    popular = sorted(lookup.ids_of(found_following.get(user_id)) & lookup.ids_of(found_popular.get("popular")))
    if popular:
        async with svc.db() as session:
            refs += await store.recent_of(session, popular, user_id, FIRST_PAGE)
            refs += await boost_store.recent_by(session, popular, user_id, FIRST_PAGE)
    # A post and its boosts all stay here: which one shows depends on whom the reader sees when they read
    # (``timelines.home``, then :func:`once_each`). An entry both in the feed and among the popular is kept once.
    entries = {lookup.position(ref): ref for ref in refs}
    return sorted(entries.values(), key=lookup.position, reverse=True)[:FIRST_PAGE]


def once_each(refs: Sequence[Any]) -> list[Any]:
    """Each post once (its newest entry: a boost of it, or itself), in the order given."""
    seen: set[int] = set()
    out = []
    for ref in refs:
        if ref.id not in seen:
            seen.add(ref.id)
            out.append(ref)
    return out


async def home_refs(session: Any, user_id: int, page: Page, *, once: bool = True) -> list[Any]:
    """A page of a home timeline from the database: the posts of :func:`feed.storage.posts.home` and the boosts of
    whom the user follows, by position (a boost's own id), each post once (``once=False``: every entry, for a
    feed)."""
    posts = await store.home(session, user_id, page, once=once)
    shared = await boost_store.of_followees(session, user_id, page, once=once)
    merged = sorted([*posts, *shared], key=lookup.position, reverse=True)
    if page.min_id is not None:  # the entries just newer than min_id: the oldest of both
        merged = merged[-page.limit :]
    return once_each(merged[: page.limit]) if once else merged[: page.limit]


async def popular_authors(svc: Services) -> frozenset[int]:
    """Authors whose posts are not fanned out (cached): their followers' home timelines and live streams take their
    posts when read."""
    found = (await svc.cache.get_multi([lookup.shared_ids_request("popular", partial(_load_popular, svc))]))[0]
    return lookup.ids_of(found.get("popular"))


async def _load_popular(svc: Services) -> list[int]:
    """Authors whose posts are not fanned out (cached: who is that popular changes slowly)."""
    async with svc.db() as session:
        return await follow_store.popular(session, svc.fanout_max_followers)


def _observe_latency(svc: Services, post_id: int) -> None:
    """Post committed (its id holds the millisecond it was made) to its last feed written."""
    if svc.job_metrics is not None:
        svc.job_metrics.fanout_seconds.observe(max(0.0, time.time() - (post_id >> 16) / 1000))


# -- cleanup (maintenance jobs)


async def trim_feeds(svc: Services, job: Run) -> None:
    """Cut every feed back to its size (fan-out trims as it writes; this catches feeds written otherwise)."""
    if svc.feeds is None:
        return
    seen = 0
    async for users in svc.feeds.users():
        count = await (svc.feeds.oversized(users) if job.dry_run else svc.feeds.trim(users))
        job.count("entries trimmed", count)
        seen += len(users)
        await job.progress(seen)


async def vacuum_feeds(svc: Services, job: Run) -> None:
    """Drop the feeds of users who are gone or away longer than ``svc.feed_inactive_days`` (rebuilt on return)."""
    if svc.feeds is None:
        return
    cutoff = now() - timedelta(days=svc.feed_inactive_days)
    seen = 0
    async for users in svc.feeds.users():
        async with svc.db() as session:
            idle = await user_store.seen_before(session, users, cutoff)
        if idle and not job.dry_run:
            await svc.feeds.drop(idle)
            await lookup.invalidate(svc, *((HOME, uid) for uid in idle))
        job.count("feeds dropped", len(idle))
        seen += len(users)
        await job.progress(seen)


JOBS = (
    Maintenance("trim_feeds", "cut home feeds back to their size", trim_feeds, minute=frozenset({20})),
    Maintenance(
        "vacuum_feeds",
        "drop the home feeds of gone or inactive users (rebuilt when they return)",
        vacuum_feeds,
        minute=frozenset({40}),
        hour=frozenset({3}),
    ),
)
