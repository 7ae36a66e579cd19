"""Boosts: who shared which public post with their followers, each under an id of its own (its place in their home
timelines, and the id of the reblog status in the API), with the post's boost counter kept in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.dialect import insert
from feed.storage.posts import REF_COLUMNS, Page, paged, shown_booster, visible_to
from feed.storage.tables import boosts, posts

# What a timeline query gives for a boost: the boosted post's ref, and the boost's own id and booster.
BOOST_REF_COLUMNS = (*REF_COLUMNS, boosts.c.id.label("boost_id"), boosts.c.user_id.label("booster_id"))


async def add(session: AsyncSession, boost_id: int, user_id: int, post_id: int, now: datetime) -> bool:
    """Insert the boost and bump the counter; False if the post was boosted by them already."""
    stmt = insert(session, boosts).values(id=boost_id, user_id=user_id, post_id=post_id, created_at=now)
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=[boosts.c.user_id, boosts.c.post_id]))
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await session.execute(posts.update().where(posts.c.id == post_id).values(reblogs_count=posts.c.reblogs_count + 1))
    return True


async def remove(session: AsyncSession, user_id: int, post_id: int, boost_id: int | None = None) -> int | None:
    """Undo the boost (only if it is ``boost_id``, when given); its id, or None if there was none. Two undoings at
    once take one count off between them: the delete says which of them removed the row."""
    query = boosts.delete().where(boosts.c.user_id == user_id, boosts.c.post_id == post_id)
    if boost_id is not None:
        query = query.where(boosts.c.id == boost_id)
    found = await session.scalar(query.returning(boosts.c.id))
    if found is None:
        return None
    await session.execute(posts.update().where(posts.c.id == post_id).values(reblogs_count=posts.c.reblogs_count - 1))
    return int(found)


async def boosted_by(session: AsyncSession, user_id: int, post_ids: Sequence[int]) -> set[int]:
    """Which of ``post_ids`` the user boosted."""
    if not post_ids:
        return set()
    query = sa.select(boosts.c.post_id).where(boosts.c.user_id == user_id, boosts.c.post_id.in_(post_ids))
    return set(await session.scalars(query))


async def boost_ids(session: AsyncSession, user_id: int, post_ids: Sequence[int]) -> dict[int, int]:
    """{post id: boost id} of the user's boosts of ``post_ids``."""
    if not post_ids:
        return {}
    query = sa.select(boosts.c.post_id, boosts.c.id).where(boosts.c.user_id == user_id, boosts.c.post_id.in_(post_ids))
    return {row.post_id: row.id for row in await session.execute(query)}


async def newest_posts(session: AsyncSession, user_id: int, limit: int) -> list[int]:
    """The ids of the newest posts (by post id) the user boosted."""
    query = sa.select(boosts.c.post_id).where(boosts.c.user_id == user_id).order_by(boosts.c.post_id.desc())
    return list(await session.scalars(query.limit(limit)))


async def boosters(session: AsyncSession, post_id: int) -> list[int]:
    """Everyone who boosted the post, the latest first."""
    query = sa.select(boosts.c.user_id).where(boosts.c.post_id == post_id).order_by(boosts.c.id.desc())
    return list(await session.scalars(query))


async def boosters_page(session: AsyncSession, post_id: int, bounds: Page) -> list[Record]:
    query = sa.select(boosts.c.id, boosts.c.user_id).where(boosts.c.post_id == post_id)
    return await paged(session, query, bounds, boosts.c.id)


async def refs(session: AsyncSession, boost_ids: Sequence[int]) -> list[Record]:
    """Timeline refs of these boosts (those that still exist, of posts that still exist)."""
    if not boost_ids:
        return []
    query = sa.select(*BOOST_REF_COLUMNS).join(posts, posts.c.id == boosts.c.post_id).where(boosts.c.id.in_(boost_ids))
    return list((await session.execute(query)).all())


async def of_followees(session: AsyncSession, viewer_id: int, bounds: Page, *, once: bool = True) -> list[Record]:
    """The boosts of the viewer and of the people they follow, of posts the viewer may read (not their own), newest
    boost first, bounded on the boost's id; of a post boosted more than once, the newest boost only (``once=False``:
    every one)."""
    now = datetime.now(UTC)
    later = boosts.alias("later")
    boosted_again = sa.exists().where(
        later.c.post_id == boosts.c.post_id,
        later.c.id > boosts.c.id,
        shown_booster(later.c.user_id, viewer_id, now),
    )
    query = (
        sa.select(*BOOST_REF_COLUMNS)
        .join(posts, posts.c.id == boosts.c.post_id)
        .where(
            shown_booster(boosts.c.user_id, viewer_id, now),
            posts.c.author_id != viewer_id,
            visible_to(viewer_id),
        )
    )
    if once:
        query = query.where(~boosted_again)
    return await paged(session, query, bounds, boosts.c.id)


async def recent_by(session: AsyncSession, user_ids: Sequence[int], viewer_id: int, limit: int) -> list[Record]:
    """The newest boosts of these people that the viewer may read (merged into a feed when they follow one)."""
    if not user_ids:
        return []
    query = (
        sa.select(*BOOST_REF_COLUMNS)
        .join(posts, posts.c.id == boosts.c.post_id)
        .where(boosts.c.user_id.in_(user_ids), posts.c.author_id != viewer_id, visible_to(viewer_id))
        .order_by(boosts.c.id.desc())
        .limit(limit)
    )
    return list((await session.execute(query)).all())


async def of_post(session: AsyncSession, post_id: int) -> list[int]:
    """The ids of every boost of a post (to take them out of feeds when the post goes)."""
    return list(await session.scalars(sa.select(boosts.c.id).where(boosts.c.post_id == post_id)))


async def get(session: AsyncSession, boost_id: int) -> Record | None:
    query = sa.select(boosts.c.id, boosts.c.user_id, boosts.c.post_id, boosts.c.created_at).where(
        boosts.c.id == boost_id
    )
    return (await session.execute(query)).first()
