"""Queries of the cleanup jobs (``feed.services.cleanup``): the purge of erased accounts, the expiry of sessions
and API tokens, the reconciliation of post counters.

The fetches take the ids above ``after``, in id order, at most ``limit``: the jobs walk the tables in chunks, one
short transaction each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.erasure import ERASED
from feed.storage.tables import api_tokens, boosts, follows, likes, media, mentions, posts, sessions, users


async def _count(session: AsyncSession, query: sa.Select[Any]) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0)


async def _ids(
    session: AsyncSession, query: sa.Select[Any], column: sa.ColumnElement[Any], after: Any, limit: int
) -> list[Any]:
    return list(await session.scalars(query.where(column > after).order_by(column).limit(limit)))


def _decrement(column: sa.Column[int], by: int) -> sa.ColumnElement[int]:
    """``column - by``, never below 0 (a counter that had drifted low is left to ``reconcile_counts``)."""
    return sa.case((column > by, column - by), else_=0)


async def _decrement_posts(session: AsyncSession, column: sa.Column[int], counts: Mapping[int, int]) -> None:
    """Take ``counts[post id]`` off ``column`` of each post (one UPDATE per distinct amount)."""
    by_amount: dict[int, list[int]] = {}
    for post_id, n in counts.items():
        by_amount.setdefault(n, []).append(post_id)
    for n, ids in by_amount.items():
        await session.execute(posts.update().where(posts.c.id.in_(ids)).values({column: _decrement(column, n)}))


async def decrement_likes(session: AsyncSession, counts: Mapping[int, int]) -> None:
    """Take ``counts[post id]`` off the like count of each post."""
    await _decrement_posts(session, posts.c.likes_count, counts)


async def decrement_replies(session: AsyncSession, counts: Mapping[int, int]) -> None:
    """Take ``counts[post id]`` off the reply count of each post."""
    await _decrement_posts(session, posts.c.replies_count, counts)


# -- purge of erased accounts


async def erased_user_ids(session: AsyncSession) -> list[int]:
    """The erased accounts (tombstones) in id order."""
    return list(await session.scalars(sa.select(users.c.id).where(users.c.key_version == ERASED).order_by(users.c.id)))


async def purge_total(session: AsyncSession, erased: Sequence[int]) -> int:
    """About how many rows the purge of ``erased`` goes through (for progress)."""
    if not erased:
        return 0
    counted = [
        sa.select(posts.c.id).where(posts.c.author_id.in_(erased)),
        sa.select(likes.c.post_id).where(likes.c.user_id.in_(erased)),
        sa.select(boosts.c.post_id).where(boosts.c.user_id.in_(erased)),
        sa.select(mentions.c.post_id).where(mentions.c.user_id.in_(erased)),
        sa.select(follows.c.follower_id).where(follows.c.follower_id.in_(erased)),
        sa.select(follows.c.follower_id).where(follows.c.followee_id.in_(erased)),
        sa.select(media.c.id).where(media.c.user_id.in_(erased)),
    ]
    return sum([await _count(session, query) for query in counted]) + len(erased)


async def posts_of(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    return await _ids(session, sa.select(posts.c.id).where(posts.c.author_id == user_id), posts.c.id, after, limit)


async def count_likes_on(session: AsyncSession, post_ids: Sequence[int]) -> int:
    return await _count(session, sa.select(likes).where(likes.c.post_id.in_(post_ids)))


async def count_mentions_on(session: AsyncSession, post_ids: Sequence[int]) -> int:
    return await _count(session, sa.select(mentions).where(mentions.c.post_id.in_(post_ids)))


async def delete_likes_on(session: AsyncSession, post_ids: Sequence[int]) -> int:
    """Delete the likes of these posts; how many went."""
    liked = await session.execute(likes.delete().where(likes.c.post_id.in_(post_ids)).returning(likes.c.post_id))
    return len(liked.all())


async def delete_mentions_on(session: AsyncSession, post_ids: Sequence[int]) -> int:
    """Delete the mentions in these posts; how many went."""
    mentioned = await session.execute(
        mentions.delete().where(mentions.c.post_id.in_(post_ids)).returning(mentions.c.post_id)
    )
    return len(mentioned.all())


async def delete_posts_of(session: AsyncSession, author_id: int, post_ids: Sequence[int]) -> list[Record]:
    """Delete those of these posts that ``author_id`` wrote; (id, in_reply_to_id) of each deleted."""
    return list(
        (
            await session.execute(
                posts.delete()
                .where(posts.c.id.in_(post_ids), posts.c.author_id == author_id)
                .returning(posts.c.id, posts.c.in_reply_to_id)
            )
        ).all()
    )


async def liked_by(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    """Posts of other accounts that ``user_id`` liked."""
    query = (
        sa.select(likes.c.post_id)
        .join(posts, posts.c.id == likes.c.post_id)
        .where(likes.c.user_id == user_id, posts.c.author_id != user_id)
    )
    return await _ids(session, query, likes.c.post_id, after, limit)


async def delete_likes_by(session: AsyncSession, user_id: int, post_ids: Sequence[int]) -> list[int]:
    """Delete the likes of ``user_id`` on these posts; the ids of the posts that lost one."""
    result = await session.execute(
        likes.delete().where(likes.c.user_id == user_id, likes.c.post_id.in_(post_ids)).returning(likes.c.post_id)
    )
    return list(result.scalars())


async def boosted_by(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    """Posts of other accounts that ``user_id`` boosted."""
    query = (
        sa.select(boosts.c.post_id)
        .join(posts, posts.c.id == boosts.c.post_id)
        .where(boosts.c.user_id == user_id, posts.c.author_id != user_id)
    )
    return await _ids(session, query, boosts.c.post_id, after, limit)


async def delete_boosts_by(session: AsyncSession, user_id: int, post_ids: Sequence[int]) -> list[int]:
    """Delete the boosts of ``user_id`` of these posts; the ids of the posts that lost one."""
    result = await session.execute(
        boosts.delete().where(boosts.c.user_id == user_id, boosts.c.post_id.in_(post_ids)).returning(boosts.c.post_id)
    )
    return list(result.scalars())


async def decrement_boosts(session: AsyncSession, counts: Mapping[int, int]) -> None:
    await _decrement_posts(session, posts.c.reblogs_count, counts)


async def mentioning(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    """Posts of other accounts that mention ``user_id``."""
    query = (
        sa.select(mentions.c.post_id)
        .join(posts, posts.c.id == mentions.c.post_id)
        .where(mentions.c.user_id == user_id, posts.c.author_id != user_id)
    )
    return await _ids(session, query, mentions.c.post_id, after, limit)


async def delete_mentions_of(session: AsyncSession, user_id: int, post_ids: Sequence[int]) -> list[int]:
    """Delete the mentions of ``user_id`` in these posts; the ids of the posts that lost one."""
    result = await session.execute(
        mentions.delete()
        .where(mentions.c.user_id == user_id, mentions.c.post_id.in_(post_ids))
        .returning(mentions.c.post_id)
    )
    return list(result.scalars())


async def followees_of(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    query = sa.select(follows.c.followee_id).where(follows.c.follower_id == user_id)
    return await _ids(session, query, follows.c.followee_id, after, limit)


async def delete_following(session: AsyncSession, user_id: int, followee_ids: Sequence[int]) -> list[int]:
    """Delete the follows of these accounts by ``user_id``; the followees of those deleted."""
    result = await session.execute(
        follows.delete()
        .where(follows.c.follower_id == user_id, follows.c.followee_id.in_(followee_ids))
        .returning(follows.c.followee_id)
    )
    return list(result.scalars())


async def followers_of(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    """Who follows ``user_id`` (but itself)."""
    query = sa.select(follows.c.follower_id).where(follows.c.followee_id == user_id, follows.c.follower_id != user_id)
    return await _ids(session, query, follows.c.follower_id, after, limit)


async def delete_followers(session: AsyncSession, user_id: int, follower_ids: Sequence[int]) -> list[int]:
    """Delete the follows of ``user_id`` by these accounts; the followers of those deleted."""
    result = await session.execute(
        follows.delete()
        .where(follows.c.followee_id == user_id, follows.c.follower_id.in_(follower_ids))
        .returning(follows.c.follower_id)
    )
    return list(result.scalars())


async def delete_tombstone(session: AsyncSession, user_id: int) -> int:
    """Delete the account row if it is an erased account's tombstone; how many went (0 or 1)."""
    result = await session.execute(
        users.delete().where(users.c.id == user_id, users.c.key_version == ERASED).returning(users.c.id)
    )
    return len(result.all())


# -- expiry of sessions and API tokens (tokens without an expiry never expire)


def _session_expired(cutoff: datetime) -> sa.ColumnElement[bool]:
    return sessions.c.expires_at <= cutoff


def _token_expired(cutoff: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(api_tokens.c.expires_at.is_not(None), api_tokens.c.expires_at <= cutoff)


async def count_expired_sessions(session: AsyncSession, cutoff: datetime) -> int:
    return await _count(session, sa.select(sessions.c.id_hash).where(_session_expired(cutoff)))


async def count_expired_tokens(session: AsyncSession, cutoff: datetime) -> int:
    return await _count(session, sa.select(api_tokens.c.token_hash).where(_token_expired(cutoff)))


async def expired_sessions(session: AsyncSession, cutoff: datetime, after: bytes, limit: int) -> list[bytes]:
    """Hashes of sessions expired by ``cutoff``, above ``after`` in order."""
    query = sa.select(sessions.c.id_hash).where(_session_expired(cutoff))
    return await _ids(session, query, sessions.c.id_hash, after, limit)


async def expired_tokens(session: AsyncSession, cutoff: datetime, after: bytes, limit: int) -> list[bytes]:
    """Hashes of API tokens expired by ``cutoff``, above ``after`` in order."""
    query = sa.select(api_tokens.c.token_hash).where(_token_expired(cutoff))
    return await _ids(session, query, api_tokens.c.token_hash, after, limit)


async def delete_expired_sessions(session: AsyncSession, id_hashes: Sequence[bytes], cutoff: datetime) -> list[bytes]:
    """Delete these sessions if expired by ``cutoff``; the hashes of those deleted."""
    result = await session.execute(
        sessions.delete()
        .where(sessions.c.id_hash.in_(id_hashes), _session_expired(cutoff))
        .returning(sessions.c.id_hash)
    )
    return list(result.scalars())


async def delete_expired_tokens(session: AsyncSession, token_hashes: Sequence[bytes], cutoff: datetime) -> list[bytes]:
    """Delete these API tokens if expired by ``cutoff``; the hashes of those deleted."""
    result = await session.execute(
        api_tokens.delete()
        .where(api_tokens.c.token_hash.in_(token_hashes), _token_expired(cutoff))
        .returning(api_tokens.c.token_hash)
    )
    return list(result.scalars())


# -- reconciliation of post counters

_LIKES = sa.select(sa.func.count()).select_from(likes).where(likes.c.post_id == posts.c.id).scalar_subquery()
_replies = posts.alias("replies")
_REPLIES = sa.select(sa.func.count()).select_from(_replies).where(_replies.c.in_reply_to_id == posts.c.id)
_REPLIES_OF = _REPLIES.scalar_subquery()
_BOOSTS = sa.select(sa.func.count()).select_from(boosts).where(boosts.c.post_id == posts.c.id).scalar_subquery()


async def count_posts(session: AsyncSession) -> int:
    return await _count(session, sa.select(posts.c.id))


async def post_ids_after(session: AsyncSession, after: int, limit: int) -> list[int]:
    query = sa.select(posts.c.id).where(posts.c.id > after).order_by(posts.c.id).limit(limit)
    return list(await session.scalars(query))


async def drifted_boosts(session: AsyncSession, ids: Sequence[int]) -> list[int]:
    """Which of the posts ``ids`` have a boost count other than their boosts rows say."""
    boosts_of = sa.select(boosts.c.post_id, sa.func.count()).where(boosts.c.post_id.in_(ids)).group_by(boosts.c.post_id)
    stored = (await session.execute(sa.select(posts.c.id, posts.c.reblogs_count).where(posts.c.id.in_(ids)))).all()
    boosted = {int(post_id): int(n) for post_id, n in await session.execute(boosts_of)}
    return [row.id for row in stored if row.reblogs_count != boosted.get(row.id, 0)]


async def fix_boosts(session: AsyncSession, off: list[int]) -> list[int]:
    """Set the boost counts of ``off`` to what the boosts rows say; the ids of the posts whose count changed."""
    await session.execute(sa.select(posts.c.id).where(posts.c.id.in_(off)).with_for_update())
    return await _set(session, off, posts.c.reblogs_count, _BOOSTS)


async def drifted(session: AsyncSession, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Which of the posts ``ids`` have a likes count, and which a replies count, other than their rows say."""
    likes_of = sa.select(likes.c.post_id, sa.func.count()).where(likes.c.post_id.in_(ids)).group_by(likes.c.post_id)
    replies_of = (
        sa.select(posts.c.in_reply_to_id, sa.func.count())
        .where(posts.c.in_reply_to_id.in_(ids))
        .group_by(posts.c.in_reply_to_id)
    )
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


async def fix_counts(
    session: AsyncSession, likes_off: list[int], replies_off: list[int]
) -> tuple[list[int], list[int]]:
    """Set the like counts of ``likes_off`` and the reply counts of ``replies_off`` to what the likes and replies
    rows say; the ids of the posts whose like count, and whose reply count, changed."""
    # Lock the rows first (PostgreSQL): a like that commits meanwhile waits for us, and our counts, read by
    # the statements below after the lock, include every like committed before it.
    await session.execute(sa.select(posts.c.id).where(posts.c.id.in_(likes_off + replies_off)).with_for_update())
    fixed_likes = await _set(session, likes_off, posts.c.likes_count, _LIKES)
    fixed_replies = await _set(session, replies_off, posts.c.replies_count, _REPLIES_OF)
    return fixed_likes, fixed_replies


async def _set(session: AsyncSession, ids: list[int], column: sa.Column[int], actual: Any) -> list[int]:
    if not ids:
        return []
    result = await session.execute(
        posts.update().where(posts.c.id.in_(ids), column != actual).values({column: actual}).returning(posts.c.id)
    )
    return list(result.scalars())
