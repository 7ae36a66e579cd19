"""Media rows (``tables.media``): ids, state and sizes, with the alt text and blurhash sealed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage.tables import media


async def insert(session: AsyncSession, **values: Any) -> None:
    await session.execute(media.insert().values(**values))


async def get(session: AsyncSession, media_id: int) -> Any:
    return (await session.execute(sa.select(media).where(media.c.id == media_id))).first()


async def mark_ready(
    session: AsyncSession,
    media_id: int,
    *,
    kind: str,
    source_type: str,
    width: int,
    height: int,
    variants: str,
    blurhash: bytes,
    when: datetime,
) -> bool:
    """The upload's variants are made; False if it was not waiting for them (done already, or gone)."""
    done = await session.execute(
        media.update()
        .where(media.c.id == media_id, media.c.state == "processing")
        .values(
            state="ready",
            kind=kind,
            source_type=source_type,
            width=width,
            height=height,
            variants=variants,
            blurhash=blurhash,
            processed_at=when,
        )
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


async def mark_failed(session: AsyncSession, media_id: int, when: datetime) -> bool:
    done = await session.execute(
        media.update()
        .where(media.c.id == media_id, media.c.state == "processing")
        .values(state="failed", processed_at=when)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
