"""The outbox table: rows written in a write's own transaction, read and deleted by the relay."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from feed.storage.tables import outbox, posts

# The PostgreSQL channel a write notifies at its commit, so that the relay wakes at once.
CHANNEL = "cipherfeed_outbox"


async def add(session: AsyncSession, effects: str, now: datetime) -> None:
    await session.execute(outbox.insert().values(created_at=now, effects=effects))
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(sa.text(f"NOTIFY {CHANNEL}"))  # delivered at commit, dropped at rollback


async def take(conn: AsyncConnection | AsyncSession, limit: int) -> list[Any]:
    """The oldest ``limit`` rows, oldest first, each with one more attempt counted (in the same statement): a row
    whose ``attempts`` is above 1 was taken before, and may have been relayed in part."""
    oldest = sa.select(outbox.c.id).order_by(outbox.c.id).limit(limit).scalar_subquery()
    query = (
        outbox.update()
        .where(outbox.c.id.in_(oldest))
        .values(attempts=outbox.c.attempts + 1)
        .returning(outbox.c.id, outbox.c.created_at, outbox.c.effects, outbox.c.attempts)
    )
    return sorted((await conn.execute(query)).all(), key=lambda row: row.id)


async def remove(conn: AsyncConnection | AsyncSession, ids: Sequence[int]) -> None:
    await conn.execute(outbox.delete().where(outbox.c.id.in_(ids)))


async def depth(conn: AsyncConnection | AsyncSession) -> tuple[int, datetime | None]:
    """How many rows wait, and when the oldest was written."""
    row = (await conn.execute(sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)))).one()
    return int(row[0]), row[1]


async def counts(conn: AsyncConnection | AsyncSession, post_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(likes, replies) of the posts that still exist."""
    if not post_ids:
        return {}
    query = sa.select(posts.c.id, posts.c.likes_count, posts.c.replies_count).where(posts.c.id.in_(post_ids))
    return {row.id: (row.likes_count, row.replies_count) for row in await conn.execute(query)}
