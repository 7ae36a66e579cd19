"""Idempotency keys: which post a user's key created, for :data:`WINDOW` (as Mastodon keeps them)."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage.tables import idempotency_keys

WINDOW = timedelta(hours=1)


async def find(session: AsyncSession, user_id: int, key_hash: bytes, now: datetime) -> int | None:
    """The post this key of this user created within the window, if any."""
    query = sa.select(idempotency_keys.c.post_id).where(
        idempotency_keys.c.user_id == user_id,
        idempotency_keys.c.key_hash == key_hash,
        idempotency_keys.c.created_at > now - WINDOW,
    )
    found = await session.scalar(query)
    return int(found) if found is not None else None


async def remember(session: AsyncSession, user_id: int, key_hash: bytes, post_id: int, now: datetime) -> None:
    """Keep the key with the post it created (in the post's transaction). A concurrent request with the same key
    makes one of the two commits fail on the primary key; that one then finds the other's post."""
    await session.execute(
        idempotency_keys.delete().where(
            idempotency_keys.c.user_id == user_id,
            idempotency_keys.c.key_hash == key_hash,
            idempotency_keys.c.created_at <= now - WINDOW,
        )
    )
    await session.execute(
        idempotency_keys.insert().values(user_id=user_id, key_hash=key_hash, post_id=post_id, created_at=now)
    )


async def count_stale(session: AsyncSession, now: datetime) -> int:
    """How many keys are older than the window (what :func:`purge` would delete)."""
    stale = idempotency_keys.c.created_at <= now - WINDOW
    query = sa.select(idempotency_keys.c.user_id).where(stale).subquery()
    return int(await session.scalar(sa.select(sa.func.count()).select_from(query)) or 0)


async def purge(session: AsyncSession, now: datetime) -> int:
    """Forget the keys older than the window; how many went."""
    stale = idempotency_keys.c.created_at <= now - WINDOW
    gone = await session.scalars(idempotency_keys.delete().where(stale).returning(idempotency_keys.c.post_id))
    return len(gone.all())
