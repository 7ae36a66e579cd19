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

The queries live here rather than in ``feed.storage``: only these jobs use them, and they are written against the
tables directly, each in the one transaction of its chunk.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa

from feed.cache import API_TOKENS, FOLLOWING, FRAMES, HOME, POSTS, SESSIONS, TIMELINES, USERS, Space
from feed.feeds import FeedsUnavailable
from feed.services import lookup
from feed.services.context import Services, now
from feed.services.erasure import ERASED
from feed.services.jobs import Maintenance, Run
from feed.storage import idempotency
from feed.storage.tables import api_tokens, follows, idempotency_keys, likes, mentions, posts, sessions, users

log = logging.getLogger(__name__)

CHUNK = 500  # rows per transaction (and per checkpoint)

Fetch = Callable[[int], Awaitable[list[int]]]  # ids above the given one, in order, at most CHUNK
Apply = Callable[[list[int]], Awaitable[None]]


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


async def _count(session: Any, query: sa.Select[Any]) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0)


def _decrement(column: sa.Column[int], by: int) -> sa.ColumnElement[int]:
    """``column - by``, never below 0 (a counter that had drifted low is left to ``reconcile_counts``)."""
    return sa.case((column > by, column - by), else_=0)


async def _decrement_posts(session: Any, column: sa.Column[int], counts: Counter[int]) -> None:
    """Take ``counts[post id]`` off ``column`` of each post (one UPDATE per distinct amount)."""
    by_amount: dict[int, list[int]] = {}
    for post_id, n in counts.items():
        by_amount.setdefault(n, []).append(post_id)
    for n, ids in by_amount.items():
        await session.execute(posts.update().where(posts.c.id.in_(ids)).values({column: _decrement(column, n)}))


# -- purge_erased


async def purge_erased(svc: Services, job: Run) -> None:
    """Remove what each erasure left: the erased account's posts (with the likes and mentions on them), its likes
    and the mentions of it on other posts (their counts and cached records adjusted), its follows both ways, and
    last the account row, which frees the username."""
    async with svc.db() as session:
        erased = list(
            await session.scalars(sa.select(users.c.id).where(users.c.key_version == ERASED).order_by(users.c.id))
        )
        total = await _purge_total(session, erased)
    await job.progress(0, total)
    for user_id in erased:
        purge = _Purge(svc, job, user_id)
        await _walk(job, f"posts:{user_id}", purge.fetch_posts, purge.posts)
        await _walk(job, f"likes:{user_id}", purge.fetch_likes, purge.likes)
        await _walk(job, f"mentions:{user_id}", purge.fetch_mentions, purge.mentions)
        await _walk(job, f"following:{user_id}", purge.fetch_following, purge.following)
        await _walk(job, f"followers:{user_id}", purge.fetch_followers, purge.followers)
        await purge.account()
        await job.progress(job.done + 1)
    if job.changed.get("posts") and not job.dry_run:
        await lookup.invalidate(svc, (TIMELINES, "public"))
    await job.progress(job.done, job.done)


async def _purge_total(session: Any, erased: Sequence[int]) -> int:
    """About how many rows the purge of ``erased`` goes through (for progress)."""
    if not erased:
        return 0
    counted = [
        sa.select(posts.c.id).where(posts.c.author_id.in_(erased)),
        sa.select(likes.c.post_id).where(likes.c.user_id.in_(erased)),
        sa.select(mentions.c.post_id).where(mentions.c.user_id.in_(erased)),
        sa.select(follows.c.follower_id).where(follows.c.follower_id.in_(erased)),
        sa.select(follows.c.follower_id).where(follows.c.followee_id.in_(erased)),
    ]
    return sum([await _count(session, query) for query in counted]) + len(erased)


class _Purge:
    """The parts of one erased account's purge, each a fetch (the next chunk of ids) and its apply."""

    def __init__(self, svc: Services, job: Run, user_id: int) -> None:
        self.svc, self.job, self.user_id = svc, job, user_id

    async def _ids(self, query: sa.Select[Any], column: sa.ColumnElement[int], after: int) -> list[int]:
        async with self.svc.db() as session:
            return list(await session.scalars(query.where(column > after).order_by(column).limit(CHUNK)))

    # The account's posts, with the likes and mentions on them; the posts they reply to count one reply less.

    async def fetch_posts(self, after: int) -> list[int]:
        return await self._ids(sa.select(posts.c.id).where(posts.c.author_id == self.user_id), posts.c.id, after)

    async def posts(self, ids: list[int]) -> None:
        if self.job.dry_run:
            async with self.svc.db() as session:
                self.job.count("posts", len(ids))
                self.job.count("likes", await _count(session, sa.select(likes).where(likes.c.post_id.in_(ids))))
                self.job.count(
                    "mentions", await _count(session, sa.select(mentions).where(mentions.c.post_id.in_(ids)))
                )
            return
        async with self.svc.db.begin() as session:
            liked = await session.execute(likes.delete().where(likes.c.post_id.in_(ids)).returning(likes.c.post_id))
            n_likes = len(liked.all())
            mentioned = await session.execute(
                mentions.delete().where(mentions.c.post_id.in_(ids)).returning(mentions.c.post_id)
            )
            n_mentions = len(mentioned.all())
            gone = (
                await session.execute(
                    posts.delete()
                    .where(posts.c.id.in_(ids), posts.c.author_id == self.user_id)
                    .returning(posts.c.id, posts.c.in_reply_to_id)
                )
            ).all()
            deleted = {row.id for row in gone}
            parents = Counter(r.in_reply_to_id for r in gone if r.in_reply_to_id and r.in_reply_to_id not in deleted)
            await _decrement_posts(session, posts.c.replies_count, parents)
        self.job.count("posts", len(gone))
        self.job.count("likes", n_likes)
        self.job.count("mentions", n_mentions)
        stale: list[tuple[Space, Any]] = [(POSTS, i) for i in deleted] + [(FRAMES, i) for i in deleted]
        await lookup.invalidate(self.svc, *stale, *((POSTS, i) for i in parents))

    # Its likes of other accounts' posts (whose like counts go down).

    async def fetch_likes(self, after: int) -> list[int]:
        query = (
            sa.select(likes.c.post_id)
            .join(posts, posts.c.id == likes.c.post_id)
            .where(likes.c.user_id == self.user_id, posts.c.author_id != self.user_id)
        )
        return await self._ids(query, likes.c.post_id, after)

    async def likes(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("likes", len(ids))
            return
        async with self.svc.db.begin() as session:
            result = await session.execute(
                likes.delete()
                .where(likes.c.user_id == self.user_id, likes.c.post_id.in_(ids))
                .returning(likes.c.post_id)
            )
            gone = list(result.scalars())
            await _decrement_posts(session, posts.c.likes_count, Counter(gone))
        self.job.count("likes", len(gone))
        await lookup.invalidate(self.svc, *((POSTS, i) for i in gone))

    # Mentions of it in other accounts' posts (their cached records name it).

    async def fetch_mentions(self, after: int) -> list[int]:
        query = (
            sa.select(mentions.c.post_id)
            .join(posts, posts.c.id == mentions.c.post_id)
            .where(mentions.c.user_id == self.user_id, posts.c.author_id != self.user_id)
        )
        return await self._ids(query, mentions.c.post_id, after)

    async def mentions(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("mentions", len(ids))
            return
        async with self.svc.db.begin() as session:
            result = await session.execute(
                mentions.delete()
                .where(mentions.c.user_id == self.user_id, mentions.c.post_id.in_(ids))
                .returning(mentions.c.post_id)
            )
            gone = list(result.scalars())
        self.job.count("mentions", len(gone))
        await lookup.invalidate(self.svc, *((POSTS, i) for i in gone))

    # Whom it followed (its own follow list was dropped from the cache by the erasure).

    async def fetch_following(self, after: int) -> list[int]:
        query = sa.select(follows.c.followee_id).where(follows.c.follower_id == self.user_id)
        return await self._ids(query, follows.c.followee_id, after)

    async def following(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("follows", len(ids))
            return
        async with self.svc.db.begin() as session:
            result = await session.execute(
                follows.delete()
                .where(follows.c.follower_id == self.user_id, follows.c.followee_id.in_(ids))
                .returning(follows.c.followee_id)
            )
            self.job.count("follows", len(result.all()))

    # Who followed it: their follow lists change, and their home feeds, which may hold its posts, are dropped to be
    # rebuilt (from the database, where those posts are gone by now) when next read.

    async def fetch_followers(self, after: int) -> list[int]:
        query = sa.select(follows.c.follower_id).where(
            follows.c.followee_id == self.user_id, follows.c.follower_id != self.user_id
        )
        return await self._ids(query, follows.c.follower_id, after)

    async def followers(self, ids: list[int]) -> None:
        if self.job.dry_run:
            self.job.count("follows", len(ids))
            return
        async with self.svc.db.begin() as session:
            result = await session.execute(
                follows.delete()
                .where(follows.c.followee_id == self.user_id, follows.c.follower_id.in_(ids))
                .returning(follows.c.follower_id)
            )
            gone = list(result.scalars())
        self.job.count("follows", len(gone))
        if self.svc.feeds is not None and gone:
            try:
                await self.svc.feeds.drop(gone)
            except FeedsUnavailable:
                pass  # a feed Redis lost is rebuilt anyway
        await lookup.invalidate(self.svc, *((FOLLOWING, i) for i in gone), *((HOME, i) for i in gone))

    async def account(self) -> None:
        """The tombstone row last; rows written against it since the chunks above went with it (the foreign keys
        cascade), as does any key a rotation may have added in a race with the erasure."""
        if self.job.dry_run:
            self.job.count("users")
            return
        async with self.svc.db.begin() as session:
            result = await session.execute(
                users.delete().where(users.c.id == self.user_id, users.c.key_version == ERASED).returning(users.c.id)
            )
            gone = len(result.all())
        self.job.count("users", gone)
        await lookup.invalidate(self.svc, (USERS, self.user_id))


# -- expire_sessions


async def expire_sessions(svc: Services, job: Run) -> None:
    """Delete browser sessions and API tokens past their expiry (tokens without one never expire). A deleted row is
    its own checkpoint: a stopped run simply starts again and finds the rest."""
    cutoff = now()
    expired_sessions = sessions.c.expires_at <= cutoff
    expired_tokens = sa.and_(api_tokens.c.expires_at.is_not(None), api_tokens.c.expires_at <= cutoff)
    async with svc.db() as session:
        total = await _count(session, sa.select(sessions.c.id_hash).where(expired_sessions))
        total += await _count(session, sa.select(api_tokens.c.token_hash).where(expired_tokens))
    await job.progress(0, total)
    await _expire(svc, job, sessions, sessions.c.id_hash, expired_sessions, SESSIONS, "sessions")
    await _expire(svc, job, api_tokens, api_tokens.c.token_hash, expired_tokens, API_TOKENS, "api_tokens")
    if job.dry_run:
        async with svc.db() as session:
            stale = idempotency_keys.c.created_at <= cutoff - idempotency.WINDOW
            job.count("idempotency_keys", await _count(session, sa.select(idempotency_keys.c.user_id).where(stale)))
    else:
        async with svc.db.begin() as session:
            job.count("idempotency_keys", await idempotency.purge(session, cutoff))


async def _expire(
    svc: Services,
    job: Run,
    table: sa.Table,
    key: sa.Column[bytes],
    expired: sa.ColumnElement[bool],
    space: Space,
    what: str,
) -> None:
    after = b""
    while True:
        async with svc.db() as session:
            found = list(await session.scalars(sa.select(key).where(expired, key > after).order_by(key).limit(CHUNK)))
        if not found:
            return
        if job.dry_run:
            job.count(what, len(found))
        else:
            async with svc.db.begin() as session:
                result = await session.execute(table.delete().where(key.in_(found), expired).returning(key))
                gone = list(result.scalars())
            job.count(what, len(gone))
            await lookup.invalidate(svc, *((space, h.hex()) for h in gone))
        after = found[-1]
        await job.progress(job.done + len(found))


# -- reconcile_counts

_LIKES = sa.select(sa.func.count()).select_from(likes).where(likes.c.post_id == posts.c.id).scalar_subquery()
_replies = posts.alias("replies")
_REPLIES = sa.select(sa.func.count()).select_from(_replies).where(_replies.c.in_reply_to_id == posts.c.id)
_REPLIES_OF = _REPLIES.scalar_subquery()


async def reconcile_counts(svc: Services, job: Run) -> None:
    """Set ``likes_count`` and ``replies_count`` of every post to what the likes and replies rows say, where they
    drifted (a crash between two writes, a bug, a restored backup)."""
    async with svc.db() as session:
        total = await _count(session, sa.select(posts.c.id))
    await job.progress(job.done, total)

    async def fetch(after: int) -> list[int]:
        async with svc.db() as session:
            query = sa.select(posts.c.id).where(posts.c.id > after).order_by(posts.c.id).limit(CHUNK)
            return list(await session.scalars(query))

    async def apply(ids: list[int]) -> None:
        likes_off, replies_off = await _drifted(svc, ids)
        if job.dry_run:
            job.count("likes_count", len(likes_off))
            job.count("replies_count", len(replies_off))
            return
        if not likes_off and not replies_off:
            return
        async with svc.db.begin() as session:
            # Lock the rows first (PostgreSQL): a like that commits meanwhile waits for us, and our counts, read by
            # the statements below after the lock, include every like committed before it.
            await session.execute(
                sa.select(posts.c.id).where(posts.c.id.in_(likes_off + replies_off)).with_for_update()
            )
            fixed_likes = await _set(session, likes_off, posts.c.likes_count, _LIKES)
            fixed_replies = await _set(session, replies_off, posts.c.replies_count, _REPLIES_OF)
        job.count("likes_count", len(fixed_likes))
        job.count("replies_count", len(fixed_replies))
        await lookup.invalidate(svc, *((POSTS, i) for i in {*fixed_likes, *fixed_replies}))

    await _walk(job, "", fetch, apply)


async def _drifted(svc: Services, ids: list[int]) -> tuple[list[int], list[int]]:
    """Which of the posts ``ids`` have a likes count, and which a replies count, other than their rows say."""
    likes_of = sa.select(likes.c.post_id, sa.func.count()).where(likes.c.post_id.in_(ids)).group_by(likes.c.post_id)
    replies_of = (
        sa.select(posts.c.in_reply_to_id, sa.func.count())
        .where(posts.c.in_reply_to_id.in_(ids))
        .group_by(posts.c.in_reply_to_id)
    )
    async with svc.db() as session:
        stored = (
            await session.execute(
                sa.select(posts.c.id, posts.c.likes_count, posts.c.replies_count).where(posts.c.id.in_(ids))
            )
        ).all()
        liked = {int(post_id): int(n) for post_id, n in await session.execute(likes_of)}
        replied = {int(post_id): int(n) for post_id, n in await session.execute(replies_of)}
    likes_off = [row.id for row in stored if row.likes_count != liked.get(row.id, 0)]
    replies_off = [row.id for row in stored if row.replies_count != replied.get(row.id, 0)]
    return likes_off, replies_off


async def _set(session: Any, ids: list[int], column: sa.Column[int], actual: Any) -> list[int]:
    if not ids:
        return []
    result = await session.execute(
        posts.update().where(posts.c.id.in_(ids), column != actual).values({column: actual}).returning(posts.c.id)
    )
    return list(result.scalars())


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
