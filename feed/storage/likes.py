"""Likes: who liked which post, with the post's like counter kept in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.dialect import insert
from feed.storage.posts import REF_COLUMNS, Page, paged, visible_to
from feed.storage.tables import likes, posts


async def liked_by(session: AsyncSession, user_id: int, post_ids: Sequence[int]) -> set[int]:
    if not post_ids:
        return set()
    rows = await session.scalars(
        sa.select(likes.c.post_id).where(likes.c.user_id == user_id, likes.c.post_id.in_(post_ids))
    )
    return set(rows)


async def recent_likes(session: AsyncSession, user_id: int, limit: int) -> list[int]:
    """The ids of the newest posts (by post id, not by when they were liked) that ``user_id`` liked."""
    query = sa.select(likes.c.post_id).where(likes.c.user_id == user_id).order_by(likes.c.post_id.desc()).limit(limit)
    return list(await session.scalars(query))


async def liked_page(session: AsyncSession, user_id: int, bounds: Page) -> list[Record]:
    """The posts the user liked and may read, as refs, newest post first, bounded on the post's id."""
    query = (
        sa.select(*REF_COLUMNS)
        .join(likes, likes.c.post_id == posts.c.id)
        .where(likes.c.user_id == user_id, visible_to(user_id))
    )
    return await paged(session, query, bounds)


async def add_like(session: AsyncSession, post_id: int, user_id: int, now: datetime) -> bool:
    """Insert the like and bump the counter in the same transaction; False if it was already there."""
    stmt = insert(session, likes).values(post_id=post_id, user_id=user_id, created_at=now)
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=[likes.c.post_id, likes.c.user_id]))
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await session.execute(posts.update().where(posts.c.id == post_id).values(likes_count=posts.c.likes_count + 1))
    return True


async def remove_like(session: AsyncSession, post_id: int, user_id: int) -> bool:
    result = await session.execute(likes.delete().where(likes.c.post_id == post_id, likes.c.user_id == user_id))
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await session.execute(posts.update().where(posts.c.id == post_id).values(likes_count=posts.c.likes_count - 1))
    return True


async def likes_count(session: AsyncSession, post_id: int) -> int:
    return int(await session.scalar(sa.select(posts.c.likes_count).where(posts.c.id == post_id)) or 0)
