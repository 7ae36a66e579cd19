"""Login throttle buckets: attempts counted in a fixed window, and a time before which the next is refused."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage.dialect import insert
from feed.storage.tables import throttle


class Hit(NamedTuple):
    attempts: int  # in the window, this one included
    blocked_until: datetime | None  # as it was before this attempt


async def hit(session: AsyncSession, bucket: str, now: datetime, window: timedelta) -> Hit:
    """Count one attempt in ``bucket``'s window (a new window if the old one ended). One atomic upsert that locks
    the row until the transaction ends, so concurrent attempts each get their own number."""
    stmt = insert(session, throttle).values(bucket=bucket, count=1, window_ends=now + window)
    expired = throttle.c.window_ends <= now
    stmt = stmt.on_conflict_do_update(
        index_elements=[throttle.c.bucket],
        set_={
            "count": sa.case((expired, 1), else_=throttle.c.count + 1),
            "window_ends": sa.case((expired, stmt.excluded.window_ends), else_=throttle.c.window_ends),
            "blocked_until": sa.case((expired, None), else_=throttle.c.blocked_until),
        },
    ).returning(throttle.c.count, throttle.c.blocked_until)
    count, blocked_until = (await session.execute(stmt)).one()
    return Hit(int(count), blocked_until)


async def block(session: AsyncSession, bucket: str, until: datetime) -> None:
    """The bucket's next attempt is refused before ``until``."""
    await session.execute(throttle.update().where(throttle.c.bucket == bucket).values(blocked_until=until))


async def release(session: AsyncSession, bucket: str) -> None:
    """Take back one attempt (it succeeded)."""
    await session.execute(
        throttle.update().where(throttle.c.bucket == bucket, throttle.c.count > 0).values(count=throttle.c.count - 1)
    )


async def clear(session: AsyncSession, bucket: str) -> None:
    await session.execute(throttle.delete().where(throttle.c.bucket == bucket))


async def purge(session: AsyncSession, now: datetime) -> None:
    await session.execute(throttle.delete().where(throttle.c.window_ends <= now))
