"""Notifications: who mentioned, replied to, liked or followed a person, stored as ids (the posts stay sealed in
their own table), grouped as Mastodon groups them, counted unread against the ``notifications`` marker.

A writer calls :func:`notify` (or :func:`withdraw`, when the thing is undone) inside its own transaction, and adds
what it returns to the effects it records: the recipient's unread count is dropped from the caches and a
:data:`~feed.events.NOTE` event goes to their live streams, from the same outbox row as the write itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from feed.cache import UNREAD, Request
from feed.errors import Invalid, NotFound
from feed.events import Effects, merge
from feed.ids import new_id
from feed.records import Cacheable, Tally
from feed.services import effects, lookup, markers
from feed.services.context import Services, now
from feed.services.models import Page, PostView, User
from feed.services.timelines import views
from feed.storage import follows as follow_store
from feed.storage import markers as marker_store
from feed.storage import notifications as store
from feed.storage import relations as relation_store

# The kinds this server makes, in Mastodon's names (a reply to someone's post is a "mention" of them, as there).
KINDS = ("mention", "favourite", "reblog", "follow", "follow_request", "update")
LABELS = {
    "mention": "Mentions and replies",
    "favourite": "Likes of your posts",
    "reblog": "Boosts of your posts",
    "follow": "New followers",
    "follow_request": "Follow requests",
    "update": "Edits of posts you boosted",
}
# Kinds Mastodon apps may ask for or leave out that never happen here (no polls, no reports, no federation).
FOREIGN = frozenset(
    {
        "status",
        "poll",
        "admin.sign_up",
        "admin.report",
        "severed_relationships",
        "moderation_warning",
        "quote",
        "quoted_update",
        "annual_report",
    }
)
GROUPED = frozenset({"favourite", "reblog", "follow"})
GROUP_SPAN_HOURS = 12  # a group takes in what comes within this many hours of its first (as Mastodon's do)
UNREAD_CAP = 100
SAMPLE_ACCOUNTS = 8


@dataclass(slots=True)
class Notification:
    id: int
    type: str
    created_at: datetime
    account: User
    post: PostView | None
    group_key: str


# -- writing (inside a writer's transaction)


def _hour(when: datetime) -> int:
    return int(when.timestamp()) // 3600


async def _group_key(session: AsyncSession, user_id: int, kind: str, post_id: int | None, when: datetime) -> str | None:
    """Likes (and boosts) of one post, or follows, within :data:`GROUP_SPAN_HOURS` of the group's first: one group."""
    if kind not in GROUPED:
        return None
    prefix = f"{kind}-{post_id}" if kind in ("favourite", "reblog") else kind
    hour = _hour(when)
    latest = await store.latest_group(session, user_id, prefix)
    if latest is not None:
        started = int(latest.rsplit("-", 1)[1])
        if hour - started < GROUP_SPAN_HOURS:
            return latest
    return f"{prefix}-{hour}"


async def notify(session: AsyncSession, recipient: int, kind: str, actor: int, post_id: int | None = None) -> Effects:
    """Tell ``recipient`` that ``actor`` did ``kind`` (to ``post_id``), unless it is their own doing or their
    settings say no; what the writer must add to its effects."""
    assert kind in KINDS
    if recipient == actor or await relation_store.silenced(session, recipient, [actor], now()):
        return Effects()  # their own doing; or a block stands between them, or the recipient muted the actor
    off, only_following = await store.settings(session, recipient)
    if kind in off:
        return Effects()
    if only_following and not (await follow_store.follow_state(session, recipient, actor))[0]:
        return Effects()
    when = now()
    note_id = new_id()
    group_key = await _group_key(session, recipient, kind, post_id, when)
    await store.add(
        session, id=note_id, user_id=recipient, type=kind, from_id=actor, post_id=post_id, group_key=group_key,
        created_at=when,
    )  # fmt: skip
    return effects.notified(note_id, recipient)


async def notify_many(
    session: AsyncSession, recipients: Iterable[int], kind: str, actor: int, post_id: int | None = None
) -> Effects:
    return merge([await notify(session, r, kind, actor, post_id) for r in dict.fromkeys(recipients)])


async def withdraw(session: AsyncSession, recipient: int, kind: str, actor: int, post_id: int | None = None) -> Effects:
    """The thing was undone (an unlike, an unfollow): its notification goes."""
    if await store.withdraw(session, recipient, kind, actor, post_id):
        return effects.unread_changed(recipient)
    return Effects()


# -- reading


def parse_kinds(raw: Sequence[str], what: str) -> list[str]:
    """Mastodon's ``types[]`` or ``exclude_types[]``: our kinds kept, Mastodon's others ignored, the rest refused."""
    out = []
    for kind in raw:
        if kind in KINDS:
            out.append(kind)
        elif kind not in FOREIGN:
            raise Invalid(f"{what} has an unknown notification type", what)
    return out


async def listing(
    svc: Services,
    user: User,
    page: Page,
    *,
    types: Sequence[str] = (),
    exclude: Sequence[str] = (),
    account_id: int | None = None,
    asked_types: bool = False,
) -> tuple[list[Notification], int | None, int | None]:
    """A page of the user's notifications, newest first, each with its account and its post (as the user may see
    it now: a notification whose post is gone or hidden from them is left out); and the cursors of the next
    (older) and previous (newer) pages. ``asked_types``: ``types`` was given (an empty list then means none)."""
    if asked_types and not types:
        return [], None, None
    async with svc.db() as session:
        rows = await store.page(session, user.id, page, types=types, exclude=exclude, account_id=account_id)
        silenced = await relation_store.silenced(session, user.id, list({row.from_id for row in rows}), now())
    found = await _materialise(svc, user, [row for row in rows if row.from_id not in silenced])
    next_max = rows[-1].id if len(rows) >= page.limit else None
    prev_min = rows[0].id if rows else page.min_id or page.since_id
    return found, next_max, prev_min


async def _materialise(svc: Services, user: User, rows: Sequence[Any]) -> list[Notification]:
    actors = await lookup.users(svc, {row.from_id for row in rows})
    post_ids = list(dict.fromkeys(row.post_id for row in rows if row.post_id))
    records = await lookup.posts(svc, post_ids)
    shown = await views(svc, [records[i] for i in post_ids if i in records], user, recheck=True)
    by_id = {view.id: view for view in shown}
    out = []
    for row in rows:
        actor = actors.get(row.from_id)
        post = by_id.get(row.post_id) if row.post_id else None
        if actor is None or (row.post_id and post is None):
            continue
        key = row.group_key or f"ungrouped-{row.id}"
        out.append(Notification(row.id, row.type, row.created_at, User.from_row(actor), post, key))
    return out


async def one(svc: Services, user: User, notification_id: int) -> Notification:
    async with svc.db() as session:
        row = await store.get(session, user.id, notification_id)
    found = await _materialise(svc, user, [row] if row else [])
    if not found:
        raise NotFound()
    return found[0]


@dataclass(slots=True)
class Group:
    """Mastodon's NotificationGroup: the notifications of one key on a page, the newest first."""

    key: str
    type: str
    count: int  # in the whole group, not only on this page
    newest: Notification
    page_min_id: int
    page_max_id: int
    sample_account_ids: list[int]


async def grouped(
    svc: Services, user: User, page: Page, *, types: Sequence[str] = (), exclude: Sequence[str] = (),
    grouped_types: Sequence[str] = tuple(GROUPED), asked_types: bool = False,
) -> tuple[list[Group], dict[int, User], int | None, int | None]:  # fmt: skip
    """A page of notifications folded into groups (those of ``grouped_types`` only), in the order of each group's
    newest notification; with the accounts the groups name, and the page's cursors."""
    found, next_max, prev_min = await listing(svc, user, page, types=types, exclude=exclude, asked_types=asked_types)
    order: dict[str, list[Notification]] = {}
    for note in found:
        key = note.group_key if note.type in grouped_types else f"ungrouped-{note.id}"
        order.setdefault(key, []).append(note)
    keyed = [key for key in order if not key.startswith("ungrouped-")]
    async with svc.db() as session:
        whole = await store.groups(session, user.id, keyed, SAMPLE_ACCOUNTS)
    people = {note.account.id: note.account for note in found}
    missing = {i for info in whole.values() for i in info["recent"]} - people.keys()
    people |= {uid: User.from_row(row) for uid, row in (await lookup.users(svc, missing)).items()}
    out = []
    for key, notes in order.items():
        info = whole.get(key)
        sample = [i for i in info["recent"] if i in people] if info else [notes[0].account.id]
        out.append(
            Group(
                key,
                notes[0].type,
                info["count"] if info else len(notes),
                notes[0],
                notes[-1].id,
                notes[0].id,
                sample or [notes[0].account.id],
            )
        )
    return out, people, next_max, prev_min


async def unread_count(
    svc: Services,
    user: User,
    *,
    fresh: bool = False,
    cap: int = UNREAD_CAP,
    types: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> int:
    """How many notifications are newer than the user's ``notifications`` marker (at most ``cap``; of ``types``
    only, or but ``exclude``), those the list leaves out not counted. Cached; ``fresh``: read from the database (a
    live event can arrive before the invalidation that goes with it)."""

    if fresh or cap != UNREAD_CAP or types or exclude:
        async with svc.db() as session:
            return await _count(session, user.id, cap, types=types, exclude=exclude)
    request = unread_request(svc, user.id)
    return unread_of(await svc.cache.get(UNREAD, user.id, request.load))


def unread_request(svc: Services, user_id: int) -> Request:
    """The user's cached unread count (read it with :func:`unread_of`), for a page's cache round trip."""

    async def load(missing: list[int]) -> dict[int, Tally]:
        async with svc.db() as session:
            return {user_id: Tally(await _count(session, user_id, UNREAD_CAP))}

    return Request(UNREAD, [user_id], load)


def unread_of(found: Cacheable | None) -> int:
    return found.value if isinstance(found, Tally) else 0


async def _count(
    session: AsyncSession, user_id: int, cap: int, *, types: Sequence[str] = (), exclude: Sequence[str] = ()
) -> int:
    rows = await marker_store.of(session, user_id, ["notifications"])
    after = rows[0].last_read_id if rows else 0
    silenced = set(await relation_store.blocked_either_way(session, user_id))
    silenced |= set(await relation_store.muted_ids(session, user_id, now(), notifications=True))
    return await store.count_after(session, user_id, after, cap, types=types, exclude=exclude, not_from=silenced)


async def mark_read(svc: Services, user: User, last_id: int) -> None:
    """Everything up to ``last_id`` was seen (the page of notifications was opened)."""
    current = await markers.read(svc, user, ["notifications"])
    if current and current[0].last_read_id >= last_id:
        return
    await markers.save(svc, user, {"notifications": last_id})


async def dismiss(svc: Services, user: User, notification_id: int) -> None:
    async with svc.db.begin() as session:
        if not await store.dismiss(session, user.id, notification_id):
            raise NotFound()
        await effects.record(session, effects.unread_changed(user.id))
    await effects.committed(svc, effects.unread_changed(user.id))


async def dismiss_group(svc: Services, user: User, group_key: str) -> None:
    async with svc.db.begin() as session:
        if group_key.startswith("ungrouped-"):
            raw = group_key.removeprefix("ungrouped-")
            gone = (
                raw.isascii() and raw.isdigit() and len(raw) <= 19 and await store.dismiss(session, user.id, int(raw))
            )
        else:
            gone = bool(await store.dismiss_group(session, user.id, group_key[:60]))
        if not gone:
            raise NotFound()
        await effects.record(session, effects.unread_changed(user.id))
    await effects.committed(svc, effects.unread_changed(user.id))


async def clear(svc: Services, user: User) -> None:
    async with svc.db.begin() as session:
        await store.clear(session, user.id)
        await effects.record(session, effects.unread_changed(user.id))
    await effects.committed(svc, effects.unread_changed(user.id))


@dataclass(frozen=True, slots=True)
class Settings:
    off: frozenset[str]
    only_following: bool


async def settings(svc: Services, user: User) -> Settings:
    async with svc.db() as session:
        off, only_following = await store.settings(session, user.id)
    return Settings(off, only_following)


async def save_settings(svc: Services, user: User, wanted: Iterable[str], only_following: bool) -> Settings:
    """Receive the kinds in ``wanted`` (the others are turned off); from everyone, or only from people followed."""
    kinds = set(wanted)
    if unknown := kinds - set(KINDS):
        raise Invalid(f"Unknown notification kind {sorted(unknown)[0][:30]!r}")
    off = set(KINDS) - kinds
    async with svc.db.begin() as session:
        await store.save_settings(session, user.id, off, only_following, now())
    return Settings(frozenset(off), only_following)
