"""Blocks and mutes.

A block ends the follows between two people both ways, drops their follow requests and their notifications of each
other, and from then on neither sees the other's posts, replies, likes, notifications or profile anywhere (every
timeline, thread, search and live stream checks the viewer's blocks when it reads); neither can follow, reply to,
mention or like the other. A mute takes a person out of the muter's home and public timelines and (unless asked
otherwise) their notifications, for good or for a while; the muted person is not told.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from feed.errors import Invalid, NotFound
from feed.ids import new_id
from feed.services import effects, lookup
from feed.services.context import Services, now
from feed.services.models import Page, User
from feed.storage import follows as follow_store
from feed.storage import notifications as notification_store
from feed.storage import relations as store
from feed.storage import users as user_store

MAX_MUTE_SECONDS = 366 * 24 * 3600


async def _target(svc: Services, user: User, target_id: int, verb: str) -> None:
    if target_id == user.id:
        raise Invalid(f"You can't {verb} yourself")
    async with svc.db() as session:
        if await user_store.get_user(session, target_id) is None:
            raise NotFound("No such user")


async def block(svc: Services, user: User, target_id: int) -> None:
    """Idempotent."""
    await _target(svc, user, target_id, "block")
    async with svc.db.begin() as session:
        if not await store.add_block(session, new_id(), user.id, target_id, now()):
            return
        caused = effects.block_changed(user.id, target_id)
        for follower, followee in ((user.id, target_id), (target_id, user.id)):
            if await follow_store.remove_follow(session, follower, followee):
                caused += effects.follow_changed(follower, followee, following=False)
            await store.remove_request(session, follower, followee)
        for owner in await notification_store.remove_between(session, user.id, target_id):
            caused += effects.unread_changed(owner)
        await effects.record(session, caused)
    await effects.committed(svc, caused)


async def unblock(svc: Services, user: User, target_id: int) -> None:
    await _target(svc, user, target_id, "unblock")
    async with svc.db.begin() as session:
        if not await store.remove_block(session, user.id, target_id):
            return
        caused = effects.block_changed(user.id, target_id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)


def mute_until(duration: int | None) -> datetime | None:
    """When a mute of ``duration`` seconds ends (0 or None: never)."""
    if not duration:
        return None
    if not 0 < duration <= MAX_MUTE_SECONDS:
        raise Invalid("A mute lasts from a second to a year (0: until undone)", "duration")
    return now() + timedelta(seconds=duration)


async def mute(svc: Services, user: User, target_id: int, *, notifications: bool = True, duration: int = 0) -> None:
    """Mute (again, with new options); ``duration`` seconds, 0 for until undone."""
    await _target(svc, user, target_id, "mute")
    until = mute_until(duration)
    async with svc.db.begin() as session:
        await store.set_mute(
            session, new_id(), user.id, target_id, notifications=notifications, expires_at=until, now=now()
        )
        caused = effects.mute_changed(user.id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)


async def unmute(svc: Services, user: User, target_id: int) -> None:
    await _target(svc, user, target_id, "unmute")
    async with svc.db.begin() as session:
        if not await store.remove_mute(session, user.id, target_id):
            return
        caused = effects.mute_changed(user.id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)


@dataclass(frozen=True, slots=True)
class Hidden:
    """One person on a list of blocks or mutes."""

    list_id: int  # the block's or mute's id (the cursor of the list)
    user: User
    notifications: bool = False  # a mute of notifications too
    expires_at: datetime | None = None


async def blocked_list(svc: Services, user: User, page: Page) -> tuple[list[Hidden], int | None, int | None]:
    async with svc.db() as session:
        rows = await store.blocks_page(session, user.id, page)
    return await _listed(svc, rows, page)


async def muted_list(svc: Services, user: User, page: Page) -> tuple[list[Hidden], int | None, int | None]:
    async with svc.db() as session:
        rows = await store.mutes_page(session, user.id, page, now())
    return await _listed(svc, rows, page)


async def _listed(svc: Services, rows: Sequence[Any], page: Page) -> tuple[list[Hidden], int | None, int | None]:
    people = await lookup.users(svc, [row.other for row in rows])
    out = [
        Hidden(
            row.id,
            User.from_row(people[row.other]),
            bool(getattr(row, "notifications", False)),
            getattr(row, "expires_at", None),
        )
        for row in rows
        if row.other in people
    ]
    next_max = rows[-1].id if len(rows) >= page.limit else None
    prev_min = rows[0].id if rows else None
    return out, next_max, prev_min


async def hides_profile(svc: Services, viewer: User | None, target: User) -> bool:
    """Whether ``target`` blocked ``viewer`` (who then sees nothing of them, their profile included)."""
    if viewer is None or viewer.id == target.id or target.id not in await lookup.blocked(svc, viewer.id):
        return False
    async with svc.db() as session:
        return (await store.block_state(session, target.id, viewer.id))[0]
