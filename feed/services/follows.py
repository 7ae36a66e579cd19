"""Following and unfollowing (idempotent both ways), and follow requests: a locked account approves each new
follower, so following it first asks (``follow_requests``), and only an approved follower reads its
followers-only posts. A block between two people stops either following the other."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from feed.errors import Forbidden, Invalid, NotFound
from feed.events import Effects
from feed.ids import new_id
from feed.services import effects, lookup, notifications
from feed.services.context import Services, now
from feed.services.models import Page, User
from feed.storage import follows as store
from feed.storage import relations as relation_store
from feed.storage import users as user_store


@dataclass(frozen=True, slots=True)
class Relationship:
    id: int
    following: bool
    followed_by: bool
    requested: bool = False  # the viewer asked to follow them, and waits
    requested_by: bool = False  # they asked to follow the viewer
    blocking: bool = False
    blocked_by: bool = False
    muting: bool = False
    muting_notifications: bool = False
    mute_expires_at: datetime | None = None


async def _target(svc: Services, user: User, target_id: int) -> None:
    if target_id == user.id:
        raise Invalid("You can't follow yourself")
    async with svc.db() as session:
        if await user_store.get_user(session, target_id) is None:
            raise NotFound("No such user")


async def _crossed(svc: Services, session: AsyncSession, target_id: int, *, following: bool) -> bool:
    """Whether the follow just made or ended took ``target_id`` across the fan-out threshold (which changes who
    counts as popular: their posts are then merged when read)."""
    count = await store.follower_count_upto(session, target_id, svc.fanout_max_followers + 2)
    return count == svc.fanout_max_followers + (1 if following else 0)


async def _start(svc: Services, session: AsyncSession, follower_id: int, followee_id: int) -> Effects:
    """The follow itself, and what it causes; nothing if it was there already."""
    if not await store.add_follow(session, follower_id, followee_id, now()):
        return Effects()
    crossed = await _crossed(svc, session, followee_id, following=True)
    caused = effects.follow_changed(follower_id, followee_id, following=True, popular_changed=crossed)
    return caused + await notifications.notify(session, followee_id, "follow", follower_id)


async def follow(svc: Services, user: User, target_id: int) -> Relationship:
    """Follow, or (a locked account) ask to."""
    await _target(svc, user, target_id)
    async with svc.db.begin() as session:
        if any(await relation_store.block_state(session, user.id, target_id)):
            raise Forbidden("You can't follow this account")
        target = await user_store.get_user(session, target_id)
        following, _ = await store.follow_state(session, user.id, target_id)
        if target is not None and target.locked and not following:
            caused = Effects()
            if await relation_store.add_request(session, new_id(), user.id, target_id, now()):
                caused = effects.requests_changed(target_id)
                caused += await notifications.notify(session, target_id, "follow_request", user.id)
        else:
            caused = await _start(svc, session, user.id, target_id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    return await relationship(svc, user, target_id)


async def unfollow(svc: Services, user: User, target_id: int) -> Relationship:
    """Stop following, or withdraw the request to."""
    await _target(svc, user, target_id)
    async with svc.db.begin() as session:
        caused = Effects()
        if await store.remove_follow(session, user.id, target_id):
            crossed = await _crossed(svc, session, target_id, following=False)
            caused = effects.follow_changed(user.id, target_id, following=False, popular_changed=crossed)
            caused += await notifications.withdraw(session, target_id, "follow", user.id)
        if await relation_store.remove_request(session, user.id, target_id):
            caused += effects.requests_changed(target_id)
            caused += await notifications.withdraw(session, target_id, "follow_request", user.id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    return await relationship(svc, user, target_id)


async def authorize(svc: Services, user: User, requester_id: int) -> Relationship:
    """Approve a follow request: the requester follows the user from now on."""
    async with svc.db.begin() as session:
        if not await relation_store.remove_request(session, requester_id, user.id):
            raise NotFound("No such follow request")
        caused = effects.requests_changed(user.id)
        caused += await notifications.withdraw(session, user.id, "follow_request", requester_id)
        caused += await _start(svc, session, requester_id, user.id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    return await relationship(svc, user, requester_id)


async def reject(svc: Services, user: User, requester_id: int) -> Relationship:
    async with svc.db.begin() as session:
        if not await relation_store.remove_request(session, requester_id, user.id):
            raise NotFound("No such follow request")
        caused = effects.requests_changed(user.id)
        caused += await notifications.withdraw(session, user.id, "follow_request", requester_id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    return await relationship(svc, user, requester_id)


async def set_locked(svc: Services, user: User, locked: bool) -> None:
    """Lock or unlock the account; unlocking approves every request waiting (as Mastodon does)."""
    async with svc.db.begin() as session:
        await user_store.update_user(session, user.id, locked=locked, updated_at=now())
        caused = effects.profile_changed(user.id)
        if not locked:
            for requester in await relation_store.requesters(session, user.id):
                await relation_store.remove_request(session, requester, user.id)
                caused += await notifications.withdraw(session, user.id, "follow_request", requester)
                caused += await _start(svc, session, requester, user.id)
            caused += effects.requests_changed(user.id)
        await effects.record(session, caused)
    await effects.committed(svc, caused)


async def requests(svc: Services, user: User, page: Page) -> tuple[list[User], int | None, int | None]:
    """Who waits for the user's approval, newest first; and the cursors (request ids) of the next and previous pages."""
    async with svc.db() as session:
        rows = await relation_store.requests_page(session, user.id, page)
    people = await lookup.users(svc, [row.follower_id for row in rows])
    found = [User.from_row(people[row.follower_id]) for row in rows if row.follower_id in people]
    return found, rows[-1].id if len(rows) >= page.limit else None, rows[0].id if rows else None


async def request_count(svc: Services, user: User) -> int:
    async with svc.db() as session:
        return await relation_store.request_count(session, user.id)


async def relationship(svc: Services, user: User, target_id: int) -> Relationship:
    async with svc.db() as session:
        following, followed_by = await store.follow_state(session, user.id, target_id)
        requested, requested_by = await relation_store.request_state(session, user.id, target_id)
        blocking, blocked_by = await relation_store.block_state(session, user.id, target_id)
        muted = await relation_store.mute_of(session, user.id, target_id, now())
    return Relationship(
        target_id,
        following,
        followed_by,
        requested,
        requested_by,
        blocking,
        blocked_by,
        muting=muted is not None,
        muting_notifications=bool(muted and muted.notifications),
        mute_expires_at=muted.expires_at if muted else None,
    )
