"""Following and unfollowing; idempotent both ways."""

from __future__ import annotations

from dataclasses import dataclass

from feed.errors import Invalid, NotFound
from feed.services import effects, notifications
from feed.services.context import Services, now
from feed.services.models import User
from feed.storage import follows as store
from feed.storage import users as user_store


@dataclass(frozen=True, slots=True)
class Relationship:
    id: int
    following: bool
    followed_by: bool


async def _target(svc: Services, user: User, target_id: int) -> None:
    if target_id == user.id:
        raise Invalid("You can't follow yourself")
    async with svc.db() as session:
        if await user_store.get_user(session, target_id) is None:
            raise NotFound("No such user")


async def follow(svc: Services, user: User, target_id: int) -> Relationship:
    await _target(svc, user, target_id)
    async with svc.db.begin() as session:
        changed = await store.add_follow(session, user.id, target_id, now())
        following, followed_by = await store.follow_state(session, user.id, target_id)
        # Crossing the fan-out threshold changes who counts as popular (their posts are then merged when read).
        crossed = changed and await store.follower_count_upto(session, target_id, svc.fanout_max_followers + 2) == (
            svc.fanout_max_followers + 1
        )
        caused = effects.follow_changed(user.id, target_id, following=True, popular_changed=crossed)
        if changed:
            caused += await notifications.notify(session, target_id, "follow", user.id)
            await effects.record(session, caused)
    if changed:
        await effects.committed(svc, caused)
    return Relationship(target_id, following, followed_by)


async def unfollow(svc: Services, user: User, target_id: int) -> Relationship:
    await _target(svc, user, target_id)
    async with svc.db.begin() as session:
        changed = await store.remove_follow(session, user.id, target_id)
        following, followed_by = await store.follow_state(session, user.id, target_id)
        # Crossing the fan-out threshold changes who counts as popular (their posts are then merged when read).
        crossed = changed and await store.follower_count_upto(session, target_id, svc.fanout_max_followers + 2) == (
            svc.fanout_max_followers
        )
        caused = effects.follow_changed(user.id, target_id, following=False, popular_changed=crossed)
        if changed:
            caused += await notifications.withdraw(session, target_id, "follow", user.id)
            await effects.record(session, caused)
    if changed:
        await effects.committed(svc, caused)
    return Relationship(target_id, following, followed_by)


async def relationship(svc: Services, user: User, target_id: int) -> Relationship:
    async with svc.db() as session:
        following, followed_by = await store.follow_state(session, user.id, target_id)
    return Relationship(target_id, following, followed_by)
