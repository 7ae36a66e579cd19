"""Bookmarks: posts a person keeps for later. Nobody else learns of them: no count, no event, no notification."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from feed.errors import NotFound
from feed.ids import new_id
from feed.services import effects, lookup
from feed.services.context import Services, now
from feed.services.models import FrameStyle, Page, PostView, TimelinePage, User
from feed.services.timelines import get, views
from feed.storage import bookmarks as store
from feed.storage import posts as post_store


async def bookmark(svc: Services, user: User, post_id: int) -> PostView:
    """Keep a post the user may read; idempotent (a post bookmarked again keeps its place)."""
    async with svc.db.begin() as session:
        if await post_store.get_visible_post(session, post_id, user.id) is None:
            raise NotFound()
        try:
            changed = await store.add(session, new_id(), user.id, post_id, now())
        except IntegrityError:  # deleted between the check and the insert
            raise NotFound() from None
        if changed:
            await effects.record(session, effects.bookmark_changed(user.id))
    if changed:
        await effects.committed(svc, effects.bookmark_changed(user.id))
    return await get(svc, post_id, user)


async def unbookmark(svc: Services, user: User, post_id: int) -> PostView:
    """Idempotent; a post the user can no longer read is still taken off their bookmarks (then NotFound)."""
    async with svc.db.begin() as session:
        changed = await store.remove(session, user.id, post_id)
        if changed:
            await effects.record(session, effects.bookmark_changed(user.id))
    if changed:
        await effects.committed(svc, effects.bookmark_changed(user.id))
    return await get(svc, post_id, user)


async def listing(svc: Services, user: User, page: Page, style: FrameStyle | None = None) -> TimelinePage:
    """The user's bookmarks they may still read, the latest kept first; the cursors are bookmark ids."""
    async with svc.db() as session:
        rows = await store.page(session, user.id, page)
        marks = await lookup.marks_in(session, user.id, [row.id for row in rows])
    found = await views(svc, rows, user, marks, style=style)
    return TimelinePage(
        posts=found,
        next_max_id=rows[-1].bookmark_id if len(rows) >= page.limit else None,
        prev_min_id=rows[0].bookmark_id if rows else page.min_id or page.since_id,
    )
