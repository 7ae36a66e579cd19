"""Follow requests, blocks and mutes: who asked to follow a locked account, who keeps whom out, who muted whom."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.dialect import insert
from feed.storage.posts import Page, paged
from feed.storage.tables import blocks, follow_requests, mutes

# -- follow requests


async def add_request(
    session: AsyncSession, request_id: int, follower_id: int, followee_id: int, now: datetime
) -> bool:
    stmt = insert(session, follow_requests).values(
        id=request_id, follower_id=follower_id, followee_id=followee_id, created_at=now
    )
    index = [follow_requests.c.follower_id, follow_requests.c.followee_id]
    return bool((await session.execute(stmt.on_conflict_do_nothing(index_elements=index))).rowcount)  # type: ignore[attr-defined]


async def remove_request(session: AsyncSession, follower_id: int, followee_id: int) -> bool:
    result = await session.execute(
        follow_requests.delete().where(
            follow_requests.c.follower_id == follower_id, follow_requests.c.followee_id == followee_id
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def request_state(session: AsyncSession, a: int, b: int) -> tuple[bool, bool]:
    """(a asked to follow b, b asked to follow a)."""
    rows = await session.execute(
        sa.select(follow_requests.c.follower_id).where(
            sa.or_(
                sa.and_(follow_requests.c.follower_id == a, follow_requests.c.followee_id == b),
                sa.and_(follow_requests.c.follower_id == b, follow_requests.c.followee_id == a),
            )
        )
    )
    askers = {row.follower_id for row in rows}
    return a in askers, b in askers


async def requests_page(session: AsyncSession, followee_id: int, bounds: Page) -> list[Record]:
    """Who waits for ``followee_id``'s approval (rows of id, follower_id), newest first."""
    query = sa.select(follow_requests.c.id, follow_requests.c.follower_id).where(
        follow_requests.c.followee_id == followee_id
    )
    return await paged(session, query, bounds, follow_requests.c.id)


async def requesters(session: AsyncSession, followee_id: int) -> list[int]:
    query = sa.select(follow_requests.c.follower_id).where(follow_requests.c.followee_id == followee_id)
    return list(await session.scalars(query.order_by(follow_requests.c.id)))


async def request_count(session: AsyncSession, followee_id: int) -> int:
    query = sa.select(sa.func.count()).select_from(follow_requests).where(follow_requests.c.followee_id == followee_id)
    return int(await session.scalar(query) or 0)


# -- blocks


async def add_block(session: AsyncSession, block_id: int, blocker_id: int, blocked_id: int, now: datetime) -> bool:
    stmt = insert(session, blocks).values(id=block_id, blocker_id=blocker_id, blocked_id=blocked_id, created_at=now)
    index = [blocks.c.blocker_id, blocks.c.blocked_id]
    return bool((await session.execute(stmt.on_conflict_do_nothing(index_elements=index))).rowcount)  # type: ignore[attr-defined]


async def remove_block(session: AsyncSession, blocker_id: int, blocked_id: int) -> bool:
    result = await session.execute(
        blocks.delete().where(blocks.c.blocker_id == blocker_id, blocks.c.blocked_id == blocked_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def block_state(session: AsyncSession, a: int, b: int) -> tuple[bool, bool]:
    """(a blocks b, b blocks a)."""
    rows = await session.execute(
        sa.select(blocks.c.blocker_id).where(
            sa.or_(
                sa.and_(blocks.c.blocker_id == a, blocks.c.blocked_id == b),
                sa.and_(blocks.c.blocker_id == b, blocks.c.blocked_id == a),
            )
        )
    )
    blockers = {row.blocker_id for row in rows}
    return a in blockers, b in blockers


async def blocked_either_way(session: AsyncSession, user_id: int) -> list[int]:
    """Everyone ``user_id`` blocked, and everyone who blocked them."""
    mine = sa.select(blocks.c.blocked_id.label("other")).where(blocks.c.blocker_id == user_id)
    theirs = sa.select(blocks.c.blocker_id.label("other")).where(blocks.c.blocked_id == user_id)
    return sorted(set(await session.scalars(sa.union(mine, theirs))))


async def blocks_page(session: AsyncSession, blocker_id: int, bounds: Page) -> list[Record]:
    query = sa.select(blocks.c.id, blocks.c.blocked_id.label("other")).where(blocks.c.blocker_id == blocker_id)
    return await paged(session, query, bounds, blocks.c.id)


# -- mutes


def _active(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(mutes.c.expires_at.is_(None), mutes.c.expires_at > now)


async def set_mute(
    session: AsyncSession,
    mute_id: int,
    muter_id: int,
    muted_id: int,
    *,
    notifications: bool,
    expires_at: datetime | None,
    now: datetime,
) -> None:
    """Mute, or change a mute's options (muting again replaces them, as Mastodon does)."""
    stmt = insert(session, mutes).values(
        id=mute_id, muter_id=muter_id, muted_id=muted_id, notifications=notifications, expires_at=expires_at,
        created_at=now,
    )  # fmt: skip
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[mutes.c.muter_id, mutes.c.muted_id],
            set_={"notifications": notifications, "expires_at": expires_at},
        )
    )


async def remove_mute(session: AsyncSession, muter_id: int, muted_id: int) -> bool:
    result = await session.execute(mutes.delete().where(mutes.c.muter_id == muter_id, mutes.c.muted_id == muted_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def mute_of(session: AsyncSession, muter_id: int, muted_id: int, now: datetime) -> Record | None:
    """The mute in force (notifications, expires_at), if any."""
    query = sa.select(mutes.c.notifications, mutes.c.expires_at).where(
        mutes.c.muter_id == muter_id, mutes.c.muted_id == muted_id, _active(now)
    )
    return (await session.execute(query)).first()


async def mutes_until(session: AsyncSession, muter_id: int, now: datetime) -> list[tuple[int, datetime | None]]:
    """Whom ``muter_id`` mutes now, each with when the mute ends (None: when undone)."""
    query = sa.select(mutes.c.muted_id, mutes.c.expires_at).where(mutes.c.muter_id == muter_id, _active(now))
    return [(row.muted_id, row.expires_at) for row in await session.execute(query.order_by(mutes.c.muted_id))]


async def muted_ids(session: AsyncSession, muter_id: int, now: datetime, *, notifications: bool = False) -> list[int]:
    """Whom ``muter_id`` mutes now (with ``notifications``: those whose notifications are muted too)."""
    query = sa.select(mutes.c.muted_id).where(mutes.c.muter_id == muter_id, _active(now))
    if notifications:
        query = query.where(mutes.c.notifications.is_(True))
    return sorted(await session.scalars(query))


async def mutes_page(session: AsyncSession, muter_id: int, bounds: Page, now: datetime) -> list[Record]:
    query = sa.select(mutes.c.id, mutes.c.muted_id.label("other"), mutes.c.notifications, mutes.c.expires_at).where(
        mutes.c.muter_id == muter_id, _active(now)
    )
    return await paged(session, query, bounds, mutes.c.id)


async def silenced(session: AsyncSession, user_id: int, others: Sequence[int], now: datetime) -> set[int]:
    """Which of ``others`` may not notify ``user_id``: a block either way, or a mute of their notifications."""
    if not others:
        return set()
    blocked = set(await blocked_either_way(session, user_id))
    muted = set(await muted_ids(session, user_id, now, notifications=True))
    return {other for other in others if other in blocked or other in muted}
