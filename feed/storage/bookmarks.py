"""Bookmarks: the posts a person keeps for later, each under an id of its own that orders them by when they were
kept."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.dialect import insert
from feed.storage.posts import REF_COLUMNS, Page, paged, visible_to
from feed.storage.tables import bookmarks, posts


async def add(session: AsyncSession, bookmark_id: int, user_id: int, post_id: int, now: datetime) -> bool:
    """False if the post was bookmarked already (it keeps its place)."""
    stmt = insert(session, bookmarks).values(id=bookmark_id, user_id=user_id, post_id=post_id, created_at=now)
    result = await session.execute(
        stmt.on_conflict_do_nothing(index_elements=[bookmarks.c.user_id, bookmarks.c.post_id])
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def remove(session: AsyncSession, user_id: int, post_id: int) -> bool:
    result = await session.execute(
        bookmarks.delete().where(bookmarks.c.user_id == user_id, bookmarks.c.post_id == post_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def marked(session: AsyncSession, user_id: int, post_ids: Sequence[int]) -> set[int]:
    """Which of ``post_ids`` the user bookmarked."""
    if not post_ids:
        return set()
    query = sa.select(bookmarks.c.post_id).where(bookmarks.c.user_id == user_id, bookmarks.c.post_id.in_(post_ids))
    return set(await session.scalars(query))


async def newest_posts(session: AsyncSession, user_id: int, limit: int) -> list[int]:
    """The ids of the newest posts (by post id, not by when they were kept) the user bookmarked."""
    query = (
        sa.select(bookmarks.c.post_id)
        .where(bookmarks.c.user_id == user_id)
        .order_by(bookmarks.c.post_id.desc())
        .limit(limit)
    )
    return list(await session.scalars(query))


async def page(session: AsyncSession, user_id: int, bounds: Page) -> list[Record]:
    """The user's bookmarks the user may still read, newest kept first, as post refs with ``bookmark_id`` (the
    cursor of ``bounds``)."""
    query = (
        sa.select(*REF_COLUMNS, bookmarks.c.id.label("bookmark_id"))
        .join(posts, posts.c.id == bookmarks.c.post_id)
        .where(bookmarks.c.user_id == user_id, visible_to(user_id))
    )
    return await paged(session, query, bounds, bookmarks.c.id)
