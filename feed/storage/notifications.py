"""Notifications (ids and a kind only) and each person's notification settings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from feed.storage import Record
from feed.storage.posts import Page, paged
from feed.storage.tables import notifications, users


async def add(session: AsyncSession, **values: Any) -> None:
    await session.execute(notifications.insert().values(**values))


async def latest_group(session: AsyncSession, user_id: int, prefix: str) -> str | None:
    """The group key of the user's newest notification whose key starts with ``prefix-``."""
    query = (
        sa.select(notifications.c.group_key)
        .where(notifications.c.user_id == user_id, notifications.c.group_key.startswith(f"{prefix}-"))
        .order_by(notifications.c.id.desc())
        .limit(1)
    )
    return await session.scalar(query)


async def withdraw(session: AsyncSession, user_id: int, kind: str, from_id: int, post_id: int | None) -> int:
    """Remove the notification of something undone (an unlike, an unfollow); how many went."""
    query = notifications.delete().where(
        notifications.c.user_id == user_id, notifications.c.type == kind, notifications.c.from_id == from_id
    )
    if post_id is not None:
        query = query.where(notifications.c.post_id == post_id)
    result = await session.execute(query)
    return int(result.rowcount)  # type: ignore[attr-defined]


def _filtered(
    query: sa.Select[Any], types: Iterable[str], exclude: Iterable[str], account_id: int | None
) -> sa.Select[Any]:
    if wanted := list(types):
        query = query.where(notifications.c.type.in_(wanted))
    if unwanted := list(exclude):
        query = query.where(notifications.c.type.not_in(unwanted))
    if account_id is not None:
        query = query.where(notifications.c.from_id == account_id)
    return query


async def page(
    session: AsyncSession,
    user_id: int,
    bounds: Page,
    *,
    types: Iterable[str] = (),
    exclude: Iterable[str] = (),
    account_id: int | None = None,
) -> list[Record]:
    """The user's notifications within ``bounds`` (by notification id), newest first."""
    query = _filtered(sa.select(notifications).where(notifications.c.user_id == user_id), types, exclude, account_id)
    return await paged(session, query, bounds, notifications.c.id)


async def get(session: AsyncSession, user_id: int, notification_id: int) -> Record | None:
    query = sa.select(notifications).where(notifications.c.id == notification_id, notifications.c.user_id == user_id)
    return (await session.execute(query)).first()


async def owners_about(session: AsyncSession, post_id: int) -> list[int]:
    """Whose notifications concern the post (they go with it when it is deleted)."""
    query = sa.select(notifications.c.user_id).where(notifications.c.post_id == post_id).distinct()
    return sorted(await session.scalars(query))


async def remove_between(session: AsyncSession, a: int, b: int) -> list[int]:
    """Every notification either of two people had of the other (a block); whose they were."""
    pair = sa.or_(
        sa.and_(notifications.c.user_id == a, notifications.c.from_id == b),
        sa.and_(notifications.c.user_id == b, notifications.c.from_id == a),
    )
    owners = set(await session.scalars(sa.select(notifications.c.user_id).where(pair)))
    await session.execute(notifications.delete().where(pair))
    return sorted(owners)


async def dismiss(session: AsyncSession, user_id: int, notification_id: int) -> bool:
    result = await session.execute(
        notifications.delete().where(notifications.c.id == notification_id, notifications.c.user_id == user_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def dismiss_group(session: AsyncSession, user_id: int, group_key: str) -> int:
    result = await session.execute(
        notifications.delete().where(notifications.c.user_id == user_id, notifications.c.group_key == group_key)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def clear(session: AsyncSession, user_id: int) -> int:
    result = await session.execute(notifications.delete().where(notifications.c.user_id == user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def count_after(
    session: AsyncSession,
    user_id: int,
    after_id: int,
    cap: int,
    *,
    types: Iterable[str] = (),
    exclude: Iterable[str] = (),
    not_from: Iterable[int] = (),
) -> int:
    """How many of the user's notifications are newer than ``after_id``, up to ``cap`` (but those from ``not_from``)."""
    inner = _filtered(
        sa.select(notifications.c.id).where(notifications.c.user_id == user_id, notifications.c.id > after_id),
        types,
        exclude,
        None,
    )
    if silenced := list(not_from):
        inner = inner.where(notifications.c.from_id.not_in(silenced))
    inner = inner.limit(cap)
    return int(await session.scalar(sa.select(sa.func.count()).select_from(inner.subquery())) or 0)


async def groups(session: AsyncSession, user_id: int, keys: Sequence[str], sample: int) -> dict[str, Record]:
    """For each group key: its whole size (``count``), and (``recent``) the ids of its newest ``sample`` actors."""
    if not keys:
        return {}
    counted = await session.execute(
        sa.select(notifications.c.group_key, sa.func.count().label("count"))
        .where(notifications.c.user_id == user_id, notifications.c.group_key.in_(keys))
        .group_by(notifications.c.group_key)
    )
    out: dict[str, Any] = {row.group_key: {"count": row.count, "recent": []} for row in counted}
    rows = await session.execute(
        sa.select(notifications.c.group_key, notifications.c.from_id)
        .where(notifications.c.user_id == user_id, notifications.c.group_key.in_(keys))
        .order_by(notifications.c.id.desc())
    )
    for row in rows:
        recent = out[row.group_key]["recent"]
        if len(recent) < sample and row.from_id not in recent:
            recent.append(row.from_id)
    return out


async def settings(session: AsyncSession, user_id: int) -> tuple[frozenset[str], bool]:
    """(the kinds the user turned off, whether only people they follow may notify them)."""
    row = (
        await session.execute(sa.select(users.c.notify_off, users.c.notify_only_following).where(users.c.id == user_id))
    ).first()
    if row is None:
        return frozenset(), False
    return frozenset(k for k in row.notify_off.split(",") if k), bool(row.notify_only_following)


async def save_settings(
    session: AsyncSession, user_id: int, off: Iterable[str], only_following: bool, now: datetime
) -> None:
    await session.execute(
        users.update()
        .where(users.c.id == user_id)
        .values(notify_off=",".join(sorted(off)), notify_only_following=only_following, updated_at=now)
    )
