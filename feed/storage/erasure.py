"""Erasure: the tombstone's key version, the destruction of an account's keys and tokens, and the receipts."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.tables import api_tokens, erasure_receipts, user_keys, users

ERASED = 0  # users.key_version of an erased account (real versions start at 1)


async def user_id_by_username(session: AsyncSession, username_lower: str) -> int | None:
    """The id of the account with this username, erased or not."""
    row = (await session.execute(sa.select(users.c.id).where(users.c.username_lower == username_lower))).first()
    return row.id if row is not None else None


async def lock_user(session: AsyncSession, user_id: int) -> Record | None:
    """The user's username and key version, their row locked until the transaction ends."""
    query = sa.select(users.c.username, users.c.key_version).where(users.c.id == user_id).with_for_update()
    return (await session.execute(query)).first()


async def delete_user_keys(session: AsyncSession, user_id: int) -> list[Record]:
    """Delete every key of the user; the (version, root_version) of each."""
    return list(
        (
            await session.execute(
                user_keys.delete()
                .where(user_keys.c.user_id == user_id)
                .returning(user_keys.c.version, user_keys.c.root_version)
            )
        ).all()
    )


async def delete_tokens(session: AsyncSession, user_id: int) -> list[bytes]:
    """Delete every API token of the user; the hashes of those deleted (for the cache)."""
    return list(
        (
            await session.execute(
                api_tokens.delete().where(api_tokens.c.user_id == user_id).returning(api_tokens.c.token_hash)
            )
        ).scalars()
    )


async def insert_receipt(session: AsyncSession, *, subject: bytes, key_ids: str, now: datetime) -> int:
    result = await session.execute(
        erasure_receipts.insert()
        .values(subject=subject, key_ids=key_ids, erased_at=now)
        .returning(erasure_receipts.c.id)
    )
    return int(result.scalar_one())


async def receipts(session: AsyncSession, subject: bytes) -> list[Record]:
    """The receipts (id, key_ids, erased_at) with this subject, oldest first."""
    rows = await session.execute(
        sa.select(erasure_receipts.c.id, erasure_receipts.c.key_ids, erasure_receipts.c.erased_at)
        .where(erasure_receipts.c.subject == subject)
        .order_by(erasure_receipts.c.id)
    )
    return list(rows.all())
