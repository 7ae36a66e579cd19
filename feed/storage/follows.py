"""Follows: who follows whom, and the follower counts and lists read from them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage.dialect import insert
from feed.storage.tables import follows


async def add_follow(session: AsyncSession, follower_id: int, followee_id: int, now: datetime) -> bool:
    stmt = insert(session, follows).values(follower_id=follower_id, followee_id=followee_id, created_at=now)
    result = await session.execute(
        stmt.on_conflict_do_nothing(index_elements=[follows.c.follower_id, follows.c.followee_id])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def remove_follow(session: AsyncSession, follower_id: int, followee_id: int) -> bool:
    result = await session.execute(
        follows.delete().where(follows.c.follower_id == follower_id, follows.c.followee_id == followee_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def follow_state(session: AsyncSession, a: int, b: int) -> tuple[bool, bool]:
    """(a follows b, b follows a)."""
    rows = await session.execute(
        sa.select(follows.c.follower_id).where(
            sa.or_(
                sa.and_(follows.c.follower_id == a, follows.c.followee_id == b),
                sa.and_(follows.c.follower_id == b, follows.c.followee_id == a),
            )
        )
    )
    followers = {r.follower_id for r in rows}
    return a in followers, b in followers


async def follow_list(
    session: AsyncSession,
    user_id: int,
    *,
    followers: bool,
    limit: int = 40,
    max_id: int | None = None,
    since_id: int | None = None,
) -> list[int]:
    """Ids of ``user_id``'s followers (or followees), newest user id first, below ``max_id`` and above
    ``since_id`` when given."""
    mine, theirs = (
        (follows.c.followee_id, follows.c.follower_id) if followers else (follows.c.follower_id, follows.c.followee_id)
    )
    query = sa.select(theirs).where(mine == user_id)
    if max_id is not None:
        query = query.where(theirs < max_id)
    if since_id is not None:
        query = query.where(theirs > since_id)
    return list(await session.scalars(query.order_by(theirs.desc()).limit(limit)))


async def followee_ids(session: AsyncSession, user_id: int) -> list[int]:
    """Everyone ``user_id`` follows (for visibility checks from the cache)."""
    return list(await session.scalars(sa.select(follows.c.followee_id).where(follows.c.follower_id == user_id)))


async def followers_after(session: AsyncSession, user_id: int, after: int, limit: int) -> list[int]:
    """Followers of ``user_id`` with ids above ``after``, in id order (fan-out walks them in chunks)."""
    query = (
        sa.select(follows.c.follower_id)
        .where(follows.c.followee_id == user_id, follows.c.follower_id > after)
        .order_by(follows.c.follower_id)
        .limit(limit)
    )
    return list(await session.scalars(query))


async def follower_count(session: AsyncSession, user_id: int) -> int:
    query = sa.select(sa.func.count()).select_from(follows).where(follows.c.followee_id == user_id)
    return int(await session.scalar(query) or 0)


async def follower_count_upto(session: AsyncSession, user_id: int, cap: int) -> int:
    """The user's follower count, or ``cap`` if it is more (reads at most ``cap`` index entries)."""
    some = sa.select(follows.c.follower_id).where(follows.c.followee_id == user_id).limit(cap).subquery()
    return int(await session.scalar(sa.select(sa.func.count()).select_from(some)) or 0)


async def popular(session: AsyncSession, above: int) -> list[int]:
    """Everyone with more than ``above`` followers (one pass over the follows index; cached by the caller)."""
    query = sa.select(follows.c.followee_id).group_by(follows.c.followee_id).having(sa.func.count() > above)
    return list(await session.scalars(query))
