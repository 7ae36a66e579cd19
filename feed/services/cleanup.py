"""Database cleanup jobs: purge what erasures left, expire sessions and API tokens, reconcile post counters.

Each is a maintenance job (``feed.services.jobs``): it works in chunks of at most :data:`CHUNK` rows taken in
primary-key order, each chunk one short transaction followed by its checkpoint (``Run.advance``) and progress, so a
run stopped anywhere goes on from its last checkpoint, and a row it deleted is not found again. A run that finds
nothing to do changes nothing, so running a job twice changes nothing the second time. In a dry run each job reads
the same chunks and counts what it would change (``Run.count``), and writes nothing: no row, no checkpoint, no cache
invalidation.

The writer drops what it stales: cached post records whose counts or mentions changed, sealed post records and
frames of purged posts, the sessions and tokens it deleted, the follow lists and home timelines of the followers of
an erased account.

The queries live in ``feed.storage.cleanup``; the jobs here run them, each chunk's in one transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from feed.cache import API_TOKENS, COUNTS, FOLLOWING, FRAME_SPACES, HOME, POSTS, SESSIONS, TIMELINES, USERS, Space
from feed.home_feeds import FeedsUnavailable
from feed.services import lookup, media
from feed.services.context import Services, now
from feed.services.jobs import Maintenance, Run
from feed.storage import cleanup as store
from feed.storage import idempotency
from feed.storage import media as media_store
from feed.storage import oauth as oauth_store

log = logging.getLogger(__name__)

CHUNK = 500  # rows per transaction (and per checkpoint)

Fetch = Callable[[int], Awaitable[list[int]]]  # ids above the given one, in order, at most CHUNK
Apply = Callable[[list[int]], Awaitable[None]]
FetchOf = Callable[[AsyncSession, int, int, int], Awaitable[list[int]]]  # (session, user id, after, limit)


async def _walk(job: Run, part: str, fetch: Fetch, apply: Apply) -> None:
    """Chunks of ids above ``part``'s checkpoint, in id order: ``apply`` each (it counts, and unless this is a dry
    run changes and commits), then save the checkpoint and progress. At the end the checkpoint goes."""
    after = await job.cursor(part) or 0
    while ids := await fetch(after):
        await apply(ids)
        after = ids[-1]
        await job.advance(after, part)
        await job.progress(job.done + len(ids))
    await job.finish(part)


# -- purge_erased


async def purge_erased(svc: Services, job: Run) -> None:
    """Remove what each erasure left: the erased account's posts (with the likes and mentions on them), its likes
    and the mentions of it on other posts (their counts and cached records adjusted), its follows both ways, its
    media (files and rows), and last the account row, which frees the username."""
    async with svc.db() as session:
        erased = await store.erased_user_ids(session)
        total = await store.purge_total(session, erased)
    await job.progress(0, total)
    for user_id in erased:
        purge = _Purge(svc, job, user_id)
        await _walk(job, f"posts:{user_id}", purge.fetch_posts, purge.posts)
        await _walk(job, f"likes:{user_id}", purge.fetch_likes, purge.likes)
        await _walk(job, f"boosts:{user_id}", purge.fetch_boosts, purge.boosts)
        await _walk(job, f"mentions:{user_id}", purge.fetch_mentions, purge.mentions)
        await _walk(job, f"following:{user_id}", purge.fetch_following, purge.following)
        await _walk(job, f"followers:{user_id}", purge.fetch_followers, purge.followers)
        await _walk(job, f"media:{user_id}", purge.fetch_media, purge.media)
        await purge.account()
        await job.progress(job.done + 1)
    if job.changed.get("posts") and not job.dry_run:
        await lookup.invalidate(svc, (TIMELINES, "public"))
    await job.progress(job.done, job.done)


class _Purge:
    """The parts of one erased account's purge, each a fetch (the next chunk of ids) and its apply."""

    def __init__(self, svc: Services, job: Run, user_id: int) -> None:
        self.svc, self.job, self.user_id = svc, job, user_id

    async def _ids(self, fetch: FetchOf, after: int) -> list[int]:
        async with self.svc.db() as session:
            return await fetch(session, self.user_id, after, CHUNK)

    # The account's posts, with the likes and mentions on them; the posts they reply to count one reply less.

    async def fetch_posts(self, after: int) -> list[int]:
        return await self._ids(store.posts_of, after)

    async def posts(self, ids: list[int]) -> None:
        if self.job.dry_run:
            async with self.svc.db() as session:
                self.job.count("posts", len(ids))
                self.job.count("likes", await store.count_likes_on(session, ids))
                self.job.count("mentions", await store.count_mentions_on(session, ids))
            return
        async with self.svc.db.begin() as session:
            n_likes = await store.delete_likes_on(session, ids)
            n_mentions = await store.delete_mentions_on(session, ids)
            gone = await store.delete_posts_of(session, self.user_id, ids)
            deleted = {row.id for row in gone}
            parents = Counter(r.in_reply_to_id for r in gone if r.in_reply_to_id and r.in_reply_to_id not in deleted)
            await store.decrement_replies(session, parents)
        self.job.count("posts", len(gone))
        self.job.count("likes", n_likes)
        self.job.count("mentions", n_mentions)
        stale: list[tuple[Space, Any]] = [(space, i) for i in deleted for space in (POSTS, *FRAME_SPACES)]
        await lookup.invalidate(self.svc, *stale, *((POSTS, i) for i in parents))
        await self.svc.cache.note_shown(deleted)

    # Its media: unreadable since the erasure (its keys are gone); the files and rows go now.

    async def fetch_media(self, after: int) -> list[int]:
        return await self._ids(media_store.of_user_after, after)

    async def media(self, ids: list[int]) -> None:
        await media.remove(self.svc, self.job, ids)

    # Its likes of other accounts' posts (whose like counts go down).

    async def fetch_likes(self, after: int) -> list[int]:
        return await self._ids(store.liked_by, after)

    async def likes(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("likes", len(ids))
            return
        async with self.svc.db.begin() as session:
            gone = await store.delete_likes_by(session, self.user_id, ids)
            await store.decrement_likes(session, Counter(gone))
        self.job.count("likes", len(gone))
        await lookup.invalidate(self.svc, *((POSTS, i) for i in gone))

    # Its boosts of other accounts' posts (whose boost counts go down).

    async def fetch_boosts(self, after: int) -> list[int]:
        return await self._ids(store.boosted_by, after)

    async def boosts(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("boosts", len(ids))
            return
        async with self.svc.db.begin() as session:
            gone = await store.delete_boosts_by(session, self.user_id, ids)
            await store.decrement_boosts(session, Counter(gone))
        self.job.count("boosts", len(gone))
        await lookup.invalidate(self.svc, *((POSTS, i) for i in gone))

    # Mentions of it in other accounts' posts (their cached records name it).

    async def fetch_mentions(self, after: int) -> list[int]:
        return await self._ids(store.mentioning, after)

    async def mentions(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("mentions", len(ids))
            return
        async with self.svc.db.begin() as session:
            gone = await store.delete_mentions_of(session, self.user_id, ids)
        self.job.count("mentions", len(gone))
        await lookup.invalidate(self.svc, *((POSTS, i) for i in gone))

    # Whom it followed (its own follow list was dropped from the cache by the erasure).

    async def fetch_following(self, after: int) -> list[int]:
        return await self._ids(store.followees_of, after)

    async def following(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("follows", len(ids))
            return
        async with self.svc.db.begin() as session:
            self.job.count("follows", len(await store.delete_following(session, self.user_id, ids)))

    # Who followed it: their follow lists change, and their home feeds, which may hold its posts, are dropped to be
    # rebuilt (from the database, where those posts are gone by now) when next read.

    async def fetch_followers(self, after: int) -> list[int]:
        return await self._ids(store.followers_of, after)

    async def followers(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("follows", len(ids))
            return
        async with self.svc.db.begin() as session:
            gone = await store.delete_followers(session, self.user_id, ids)
        self.job.count("follows", len(gone))
        if self.svc.feeds is not None and gone:
            try:
                await self.svc.feeds.drop(gone)
            except FeedsUnavailable:
                pass  # a feed Redis lost is rebuilt anyway
        await lookup.invalidate(self.svc, *((space, i) for i in gone for space in (FOLLOWING, HOME, COUNTS)))

    async def account(self) -> None:
        """The tombstone row last; rows written against it since the chunks above went with it (the foreign keys
        cascade), as does any key a rotation may have added in a race with the erasure."""
        if self.job.dry_run:
            self.job.count("users")
            return
        async with self.svc.db.begin() as session:
            gone = await store.delete_tombstone(session, self.user_id)
        self.job.count("users", gone)
        await lookup.invalidate(self.svc, (USERS, self.user_id))


# -- expire_sessions


async def expire_sessions(svc: Services, job: Run) -> None:
    """Delete browser sessions and API tokens past their expiry (tokens without one never expire), and OAuth codes
    nobody redeemed. A deleted row is its own checkpoint: a stopped run simply starts again and finds the rest."""
    cutoff = now()
    async with svc.db() as session:
        total = await store.count_expired_sessions(session, cutoff)
        total += await store.count_expired_tokens(session, cutoff)
    await job.progress(0, total)
    await _expire(svc, job, store.expired_sessions, store.delete_expired_sessions, cutoff, SESSIONS, "sessions")
    await _expire(svc, job, store.expired_tokens, store.delete_expired_tokens, cutoff, API_TOKENS, "api_tokens")
    if job.dry_run:
        async with svc.db() as session:
            job.count("idempotency_keys", await idempotency.count_stale(session, cutoff))
            job.count("oauth_codes", await oauth_store.count_expired_codes(session, cutoff))
    else:
        async with svc.db.begin() as session:
            job.count("idempotency_keys", await idempotency.purge(session, cutoff))
            job.count("oauth_codes", await oauth_store.delete_expired_codes(session, cutoff))


FindExpired = Callable[[AsyncSession, datetime, bytes, int], Awaitable[list[bytes]]]  # (session, cutoff, after, limit)
DeleteExpired = Callable[[AsyncSession, list[bytes], datetime], Awaitable[list[bytes]]]  # (session, keys, cutoff)


async def _expire(
    svc: Services,
    job: Run,
    find: FindExpired,
    delete: DeleteExpired,
    cutoff: datetime,
    space: Space,
    what: str,
) -> None:
    after = b""
    while True:
        async with svc.db() as session:
            found = await find(session, cutoff, after, CHUNK)
        if not found:
            return
        if job.dry_run:
            job.count(what, len(found))
        else:
            async with svc.db.begin() as session:
                gone = await delete(session, found, cutoff)
            job.count(what, len(gone))
            await lookup.invalidate(svc, *((space, h.hex()) for h in gone))
        after = found[-1]
        await job.progress(job.done + len(found))


# -- reconcile_counts


async def reconcile_counts(svc: Services, job: Run) -> None:
    """Set ``likes_count``, ``replies_count`` and ``reblogs_count`` of every post to what the likes, replies and
    boosts rows say, where they drifted (a crash between two writes, a bug, a restored backup)."""
    async with svc.db() as session:
        total = await store.count_posts(session)
    await job.progress(job.done, total)

    async def fetch(after: int) -> list[int]:
        async with svc.db() as session:
            return await store.post_ids_after(session, after, CHUNK)

    async def apply(ids: list[int]) -> None:
        async with svc.db() as session:
            likes_off, replies_off = await store.drifted(session, ids)
            boosts_off = await store.drifted_boosts(session, ids)
        if job.dry_run:
            job.count("likes_count", len(likes_off))
            job.count("replies_count", len(replies_off))
            job.count("reblogs_count", len(boosts_off))
            return
        if not likes_off and not replies_off and not boosts_off:
            return
        async with svc.db.begin() as session:
            fixed_likes, fixed_replies = await store.fix_counts(session, likes_off, replies_off)
            fixed_boosts = await store.fix_boosts(session, boosts_off)
        job.count("likes_count", len(fixed_likes))
        job.count("replies_count", len(fixed_replies))
        job.count("reblogs_count", len(fixed_boosts))
        await lookup.invalidate(svc, *((POSTS, i) for i in {*fixed_likes, *fixed_replies, *fixed_boosts}))

    await _walk(job, "", fetch, apply)


JOBS = (
    Maintenance(
        "purge_erased",
        "remove the posts, likes, mentions and follows of erased accounts, then the accounts",
        purge_erased,
        minute=frozenset({15}),
    ),
    Maintenance(
        "expire_sessions",
        "delete sessions, API tokens and idempotency keys past their expiry",
        expire_sessions,
        minute=frozenset({45}),
    ),
    Maintenance(
        "reconcile_counts",
        "fix like and reply counts of posts that drifted from the likes and replies",
        reconcile_counts,
        minute=frozenset({10}),
        hour=frozenset({4}),
    ),
)
