"""Boosts: a person shares a public (or unlisted) post with their followers. It joins their home timelines through
a fan-out like a new post's, under the boost's own id (so at the time of the boost), with "bob boosted" above it;
a timeline shows each post once however many people boosted it. Followers-only and direct posts cannot be boosted.
Undoing a boost takes it out of every feed it went to; the author is told of each boost (and, when they edit the
post, the boosters are told)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from feed.errors import Invalid, NotFound
from feed.ids import new_id
from feed.services import effects, lookup, notifications
from feed.services.context import Services, now
from feed.services.models import Page, PostView, User
from feed.services.timelines import boost_status, get
from feed.storage import boosts as store
from feed.storage import posts as post_store

BOOSTABLE = ("public", "unlisted")


async def boost(svc: Services, user: User, post_id: int) -> tuple[PostView, int]:
    """Boost a post the user may read; idempotent. The post as it is now, and the boost's id."""
    async with svc.db.begin() as session:
        post = await post_store.get_visible_post(session, post_id, user.id)
        if post is None:
            raise NotFound()
        if post.visibility not in BOOSTABLE:
            raise Invalid("Only public and unlisted posts can be boosted")
        boost_id = new_id()
        try:
            changed = await store.add(session, boost_id, user.id, post_id, now())
        except IntegrityError:  # the post was deleted between the check and the insert
            raise NotFound() from None
        if changed:
            caused = effects.boost_changed(boost_id, post_id, user.id, boosted=True)
            caused += await notifications.notify(session, post.author_id, "reblog", user.id, post_id)
            await effects.record(session, caused)
        else:
            boost_id = (await store.boost_ids(session, user.id, [post_id]))[post_id]
    if changed:
        await effects.committed(svc, caused)
    return await get(svc, post_id, user), boost_id


async def unboost(svc: Services, user: User, post_id: int) -> PostView:
    """Undo the boost (idempotent): it leaves every home timeline it went to."""
    return (await _undo(svc, user, post_id, None))[0]


async def _undo(svc: Services, user: User, post_id: int, only: int | None) -> tuple[PostView, bool]:
    """Undo the user's boost of the post (``only``: if it is that boost); the post now, and whether this undid it."""
    async with svc.db.begin() as session:
        post = await post_store.get_visible_post(session, post_id, user.id)
        if post is None:
            raise NotFound()
        boost_id = await store.remove(session, user.id, post_id, only)
        if boost_id is not None:
            caused = effects.boost_changed(boost_id, post_id, user.id, boosted=False)
            caused += await notifications.withdraw(session, post.author_id, "reblog", user.id, post_id)
            await effects.record(session, caused)
    if boost_id is not None:
        await effects.committed(svc, caused)
    return await get(svc, post_id, user), boost_id is not None


async def unboost_by_id(svc: Services, user: User, boost_id: int) -> PostView:
    """Undo the user's boost named by its own id (Mastodon's delete of a reblog status): the reblog status as it was.
    Not found when the boost is not (or no longer) theirs, as for the second of two such deletes at once."""
    post = await boost_status(svc, boost_id, user)
    if post.booster is None or post.booster.id != user.id:
        raise NotFound()
    if not (await _undo(svc, user, post.id, boost_id))[1]:
        raise NotFound()
    return post


async def boosters(svc: Services, viewer: User | None, post_id: int, page: Page) -> tuple[list[User], int | None]:
    """Who boosted a post the viewer may see, the latest first (but anyone a block stands between with the viewer);
    and the cursor (a boost id) of the next page."""
    await get(svc, post_id, viewer)
    async with svc.db() as session:
        rows = await store.boosters_page(session, post_id, page)
    people = await lookup.users(svc, [row.user_id for row in rows])
    kept_out = await lookup.blocked(svc, viewer.id) if viewer else frozenset()
    found = [User.from_row(people[r.user_id]) for r in rows if r.user_id in people and r.user_id not in kept_out]
    return found, rows[-1].id if len(rows) >= page.limit else None
