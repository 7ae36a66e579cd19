"""Reading posts: timelines, threads and single posts, decrypted for one viewer from cached sealed records.

The first page of the home and public timelines is a cached list of post refs (each post checked again against
the viewer when read, since a cached list can be older than its posts); other pages are one database query, where
visibility is decided. Then one cache round trip fetches the posts, their authors, the authors' wrapped keys and,
for pages, the posts' sealed frames together; the viewer's likes come from the cache of their newest likes.
Decrypted text exists only in the returned ``PostView`` values, in this request's memory, and is opened only when
asked for (a page whose frames are cached never opens the posts themselves).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crypto import FieldContext, InvalidToken, Sealed, UserKey, open_field, seal_beside
from feed.cache import FRAMES, HOME, TIMELINES
from feed.cache import Request as CacheRequest
from feed.errors import Forbidden, NotFound
from feed.records import Cacheable, PostRecord, SealedFrame, UserRecord, WrappedKey
from feed.services import fanout, lookup
from feed.services.context import Services
from feed.services.models import Content, FrameStyle, Marks, Media, Mention, Page, PostView, TimelinePage, User
from feed.storage import boosts as boost_store
from feed.storage import likes as like_store
from feed.storage import posts as store
from feed.storage.erasure import ERASED

log = logging.getLogger(__name__)

MAX_ANCESTORS = 40
MAX_DESCENDANTS = 200
# Refs kept for the first page of the public timeline and of each home timeline (any limit up to this is served
# from the cache; later pages come from the database).
PUBLIC_FIRST_PAGE = 40
HOME_FIRST_PAGE = fanout.FIRST_PAGE


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


async def readable(svc: Services, post_id: int, viewer: User | None) -> PostRecord | None:
    """The post, if ``viewer`` may read it (its visibility, and no block between them either way); else None."""
    record = await lookup.post(svc, post_id)
    if record is None or not await _visible(svc, record, viewer):
        return None
    if (
        viewer is not None
        and record.author_id != viewer.id
        and record.author_id in await lookup.blocked(svc, viewer.id)
    ):
        return None
    return record


async def views(
    svc: Services,
    refs: Sequence[Any],
    viewer: User | None,
    marks: Marks | None = None,
    *,
    recheck: bool = False,
    style: FrameStyle | None = None,
    hide_muted: bool = False,
) -> list[PostView]:
    """Posts for ``refs`` (rows with id, author_id, key_version, in_reply_to_author_id) in their order, for a
    viewer already entitled to them, or, with ``recheck`` (refs from a cache, which may be older than the posts),
    for whom each post is checked again. Posts gone meanwhile, or whose author's key is gone or does not open
    them, are left out, and so are posts of anyone blocked either way (with ``hide_muted``, of anyone the viewer mutes:
    their home and public timelines). ``marks``: what the viewer marked and hides, when the caller already knows.

    With a ``style``, each view comes with its frame: opened from the cache when it holds one for this revision,
    else drawn now (which opens the post's text) and cached sealed."""
    if not refs:
        return []
    ids = [ref.id for ref in refs]
    records, users, keys, cached_frames = await _materials(svc, refs, style)
    if recheck:
        records = await _still_visible(svc, records, viewer)
    if marks is None:
        marks = await lookup.marks(svc, viewer.id if viewer else None, ids)
    hidden = marks.blocked | marks.muted if hide_muted else marks.blocked
    boosts = {ref.id: ref for ref in refs if getattr(ref, "boost_id", 0)}
    # A post a boost brought is left out with its boost when the booster is hidden from the viewer or erased.
    gone = {i for i, ref in boosts.items() if ref.booster_id in hidden or _erased(users.get(ref.booster_id))}
    if hidden or gone:
        records = [r for r in records if r.author_id not in hidden and r.id not in gone]
    out: list[PostView] = []
    drawn: dict[int, SealedFrame] = {}
    authors: dict[int, User] = {}
    for record in records:
        key = keys.get((record.author_id, record.key_version))
        author = authors.get(record.author_id)
        if author is None and (found := users.get(record.author_id)) is not None:
            author = authors[record.author_id] = User.of(found)
        if key is None or author is None:
            continue
        parent = users.get(record.in_reply_to_author_id) if record.in_reply_to_author_id else None
        view = _view(record, key, author, parent)
        if record.media:
            view.open_media = partial(_attachments, record, keys)
        marks.put_on(view)
        if (boost := boosts.get(record.id)) is not None and (booster := users.get(boost.booster_id)) is not None:
            view.boost_id, view.booster = boost.boost_id, User.of(booster)
        if style is None:
            opened = _opens(view, record)
        else:
            opened = _framed(style, key, record, view, cached_frames.get(record.id), drawn)
        if opened:
            out.append(view)
    if drawn and style is not None:
        await svc.cache.put(style.space, drawn)
    return out


def _erased(user: UserRecord | None) -> bool:
    return user is None or user.key_version == ERASED  # an erased account's tombstone


Materials = tuple[list[PostRecord], dict[int, UserRecord], dict[tuple[int, int], UserKey], dict[int, Any]]


async def _materials(svc: Services, refs: Sequence[Any], style: FrameStyle | None) -> Materials:
    """What the views of ``refs`` are made of, in one cache round trip: the post records in the refs' order, their
    authors (and the authors replied to), their authors' keys (unwrapped) and, with a style, their cached frames.
    A reply's parent author the ref did not name, or a key a post was re-keyed to since its ref was read, costs one
    more round trip, rarely."""
    ids = [ref.id for ref in refs]
    people = {ref.author_id for ref in refs} | {ref.in_reply_to_author_id for ref in refs if ref.in_reply_to_author_id}
    people |= {ref.booster_id for ref in refs if getattr(ref, "boost_id", 0)}
    requests = [
        lookup.posts_request(svc, ids),
        lookup.users_request(svc, people),
        lookup.user_keys_request(svc, {(ref.author_id, ref.key_version) for ref in refs}),
    ]
    if style is not None:
        requests.append(lookup.frames_request(ids, style.space))
    found_posts, found_users, wrapped, *found_frames = await svc.cache.get_multi(requests)
    records: list[PostRecord] = [p for i in ids if isinstance(p := found_posts.get(i), PostRecord)]
    users: dict[int, UserRecord] = dict(found_users)
    late = {r.in_reply_to_author_id for r in records if r.in_reply_to_author_id} | {r.author_id for r in records}
    if missing := late - users.keys():  # a reply's parent author, when the ref did not name it
        users.update(await lookup.users(svc, missing))
    pairs = {(r.author_id, r.key_version) for r in records}
    pairs |= {(r.author_id, a.key_version) for r in records for a in r.media}
    wanted = {lookup.key_name(*pair): pair for pair in pairs}
    if any(name not in wrapped for name in wanted):  # a post re-keyed since its ref was read
        more = (await svc.cache.get_multi([lookup.user_keys_request(svc, pairs)]))[0]
        wrapped = {**wrapped, **more}
    blobs = {pair: w.blob for name, pair in wanted.items() if isinstance(w := wrapped.get(name), WrappedKey)}
    return records, users, svc.keys.open_many(blobs), found_frames[0] if found_frames else {}


def _view(record: PostRecord, key: UserKey, author: User, parent: UserRecord | None) -> PostView:
    """The view of one post; its text is opened when first read."""
    return PostView(
        id=record.id,
        author=author,
        visibility=record.visibility,
        content=Content(partial(_open_fields, key, record)),
        in_reply_to_id=record.in_reply_to_id,
        in_reply_to_author_id=record.in_reply_to_author_id,
        revision=record.revision,
        likes_count=record.likes_count,
        replies_count=record.replies_count,
        reblogs_count=record.reblogs_count,
        created_at=record.created_at,
        edited_at=record.edited_at,
        mentions=[Mention(uid, name) for uid, name in record.mentions],
        reply_to_username=parent.username if parent else None,
        sensitive=record.sensitive,
        language=record.language,
        app_id=record.app_id,
    )


def _attachments(record: PostRecord, keys: Mapping[tuple[int, int], UserKey]) -> list[Media]:
    """The post's images, their alt text and blurhash opened (one that does not open is left out)."""
    out = []
    for a in record.media:
        key = keys.get((record.author_id, a.key_version))
        try:
            if key is None:
                raise InvalidToken
            description = blurhash = None
            if a.description is not None:
                description = open_field(key, a.description, FieldContext("description", a.id, record.author_id,
                                                                          a.revision))  # fmt: skip
            if a.blurhash is not None:
                blurhash = open_field(key, a.blurhash, FieldContext("blurhash", a.id, record.author_id, 0))
        except InvalidToken:
            log.warning("media %s of post %s does not decrypt; left out", a.id, record.id)
            continue
        sizes = {name: (w, h) for name, w, h in a.variants}
        out.append(Media(a.id, record.author_id, record.id, "ready", a.kind, a.width, a.height, sizes, description,
                         blurhash, a.focus))  # fmt: skip
    return out


def _opens(view: PostView, record: PostRecord) -> bool:
    """Whether the post's text opens now (a post that does not is left out)."""
    try:
        view.content.text  # noqa: B018 - opened now
    except InvalidToken:
        log.warning("post %s does not decrypt; left out", record.id)
        return False
    return True


def _framed(
    style: FrameStyle, key: UserKey, record: PostRecord, view: PostView, cached: Any, drawn: dict[int, SealedFrame]
) -> bool:
    """Give ``view`` its frame: the cached one when it is of this revision, stamp and key, else drawn now (and put
    in ``drawn``, to be cached). False when the post does not open."""
    stamp = _frame_stamp(style, view)
    if isinstance(cached, SealedFrame) and (cached.revision, cached.stamp, cached.sealed.key_version) == (
        record.revision,
        stamp,
        key.version,
    ):
        view.frame = _open_frame(style, key, record, cached.sealed)
    if view.frame is not None:
        return True
    if not _opens(view, record):
        return False
    frame = _draw_frame(style, key, record, view)
    if frame is not None:
        drawn[record.id] = SealedFrame(record.revision, stamp, frame)
    return True


def _open_fields(key: UserKey, record: PostRecord) -> tuple[str, str | None]:
    text = open_field(key, record.body, FieldContext("body", record.id, record.author_id, record.revision))
    if record.cw is None:
        return text, None
    return text, open_field(key, record.cw, FieldContext("cw", record.id, record.author_id, record.revision))


_stamps: dict[tuple[bytes, str, str, str | None], int] = {}


def _frame_stamp(style: FrameStyle, view: PostView) -> int:
    """What a cached frame depends on besides the post's revision: the template, and the names it shows."""
    names = (style.version, view.author.username, view.author.display_name, view.reply_to_username)
    stamp = _stamps.get(names)
    if stamp is None:
        if len(_stamps) >= 10_000:
            _stamps.clear()
        text = "\x00".join((view.author.username, view.author.display_name, view.reply_to_username or ""))
        digest = hashlib.blake2b(style.version + text.encode(), digest_size=8).digest()
        stamp = _stamps[names] = int.from_bytes(digest, "big") >> 1
    return stamp


def _frame_context(record: PostRecord, style: FrameStyle) -> FieldContext:
    """A page frame is a "frame"; another kind is named by its space (a frame of one kind never opens as another).
    Made once per process for each post revision a page shows (a context holds ids only)."""
    field = "frame" if style.space is FRAMES else f"frame:{style.space.name}"
    names = (field, record.id, record.author_id, record.revision)
    context = _frame_contexts.get(names)
    if context is None:
        if len(_frame_contexts) >= 10_000:
            _frame_contexts.clear()
        context = _frame_contexts[names] = FieldContext(*names)
    return context


_frame_contexts: dict[tuple[str, int, int, int], FieldContext] = {}


def _open_frame(style: FrameStyle, key: UserKey, record: PostRecord, sealed: Sealed) -> tuple[str, ...] | None:
    try:
        return style.split(open_field(key, sealed, _frame_context(record, style)))
    except InvalidToken:
        log.warning("cached frame of post %s does not decrypt; drawn again", record.id)
        return None


def _draw_frame(style: FrameStyle, key: UserKey, record: PostRecord, view: PostView) -> Sealed | None:
    """Draw the view's frame; sealed under the post's own data key for the cache (None if it cannot be)."""
    html = style.render(view)
    view.frame = style.split(html)
    if view.frame is None:
        return None
    body = FieldContext("body", record.id, record.author_id, record.revision)
    return seal_beside(key, record.body, body, html, _frame_context(record, style))


async def _still_visible(svc: Services, records: list[PostRecord], viewer: User | None) -> list[PostRecord]:
    following = None
    if viewer is not None and any(r.visibility == "followers" and r.author_id != viewer.id for r in records):
        following = await lookup.following(svc, viewer.id)
    return [r for r in records if can_see(r, viewer, following)]


async def get(svc: Services, post_id: int, viewer: User | None) -> PostView:
    record = await lookup.post(svc, post_id)
    if record is None or not await _visible(svc, record, viewer):
        raise NotFound()
    found = await views(svc, [record], viewer)
    if not found:
        raise NotFound()
    return found[0]


async def boost_status(svc: Services, boost_id: int, viewer: User | None) -> PostView:
    """A boost as a status of its own (Mastodon's reblog status, under the boost's id): the boosted post as the
    viewer may see it, brought by its booster. Not found when there is no such boost (or it was undone), when the
    viewer may not see the post, when a block stands between the viewer and the booster or the author, or when the
    booster is erased."""
    async with svc.db() as session:
        row = await boost_store.get(session, boost_id)
    if row is None:
        raise NotFound()
    record = await lookup.post(svc, row.post_id)
    if record is None or not await _visible(svc, record, viewer):
        raise NotFound()
    ref = lookup.Ref(record.id, record.author_id, record.key_version, record.in_reply_to_author_id, row.id, row.user_id)
    found = await views(svc, [ref], viewer)
    if not found or found[0].booster is None:
        raise NotFound()
    return found[0]


async def source_of(svc: Services, post_id: int, viewer: User) -> PostView:
    """The post for its author's edit form."""
    view = await get(svc, post_id, viewer)
    if view.author.id != viewer.id:
        raise Forbidden("You can only edit your own posts")
    return view


@dataclass(frozen=True, slots=True)
class Revision:
    """One version of a post, as its history shows it."""

    content: Content
    sensitive: bool
    created_at: datetime


async def history(svc: Services, post_id: int, viewer: User | None) -> tuple[PostView, list[Revision]]:
    """Every version of a post the viewer may see, oldest first, the current one last: each opened under its own
    key, as sealed then; one whose key was destroyed since (a user key rotation) is left out."""
    view = await get(svc, post_id, viewer)
    author = view.author.id
    async with svc.db() as session:
        rows = await store.revisions(session, post_id)
        keys = await svc.keys.get_many(session, {(author, row.key_version) for row in rows})
    out = []
    for row in rows:
        key = keys.get((author, row.key_version))
        if key is None:
            continue
        record = PostRecord(post_id, author, view.visibility, None, None, row.revision, row.key_version, 0, 0,
                            row.created_at, None, Sealed(row.body), Sealed(row.cw) if row.cw else None, ())  # fmt: skip
        content = Content(partial(_open_fields, key, record))
        try:
            content.text  # noqa: B018 - opened now: one that does not open is left out
        except InvalidToken:
            log.warning("revision %s of post %s does not decrypt; left out", row.revision, post_id)
            continue
        out.append(Revision(content, bool(row.sensitive), row.created_at))
    out.append(Revision(view.content, view.sensitive, view.edited_at or view.created_at))
    return view, out


def _page(found: list[PostView], refs: Sequence[Any], page: Page) -> TimelinePage:
    return TimelinePage(
        posts=found,
        next_max_id=lookup.position(refs[-1]) if len(refs) >= page.limit else None,
        prev_min_id=lookup.position(refs[0]) if refs else page.min_id or page.since_id,
    )


def _first(page: Page, kept: int) -> bool:
    return page.max_id is None and page.since_id is None and page.min_id is None and page.limit <= kept


async def home(svc: Services, viewer: User, page: Page, style: FrameStyle | None = None) -> TimelinePage:
    if _first(page, HOME_FIRST_PAGE):

        async def load() -> list[Any]:
            return await fanout.first_page(svc, viewer.id)

        # The page's refs and the viewer's newest likes and bookmarks in one cache round trip.
        found_refs, *found_marks = await svc.cache.get_multi(
            [lookup.timeline_request(HOME, viewer.id, load), *lookup.marks_requests(svc, viewer.id)]
        )
        cached = found_refs.get(viewer.id)
        if lookup.has_boosts(cached):
            refs: Sequence[Any] = (await _boosts_seen(svc, viewer, lookup.refs_of(cached), found_marks))[: page.limit]
        else:
            refs = lookup.refs_of(cached, page.limit)
        marks = await lookup.marks_among(svc, viewer.id, found_marks, [ref.id for ref in refs])
        found = await views(svc, refs, viewer, marks, recheck=True, style=style, hide_muted=True)
        return _page(found, refs, page)

    async def read(session: AsyncSession) -> tuple[list[Any], Any]:  # the page's ids and the viewer's marks
        refs = await fanout.home_refs(session, viewer.id, page)
        return refs, await lookup.marks_in(session, viewer.id, [ref.id for ref in refs])

    (refs, marks), stale = await svc.db.lagged(viewer.id, read)
    found = await views(svc, refs, viewer, None if stale else marks, recheck=stale, style=style, hide_muted=True)
    return _page(found, refs, page)


async def _boosts_seen(
    svc: Services, viewer: User, refs: Sequence[Any], found_marks: Sequence[Mapping[Any, Cacheable]]
) -> list[Any]:
    """A cached first page's entries as the viewer may read them now, each post once: boosts by people they have
    stopped following since, block or mute, left out (a post whose boost is left out may still show itself)."""
    if any(ref.boost_id and ref.booster_id != viewer.id for ref in refs):
        following = await lookup.following(svc, viewer.id)
        refs = [r for r in refs if not r.boost_id or r.booster_id == viewer.id or r.booster_id in following]
    if unseen := lookup.unseen_in(viewer.id, found_marks):
        refs = [r for r in refs if not r.boost_id or r.booster_id not in unseen]
    return fanout.once_each(refs)


async def liked(svc: Services, viewer: User, page: Page, style: FrameStyle | None = None) -> TimelinePage:
    """The posts the viewer liked and may still read, newest post first."""

    async def read(session: AsyncSession) -> tuple[list[Any], Any]:
        refs = await like_store.liked_page(session, viewer.id, page)
        return refs, await lookup.marks_in(session, viewer.id, [ref.id for ref in refs])

    (refs, marks), stale = await svc.db.lagged(viewer.id, read)
    return _page(await views(svc, refs, viewer, None if stale else marks, recheck=stale, style=style), refs, page)


PUBLIC = "public"  # the public timeline's key in TIMELINES


def public_request(svc: Services) -> CacheRequest:
    """The public timeline's newest refs (its first pages' worth), as everyone shares them in the cache (read them
    with ``lookup.refs_of``)."""

    async def load() -> list[Any]:
        async with svc.db() as session:
            return await store.public(session, Page(limit=PUBLIC_FIRST_PAGE))

    return lookup.timeline_request(TIMELINES, PUBLIC, load)


async def public_refs(svc: Services) -> list[lookup.Ref]:
    return lookup.refs_of((await svc.cache.get_multi([public_request(svc)]))[0].get(PUBLIC))


async def public(
    svc: Services, viewer: User | None, page: Page, style: FrameStyle | None = None, *, only_media: bool = False
) -> TimelinePage:
    """Public posts, newest first (``only_media``: those with images)."""
    if _first(page, PUBLIC_FIRST_PAGE) and not only_media:
        refs: Sequence[Any] = (await public_refs(svc))[: page.limit]
        return _page(await views(svc, refs, viewer, recheck=True, style=style, hide_muted=True), refs, page)

    async def read(session: AsyncSession) -> list[Any]:
        return list(await store.public(session, page, only_media=only_media))

    refs, stale = await svc.db.lagged(viewer.id if viewer else None, read)
    return _page(await views(svc, refs, viewer, recheck=stale, style=style, hide_muted=True), refs, page)


async def by_author(
    svc: Services,
    author: User,
    viewer: User | None,
    page: Page,
    *,
    exclude_replies: bool = False,
    only_media: bool = False,
    style: FrameStyle | None = None,
) -> TimelinePage:
    reader = viewer.id if viewer else None

    async def read(session: AsyncSession) -> tuple[list[Any], Any]:
        refs = await store.by_author(session, author.id, reader, page, exclude_replies=exclude_replies,
                                     only_media=only_media)  # fmt: skip
        return refs, await lookup.marks_in(session, reader, [ref.id for ref in refs])

    (refs, marks), stale = await svc.db.lagged(reader, read)
    return _page(await views(svc, refs, viewer, None if stale else marks, recheck=stale, style=style), refs, page)


async def thread(
    svc: Services, post_id: int, viewer: User | None, style: FrameStyle | None = None
) -> tuple[list[PostView], PostView, list[PostView]]:
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
    rendered = await views(svc, [*ancestors, focus, *ordered], viewer, style=style)
    by_id = {v.id: v for v in rendered}
    if focus.id not in by_id:
        raise NotFound()
    return (
        [by_id[r.id] for r in ancestors if r.id in by_id],
        by_id[focus.id],
        [by_id[r.id] for r in ordered if r.id in by_id],
    )
