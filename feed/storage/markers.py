"""Markers: a user's read position per timeline."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage.dialect import insert
from feed.storage.tables import markers


async def of(session: AsyncSession, user_id: int, timelines: Iterable[str]) -> list[Any]:
    """The user's markers of ``timelines`` that exist (rows of timeline, last_read_id, version, updated_at)."""
    query = sa.select(markers.c.timeline, markers.c.last_read_id, markers.c.version, markers.c.updated_at).where(
        markers.c.user_id == user_id, markers.c.timeline.in_(list(timelines))
    )
    return list((await session.execute(query)).all())


async def save(session: AsyncSession, user_id: int, timeline: str, last_read_id: int, now: datetime) -> None:
    """Set the marker; each save counts one more version."""
    stmt = insert(session, markers).values(
        user_id=user_id, timeline=timeline, last_read_id=last_read_id, version=1, updated_at=now
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[markers.c.user_id, markers.c.timeline],
            set_={"last_read_id": last_read_id, "version": markers.c.version + 1, "updated_at": now},
        )
    )
