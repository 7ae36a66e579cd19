"""Writing posts: create, edit, delete, like. Text is sealed here, before any storage call; each writer records
what it causes (``feed.services.effects``) in its own transaction."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crypto import seal_fields
from feed.errors import Conflict, Forbidden, Invalid, NotFound
from feed.events import Effects
from feed.ids import new_id
from feed.services import effects, fanout, media, notifications
from feed.services.context import Services, now
from feed.services.models import KEEP, Keep, PostView, User
from feed.services.text import mentioned_usernames, normalize_cw, normalize_post
from feed.services.timelines import get
from feed.storage import boosts as boost_store
from feed.storage import follows as follow_store
from feed.storage import idempotency
from feed.storage import likes as like_store
from feed.storage import notifications as notification_store
from feed.storage import posts as store
from feed.storage import relations as relation_store
from feed.storage import users as user_store

log = logging.getLogger(__name__)

VISIBILITIES = ("public", "unlisted", "followers", "direct")


def check_visibility(raw: str) -> str:
    visibility = {"private": "followers"}.get(raw, raw)
    if visibility not in VISIBILITIES:
        raise Invalid("Visibility must be public, unlisted, followers or direct", "visibility")
    return visibility


_LANGUAGE_RE = re.compile(r"[a-z]{2,3}")


def check_language(raw: str | None) -> str | None:
    """An ISO 639 language code (two or three letters, as Mastodon takes them); None for none."""
    if raw is None or not raw.strip():
        return None
    code = raw.strip().lower()
    if not _LANGUAGE_RE.fullmatch(code):
        raise Invalid("Language is not a valid ISO 639 code", "language")
    return code


async def _resolve_mentions(session: AsyncSession, text: str, author: User) -> list[int]:
    """The people ``text`` mentions, but its author and anyone a block stands between (who cannot be mentioned)."""
    names = mentioned_usernames(text)
    found = await user_store.get_ids_by_usernames(session, names)
    ids = [found[n] for n in names if n in found and found[n] != author.id]
    if ids:
        kept_out = set(await relation_store.blocked_either_way(session, author.id))
        ids = [i for i in ids if i not in kept_out]
    return ids


def _seal(svc_key: Any, post_id: int, author: User, revision: int, text: str, cw: str | None) -> dict[str, bytes]:
    fields = {"body": text} | ({"cw": cw} if cw else {})
    sealed = seal_fields(svc_key, fields, object_id=post_id, owner_id=author.id, revision=revision)
    return {"body": sealed["body"].data, "cw": sealed["cw"].data if cw else None}  # type: ignore[dict-item]


async def _reaches(session: AsyncSession, reader: int, author: int, visibility: str) -> bool:
    """Whether ``reader``, not mentioned, may read a post of ``author`` with this visibility."""
    if visibility in ("public", "unlisted"):
        return True
    return visibility == "followers" and (await follow_store.follow_state(session, reader, author))[0]


async def _key_version(session: AsyncSession, author: User) -> int:
    """The author's current key version, read (and their row locked) in the write's own transaction: the cached
    ``User`` may be older than a key rotation."""
    version = await user_store.current_key_version(session, author.id)
    if version is None or version == 0:  # gone, or erased a moment ago
        raise Forbidden("This account no longer exists")
    return version


async def create(
    svc: Services,
    author: User,
    text: str,
    *,
    visibility: str = "public",
    cw: str | None = None,
    in_reply_to_id: int | None = None,
    idempotency_key: str | None = None,
    sensitive: bool = False,
    language: str | None = None,
    app_id: int | None = None,
    media_ids: Sequence[int] = (),
) -> PostView:
    """A new post, with ``media_ids`` (the author's uploads, ready, up to four) as its images. With
    ``idempotency_key``: if this author's key created a post within the last hour, that post is returned and
    nothing new is made (a client retrying a request whose answer it lost, as Mastodon does).
    ``sensitive``, ``language`` and ``app_id`` (the app it comes from) are kept as declared metadata."""
    media_ids = media.check_ids(media_ids)
    text = normalize_post(text, allow_empty=bool(media_ids))
    cw = normalize_cw(cw)
    visibility = check_visibility(visibility)
    meta = {"sensitive": sensitive, "language": check_language(language), "app_id": app_id or None}
    key_hash = _key_hash(svc, idempotency_key) if idempotency_key else None
    for attempt in (1, 2):
        post_id = new_id()
        try:
            post_id, caused = await _insert(
                svc, author, post_id, text, cw, visibility, in_reply_to_id, key_hash, meta, media_ids
            )
            break
        except IntegrityError:
            if attempt == 2:  # neither an id collision nor a concurrent request with the same key
                raise
    if caused is None:
        return await get(svc, post_id, author)
    await effects.committed(svc, caused)
    # Read (and so cached) at once: the live event the relay is about to announce has every web process read it.
    view = await get(svc, post_id, author)
    await fanout.own_post(svc, post_id, author.id)
    return view


def _key_hash(svc: Services, key: str) -> bytes:
    """A client's key, as stored: a keyed hash (the table holds no string a client chose)."""
    message = b"idempotency-key:" + key.encode("utf-8", "surrogatepass")
    return hmac.digest(svc.secrets.token_key, message, hashlib.sha256)


async def _insert(
    svc: Services,
    author: User,
    post_id: int,
    text: str,
    cw: str | None,
    visibility: str,
    in_reply_to_id: int | None,
    key_hash: bytes | None,
    meta: dict[str, Any],
    media_ids: list[int],
) -> tuple[int, Effects | None]:
    """Insert the post, and what it causes in the outbox; returns its id and what it causes, or, when the key
    made a post already, that post's id and None."""
    async with svc.db.begin() as session:
        if key_hash is not None and (made := await idempotency.find(session, author.id, key_hash, now())) is not None:
            return made, None
        parent = None
        if in_reply_to_id is not None:
            parent = await store.get_visible_post(session, in_reply_to_id, author.id)
            if parent is None:
                raise NotFound("The post you are replying to does not exist or is not visible to you")
        mention_ids = await _resolve_mentions(session, text, author)
        if visibility == "direct" and not mention_ids:
            raise Invalid("A direct post needs at least one @mention of an existing user", "status")
        version = await _key_version(session, author)
        key = await svc.keys.get(session, author.id, version)
        sealed = _seal(key, post_id, author, 1, text, cw)
        await store.insert_post(
            session,
            id=post_id,
            author_id=author.id,
            visibility=visibility,
            in_reply_to_id=parent.id if parent else None,
            in_reply_to_author_id=parent.author_id if parent else None,
            revision=1,
            key_version=version,
            created_at=now(),
            **sealed,
            **meta,
        )
        await store.set_mentions(session, post_id, mention_ids)
        await media.take(session, author.id, post_id, media_ids)
        told = list(mention_ids)
        if parent is not None:
            await store.bump_replies(session, parent.id, 1)
            if await _reaches(session, parent.author_id, author.id, visibility):
                told.append(parent.author_id)  # a reply tells whom it answers, as Mastodon's mention does
        if key_hash is not None:
            await idempotency.remember(session, author.id, key_hash, post_id, now())
        caused = effects.post_created(post_id, author.id, visibility, parent.id if parent else None, mention_ids)
        caused += await notifications.notify_many(session, told, "mention", author.id, post_id)
        await effects.record(session, caused)
    return post_id, caused


async def edit(
    svc: Services,
    author: User,
    post_id: int,
    text: str,
    cw: str | None = None,
    *,
    expected_revision: int | None = None,
    sensitive: bool | None = None,
    language: str | Keep | None = KEEP,
    media_ids: Sequence[int] | None = None,
) -> PostView:
    """A new revision under a new data key; the one it replaces is kept as it was (``post_revisions``, for its
    history). With ``expected_revision`` (the revision the editor started from), an edit made elsewhere in the
    meantime is a Conflict instead of being overwritten. ``sensitive``, ``language`` and the images (``media_ids``, in
    their new order; those left out are let go) change when given."""
    media_ids = None if media_ids is None else media.check_ids(media_ids)
    text = normalize_post(text, allow_empty=True)
    cw = normalize_cw(cw)
    meta: dict[str, Any] = {} if sensitive is None else {"sensitive": sensitive}
    if not isinstance(language, Keep):
        meta["language"] = check_language(language)
    async with svc.db.begin() as session:
        row = await store.get_visible_post(session, post_id, author.id)
        if row is None:
            raise NotFound()
        if row.author_id != author.id:
            raise Forbidden("You can only edit your own posts")
        if expected_revision is not None and row.revision != expected_revision:
            raise Conflict("The post was edited elsewhere since you opened it; reload to see the latest version")
        if media_ids is not None:
            await media.take(session, author.id, post_id, media_ids)
        if not text and not await media.attached(session, post_id):  # images alone may be a post
            raise Invalid("Text can't be blank", "status")
        mention_ids = await _resolve_mentions(session, text, author)
        if row.visibility == "direct" and not mention_ids:
            raise Invalid("A direct post needs at least one @mention of an existing user", "status")
        version = await _key_version(session, author)
        key = await svc.keys.get(session, author.id, version)
        revision = row.revision + 1
        sealed = _seal(key, post_id, author, revision, text, cw)
        changed = await store.update_revision(
            session,
            post_id,
            expected_revision=row.revision,
            revision=revision,
            key_version=version,
            edited_at=now(),
            **sealed,
            **meta,
        )
        if not changed:
            raise Conflict("The post was changed at the same time; reload and try again")
        await store.keep_revision(session, row)
        before = {m.id for m in (await store.mentions_of(session, [post_id])).get(post_id, [])}
        await store.set_mentions(session, post_id, mention_ids)
        # A direct post shows in the home timelines of whom it mentions: new mentions see it now (dropped ones
        # stop seeing it because every cached timeline is checked again when read).
        caused = effects.post_edited(post_id, author.id, row.visibility, mention_ids)
        newly = [uid for uid in mention_ids if uid not in before]
        caused += await notifications.notify_many(session, newly, "mention", author.id, post_id)
        for dropped in before - set(mention_ids) - {row.in_reply_to_author_id}:  # no longer mentioned: not told
            caused += await notifications.withdraw(session, dropped, "mention", author.id, post_id)
        # Who boosted it shared what it said: they are told it changed (Mastodon's "update").
        caused += await notifications.notify_many(session, await boost_store.boosters(session, post_id), "update",
                                                  author.id, post_id)  # fmt: skip
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    return await get(svc, post_id, author)


async def delete(svc: Services, author: User, post_id: int) -> PostView:
    """Delete a post (its ciphertext, mentions and likes go with the row); returns what it was, for redrafts."""
    view = await get(svc, post_id, author)
    if view.author.id != author.id:
        raise Forbidden("You can only delete your own posts")
    async with svc.db() as session:  # before they go with the post
        mentioned = [m.id for m in (await store.mentions_of(session, [post_id])).get(post_id, [])]
    async with svc.db.begin() as session:
        told = await notification_store.owners_about(session, post_id)  # their notifications of it go with it
        if not await store.delete_post(session, post_id):
            raise NotFound()
        if view.in_reply_to_id is not None:
            await store.bump_replies(session, view.in_reply_to_id, -1)
        caused = effects.post_deleted(post_id, author.id, view.visibility, view.in_reply_to_id, mentioned)
        caused += effects.merge_unread(told)
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    await fanout.remove_from(svc, [post_id], [author.id, *mentioned])
    return view


async def like(svc: Services, user: User, post_id: int) -> PostView:
    """Idempotent: liking twice leaves one like."""
    async with svc.db.begin() as session:
        post = await store.get_visible_post(session, post_id, user.id)
        if post is None:
            raise NotFound()
        try:
            changed = await like_store.add_like(session, post_id, user.id, now())
        except IntegrityError:  # deleted between the check and the insert
            raise NotFound() from None
        if changed:
            caused = effects.like_changed(post_id, user.id)
            caused += await notifications.notify(session, post.author_id, "favourite", user.id, post_id)
            await effects.record(session, caused)
    if changed:
        await effects.committed(svc, caused)
    return await get(svc, post_id, user)


async def unlike(svc: Services, user: User, post_id: int) -> PostView:
    async with svc.db.begin() as session:
        post = await store.get_visible_post(session, post_id, user.id)
        if post is None:
            raise NotFound()
        changed = await like_store.remove_like(session, post_id, user.id)
        if changed:
            caused = effects.like_changed(post_id, user.id)
            caused += await notifications.withdraw(session, post.author_id, "favourite", user.id, post_id)
            await effects.record(session, caused)
    if changed:
        await effects.committed(svc, caused)
    return await get(svc, post_id, user)
