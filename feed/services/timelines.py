"""Reading posts: timelines, threads and single posts, decrypted for one viewer from cached sealed records.

A page costs one database query for its ids (visibility is decided there), one cache round trip for the posts,
their authors and the authors' wrapped keys together, and one query for which of them the viewer liked.
Decrypted text exists only in the returned ``PostView`` values, in this request's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from crypto import FieldContext, InvalidToken, open_field
from feed.errors import Forbidden, NotFound
from feed.records import PostRecord, UserRecord, WrappedKey
from feed.services import lookup
from feed.services.context import Services
from feed.services.models import Mention, Page, PostView, TimelinePage, User
from feed.services.text import render_html
from feed.storage import posts as store

log = logging.getLogger(__name__)

MAX_ANCESTORS = 40
MAX_DESCENDANTS = 200
PUBLIC_FIRST_PAGE = 40  # ids kept for the public timeline's first page (any limit up to this is served from it)


def can_see(post: PostRecord, viewer: User | None, following: frozenset[int] | None) -> bool:
    """The visibility rule of ``feed.storage.posts.visible_to``, for a cached record. ``following`` is needed
    only for followers-only posts of someone else (None: not looked up yet)."""
    if post.visibility in ("public", "unlisted"):
        return True
    if viewer is None:
        return False
    if post.author_id == viewer.id or any(uid == viewer.id for uid, _ in post.mentions):
        return True
    return post.visibility == "followers" and following is not None and post.author_id in following


async def _visible(svc: Services, post: PostRecord | None, viewer: User | None) -> bool:
    if post is None:
        return False
    if can_see(post, viewer, None):
        return True
    if viewer is None or post.visibility != "followers":
        return False
    return can_see(post, viewer, await lookup.following(svc, viewer.id))


async def views(
    svc: Services, refs: Sequence[Any], viewer: User | None, liked: set[int] | None = None
) -> list[PostView]:
    """Posts for ``refs`` (rows with id, author_id, key_version, in_reply_to_author_id) in their order, for a
    viewer already entitled to them. Posts gone meanwhile, or whose author's key is gone, are left out.
    ``liked``: which of them the viewer liked, when the caller already asked the database."""
    if not refs:
        return []
    ids = [ref.id for ref in refs]
    people = {ref.author_id for ref in refs} | {ref.in_reply_to_author_id for ref in refs if ref.in_reply_to_author_id}
    found_posts, found_users, wrapped = await svc.cache.get_multi(
        [
            lookup.posts_request(svc, ids),
            lookup.users_request(svc, people),
            lookup.user_keys_request(svc, {(ref.author_id, ref.key_version) for ref in refs}),
        ]
    )
    records: list[PostRecord] = [p for i in ids if isinstance(p := found_posts.get(i), PostRecord)]
    users: dict[int, UserRecord] = dict(found_users)
    late = {r.in_reply_to_author_id for r in records if r.in_reply_to_author_id} | {r.author_id for r in records}
    if missing := late - users.keys():  # a reply's parent author, when the ref did not name it
        users.update(await lookup.users(svc, missing))
    pairs = {(r.author_id, r.key_version) for r in records}
    wanted = {lookup.key_name(*pair): pair for pair in pairs}
    if any(name not in wrapped for name in wanted):  # a post re-keyed since its ref was read
        more = (await svc.cache.get_multi([lookup.user_keys_request(svc, pairs)]))[0]
        wrapped = {**wrapped, **more}
    blobs = {pair: w.blob for name, pair in wanted.items() if isinstance(w := wrapped.get(name), WrappedKey)}
    keys = svc.keys.open_many(blobs)
    if liked is None:
        liked = await _liked(svc, viewer, ids)
    out: list[PostView] = []
    for record in records:
        key = keys.get((record.author_id, record.key_version))
        author = users.get(record.author_id)
        if key is None or author is None:
            continue
        try:
            text = open_field(key, record.body, FieldContext("body", record.id, record.author_id, record.revision))
            cw = (
                open_field(key, record.cw, FieldContext("cw", record.id, record.author_id, record.revision))
                if record.cw
                else None
            )
        except InvalidToken:
            log.warning("post %s does not decrypt; left out", record.id)
            continue
        parent = users.get(record.in_reply_to_author_id) if record.in_reply_to_author_id else None
        out.append(
            PostView(
                id=record.id,
                author=User.from_row(author),
                visibility=record.visibility,
                text=text,
                html=render_html(text),
                cw=cw,
                in_reply_to_id=record.in_reply_to_id,
                in_reply_to_author_id=record.in_reply_to_author_id,
                revision=record.revision,
                likes_count=record.likes_count,
                replies_count=record.replies_count,
                created_at=record.created_at,
                edited_at=record.edited_at,
                liked=record.id in liked,
                mentions=[Mention(uid, name) for uid, name in record.mentions],
                reply_to_username=parent.username if parent else None,
            )
        )
    return out


async def _liked(svc: Services, viewer: User | None, ids: list[int]) -> set[int]:
    if viewer is None:
        return set()
    async with svc.db() as session:
        return await store.liked_by(session, viewer.id, ids)


async def get(svc: Services, post_id: int, viewer: User | None) -> PostView:
    record = await lookup.post(svc, post_id)
    if record is None or not await _visible(svc, record, viewer):
        raise NotFound()
    found = await views(svc, [record], viewer)
    if not found:
        raise NotFound()
    return found[0]


async def source_of(svc: Services, post_id: int, viewer: User) -> PostView:
    """The post for its author's edit form."""
    view = await get(svc, post_id, viewer)
    if view.author.id != viewer.id:
        raise Forbidden("You can only edit your own posts")
    return view


def _page(found: list[PostView], refs: Sequence[Any], page: Page) -> TimelinePage:
    return TimelinePage(
        posts=found,
        next_max_id=refs[-1].id if len(refs) >= page.limit else None,
        prev_min_id=refs[0].id if refs else page.min_id or page.since_id,
    )


async def home(svc: Services, viewer: User, page: Page) -> TimelinePage:
    async with svc.db() as session:  # one connection for the page's ids and the viewer's likes among them
        refs = await store.home(session, viewer.id, page)
        liked = await store.liked_by(session, viewer.id, [ref.id for ref in refs])
    return _page(await views(svc, refs, viewer, liked), refs, page)


async def public(svc: Services, viewer: User | None, page: Page) -> TimelinePage:
    if page.max_id is None and page.since_id is None and page.min_id is None and page.limit <= PUBLIC_FIRST_PAGE:
        refs = (await _public_first_page(svc))[: page.limit]
    else:
        async with svc.db() as session:
            refs = await store.public(session, page)
    return _page(await views(svc, refs, viewer), refs, page)


async def _public_first_page(svc: Services) -> list[Any]:
    """The newest public posts, cached as one id list (dropped by every public post or delete)."""

    async def load() -> list[int]:
        async with svc.db() as session:
            return [ref.id for ref in await store.public(session, Page(limit=PUBLIC_FIRST_PAGE))]

    ids = await lookup.timeline_ids(svc, "public", load)
    records = await lookup.posts(svc, ids)
    return [records[i] for i in ids if i in records]


async def by_author(
    svc: Services, author: User, viewer: User | None, page: Page, *, exclude_replies: bool = False
) -> TimelinePage:
    async with svc.db() as session:
        refs = await store.by_author(
            session, author.id, viewer.id if viewer else None, page, exclude_replies=exclude_replies
        )
        liked = await store.liked_by(session, viewer.id, [ref.id for ref in refs]) if viewer else set()
    return _page(await views(svc, refs, viewer, liked), refs, page)


async def thread(svc: Services, post_id: int, viewer: User | None) -> tuple[list[PostView], PostView, list[PostView]]:
    """(ancestors oldest first, the post, descendants in reply-tree order), each visible to ``viewer``."""
    focus = await lookup.post(svc, post_id)
    if focus is None or not await _visible(svc, focus, viewer):
        raise NotFound()
    ancestors: list[PostRecord] = []
    parent_id = focus.in_reply_to_id
    while parent_id is not None and len(ancestors) < MAX_ANCESTORS:
        parent = await lookup.post(svc, parent_id)
        if parent is None or not await _visible(svc, parent, viewer):
            break
        ancestors.append(parent)
        parent_id = parent.in_reply_to_id
    ancestors.reverse()
    children: dict[int, list[Any]] = {}
    frontier, total = [focus.id], 0
    async with svc.db() as session:
        while frontier and total < MAX_DESCENDANTS:
            found = await store.replies(session, frontier, viewer.id if viewer else None)
            for ref in found:
                children.setdefault(ref.in_reply_to_id, []).append(ref)
            total += len(found)
            frontier = [ref.id for ref in found]
    ordered: list[Any] = []

    def walk(pid: int) -> None:
        for child in children.get(pid, []):
            if len(ordered) < MAX_DESCENDANTS:
                ordered.append(child)
                walk(child.id)

    walk(focus.id)
    rendered = await views(svc, [*ancestors, focus, *ordered], viewer)
    by_id = {v.id: v for v in rendered}
    if focus.id not in by_id:
        raise NotFound()
    return (
        [by_id[r.id] for r in ancestors if r.id in by_id],
        by_id[focus.id],
        [by_id[r.id] for r in ordered if r.id in by_id],
    )
