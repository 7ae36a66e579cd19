"""Posts: write, edit, delete, read with visibility rules, likes. Text is sealed here, before any storage call.

Decrypted text exists only in the ``PostView`` values returned to the caller, for the life of one request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crypto import FieldContext, InvalidToken, open_field, seal_fields
from feed.errors import Conflict, Forbidden, Invalid, NotFound
from feed.ids import new_id
from feed.services.context import Services, now
from feed.services.models import Mention, PostView, TimelinePage, User
from feed.services.text import mentioned_usernames, normalize_cw, normalize_post, render_html
from feed.storage import posts as store
from feed.storage import users as user_store
from feed.storage.posts import Page

log = logging.getLogger(__name__)

VISIBILITIES = ("public", "unlisted", "followers", "direct")
MAX_ANCESTORS = 40
MAX_DESCENDANTS = 200


def check_visibility(raw: str) -> str:
    visibility = {"private": "followers"}.get(raw, raw)
    if visibility not in VISIBILITIES:
        raise Invalid("Visibility must be public, unlisted, followers or direct", "visibility")
    return visibility


async def _resolve_mentions(session: AsyncSession, text: str, author: User) -> list[int]:
    names = mentioned_usernames(text)
    found = await user_store.get_ids_by_usernames(session, names)
    return [found[n] for n in names if n in found and found[n] != author.id]


async def views(session: AsyncSession, svc: Services, rows: Sequence[Any], viewer: User | None) -> list[PostView]:
    """Decrypt and assemble rows for ``viewer``; rows whose author key is gone (shredded) are left out."""
    if not rows:
        return []
    ids = [row.id for row in rows]
    people = {row.author_id for row in rows} | {r.in_reply_to_author_id for r in rows if r.in_reply_to_author_id}
    authors = await user_store.get_users(session, people)
    keys = await svc.keys.get_many(session, {(row.author_id, row.key_version) for row in rows})
    mentioned = await store.mentions_of(session, ids)
    liked = await store.liked_by(session, viewer.id, ids) if viewer else set()
    out: list[PostView] = []
    for row in rows:
        key = keys.get((row.author_id, row.key_version))
        author = authors.get(row.author_id)
        if key is None or author is None:
            continue
        try:
            text = open_field(key, row.body, FieldContext("body", row.id, row.author_id, row.revision))
            cw = open_field(key, row.cw, FieldContext("cw", row.id, row.author_id, row.revision)) if row.cw else None
        except InvalidToken:
            log.warning("post %s does not decrypt; left out", row.id)
            continue
        parent_author = authors.get(row.in_reply_to_author_id) if row.in_reply_to_author_id else None
        out.append(
            PostView(
                id=row.id,
                author=User.from_row(author),
                visibility=row.visibility,
                text=text,
                html=render_html(text),
                cw=cw,
                in_reply_to_id=row.in_reply_to_id,
                in_reply_to_author_id=row.in_reply_to_author_id,
                revision=row.revision,
                likes_count=row.likes_count,
                replies_count=row.replies_count,
                created_at=row.created_at,
                edited_at=row.edited_at,
                liked=row.id in liked,
                mentions=[Mention(m.id, m.username) for m in mentioned.get(row.id, [])],
                reply_to_username=parent_author.username if parent_author else None,
            )
        )
    return out


def _seal(svc_key: Any, post_id: int, author: User, revision: int, text: str, cw: str | None) -> dict[str, bytes]:
    fields = {"body": text} | ({"cw": cw} if cw else {})
    sealed = seal_fields(svc_key, fields, object_id=post_id, owner_id=author.id, revision=revision)
    return {"body": sealed["body"].data, "cw": sealed["cw"].data if cw else None}  # type: ignore[dict-item]


async def create(
    svc: Services,
    author: User,
    text: str,
    *,
    visibility: str = "public",
    cw: str | None = None,
    in_reply_to_id: int | None = None,
) -> PostView:
    text = normalize_post(text)
    cw = normalize_cw(cw)
    visibility = check_visibility(visibility)
    for attempt in (1, 2):
        post_id = new_id()
        try:
            await _insert(svc, author, post_id, text, cw, visibility, in_reply_to_id)
            break
        except IntegrityError:
            if attempt == 2:  # not an id collision after all
                raise
    return await get(svc, post_id, author)


async def _insert(
    svc: Services, author: User, post_id: int, text: str, cw: str | None, visibility: str, in_reply_to_id: int | None
) -> None:
    async with svc.db.begin() as session:
        parent = None
        if in_reply_to_id is not None:
            parent = await store.get_visible_post(session, in_reply_to_id, author.id)
            if parent is None:
                raise NotFound("The post you are replying to does not exist or is not visible to you")
        mention_ids = await _resolve_mentions(session, text, author)
        if visibility == "direct" and not mention_ids:
            raise Invalid("A direct post needs at least one @mention of an existing user", "status")
        key = await svc.keys.get(session, author.id, author.key_version)
        sealed = _seal(key, post_id, author, 1, text, cw)
        await store.insert_post(
            session,
            id=post_id,
            author_id=author.id,
            visibility=visibility,
            in_reply_to_id=parent.id if parent else None,
            in_reply_to_author_id=parent.author_id if parent else None,
            revision=1,
            key_version=author.key_version,
            created_at=now(),
            **sealed,
        )
        await store.set_mentions(session, post_id, mention_ids)
        if parent is not None:
            await store.bump_replies(session, parent.id, 1)


async def edit(
    svc: Services,
    author: User,
    post_id: int,
    text: str,
    cw: str | None = None,
    *,
    expected_revision: int | None = None,
) -> PostView:
    """A new revision under a new data key. With ``expected_revision`` (the revision the editor started from),
    an edit made elsewhere in the meantime is a Conflict instead of being overwritten."""
    text = normalize_post(text)
    cw = normalize_cw(cw)
    async with svc.db.begin() as session:
        row = await store.get_visible_post(session, post_id, author.id)
        if row is None:
            raise NotFound()
        if row.author_id != author.id:
            raise Forbidden("You can only edit your own posts")
        if expected_revision is not None and row.revision != expected_revision:
            raise Conflict("The post was edited elsewhere since you opened it; reload to see the latest version")
        mention_ids = await _resolve_mentions(session, text, author)
        if row.visibility == "direct" and not mention_ids:
            raise Invalid("A direct post needs at least one @mention of an existing user", "status")
        key = await svc.keys.get(session, author.id, author.key_version)
        revision = row.revision + 1
        sealed = _seal(key, post_id, author, revision, text, cw)
        changed = await store.update_revision(
            session,
            post_id,
            expected_revision=row.revision,
            revision=revision,
            key_version=author.key_version,
            edited_at=now(),
            **sealed,
        )
        if not changed:
            raise Conflict("The post was changed at the same time; reload and try again")
        await store.set_mentions(session, post_id, mention_ids)
    return await get(svc, post_id, author)


async def delete(svc: Services, author: User, post_id: int) -> PostView:
    """Delete a post (its ciphertext, mentions and likes go with the row); returns what it was, for redrafts."""
    view = await get(svc, post_id, author)
    if view.author.id != author.id:
        raise Forbidden("You can only delete your own posts")
    async with svc.db.begin() as session:
        if not await store.delete_post(session, post_id):
            raise NotFound()
        if view.in_reply_to_id is not None:
            await store.bump_replies(session, view.in_reply_to_id, -1)
    return view


async def get(svc: Services, post_id: int, viewer: User | None) -> PostView:
    async with svc.db() as session:
        row = await store.get_visible_post(session, post_id, viewer.id if viewer else None)
        found = await views(session, svc, [row] if row else [], viewer)
    if not found:
        raise NotFound()
    return found[0]


async def source_of(svc: Services, post_id: int, viewer: User) -> PostView:
    """The post for its author's edit form."""
    view = await get(svc, post_id, viewer)
    if view.author.id != viewer.id:
        raise Forbidden("You can only edit your own posts")
    return view


def _page(found: list[PostView], rows: Sequence[Any], page: Page) -> TimelinePage:
    return TimelinePage(
        posts=found,
        next_max_id=rows[-1].id if len(rows) >= page.limit else None,
        prev_min_id=rows[0].id if rows else page.min_id or page.since_id,
    )


async def home(svc: Services, viewer: User, page: Page) -> TimelinePage:
    async with svc.db() as session:
        rows = await store.home(session, viewer.id, page)
        return _page(await views(session, svc, rows, viewer), rows, page)


async def public(svc: Services, viewer: User | None, page: Page) -> TimelinePage:
    async with svc.db() as session:
        rows = await store.public(session, page)
        return _page(await views(session, svc, rows, viewer), rows, page)


async def by_author(
    svc: Services, author: User, viewer: User | None, page: Page, *, exclude_replies: bool = False
) -> TimelinePage:
    async with svc.db() as session:
        rows = await store.by_author(
            session, author.id, viewer.id if viewer else None, page, exclude_replies=exclude_replies
        )
        return _page(await views(session, svc, rows, viewer), rows, page)


async def thread(svc: Services, post_id: int, viewer: User | None) -> tuple[list[PostView], PostView, list[PostView]]:
    """(ancestors oldest first, the post, descendants in reply-tree order), each visible to ``viewer``."""
    viewer_id = viewer.id if viewer else None
    async with svc.db() as session:
        focus = await store.get_visible_post(session, post_id, viewer_id)
        if focus is None:
            raise NotFound()
        ancestors: list[Any] = []
        parent_id = focus.in_reply_to_id
        while parent_id is not None and len(ancestors) < MAX_ANCESTORS:
            parent = await store.get_visible_post(session, parent_id, viewer_id)
            if parent is None:
                break
            ancestors.append(parent)
            parent_id = parent.in_reply_to_id
        ancestors.reverse()
        children: dict[int, list[Any]] = {}
        frontier, total = [focus.id], 0
        while frontier and total < MAX_DESCENDANTS:
            found = await store.replies(session, frontier, viewer_id)
            for row in found:
                children.setdefault(row.in_reply_to_id, []).append(row)
            total += len(found)
            frontier = [row.id for row in found]
        ordered: list[Any] = []

        def walk(pid: int) -> None:
            for child in children.get(pid, []):
                if len(ordered) < MAX_DESCENDANTS:
                    ordered.append(child)
                    walk(child.id)

        walk(focus.id)
        rendered = await views(session, svc, [*ancestors, focus, *ordered], viewer)
    by_id = {v.id: v for v in rendered}
    if focus.id not in by_id:
        raise NotFound()
    return (
        [by_id[r.id] for r in ancestors if r.id in by_id],
        by_id[focus.id],
        [by_id[r.id] for r in ordered if r.id in by_id],
    )


async def like(svc: Services, user: User, post_id: int) -> PostView:
    """Idempotent: liking twice leaves one like."""
    async with svc.db.begin() as session:
        if await store.get_visible_post(session, post_id, user.id) is None:
            raise NotFound()
        try:
            await store.add_like(session, post_id, user.id, now())
        except IntegrityError:  # deleted between the check and the insert
            raise NotFound() from None
    return await get(svc, post_id, user)


async def unlike(svc: Services, user: User, post_id: int) -> PostView:
    async with svc.db.begin() as session:
        if await store.get_visible_post(session, post_id, user.id) is None:
            raise NotFound()
        await store.remove_like(session, post_id, user.id)
    return await get(svc, post_id, user)
