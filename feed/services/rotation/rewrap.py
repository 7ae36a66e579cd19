"""Rewrapping posts and sealed emails under their author's current key version, and destroying the superseded user
key versions nothing uses any more.

A data key is unwrapped with the old user key and wrapped with the current one; the ciphertext is untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from crypto import FieldContext, InvalidToken, Sealed, UserKey, rewrap
from feed.cache import FRAME_SPACES, POSTS, Space
from feed.errors import NotFound
from feed.services import lookup, media
from feed.services.context import Services, now
from feed.services.jobs import Run
from feed.services.rotation import batch
from feed.storage import keys as store
from feed.storage import media as media_store

log = logging.getLogger(__name__)

PRUNE_GRACE = timedelta(minutes=15)
"""How long a superseded user key version is kept after the rotation that superseded it, even when no row uses it:
longer than any cached user record lives (10 minutes in Redis) and than an unwrapped key stays in memory (5)."""


async def rewrap_posts(svc: Services, run: Run) -> None:
    """Rewrap every post, image and sealed email not under its owner's current key version, then destroy superseded
    user key versions nothing uses (``rewrap_posts``)."""
    await rewrap_posts_of(svc, run, user_id=None)
    await rewrap_media_of(svc, run, user_id=None)
    await _rewrap_emails(svc, run, user_id=None)
    await prune_user_keys(svc, run, user_id=None)


async def rewrap_posts_of(svc: Services, run: Run, *, user_id: int | None) -> None:
    """Rewrap the data keys of the posts (of ``user_id``, or everyone's) whose key version is not their author's
    current one, in chunks, with compare-and-set on (id, revision, key version, body)."""
    part = f"posts-{user_id}" if user_id is not None else "posts"
    async with svc.db() as session:
        total = await store.count_posts_behind(session, user_id)
    run.done = 0
    await run.progress(0, total)
    unreadable: set[int] = set()
    for _ in range(1 if run.dry_run else batch.PASSES):
        before = run.changed.get("posts_rewrapped", 0)
        after = await run.cursor(part)
        while rows := await _behind_chunk(svc, user_id, after):
            after = rows[-1].id
            await _rewrap_post_rows(svc, run, rows, unreadable)
            await run.advance(after, part)
            await run.progress(run.done + len(rows))
        await run.finish(part)
        if run.changed.get("posts_rewrapped", 0) == before:
            break
    run.count("posts_unreadable", len(unreadable))


async def _behind_chunk(svc: Services, user_id: int | None, after: int | None) -> Sequence[Any]:
    """The next :data:`CHUNK` posts (of ``user_id``, or everyone's) with id above ``after`` not under their author's
    current key version, with that version as ``current``."""
    async with svc.db() as session:
        return await store.posts_behind(session, user_id, after=after, limit=batch.CHUNK)


async def _rewrap_post_rows(svc: Services, run: Run, rows: Sequence[Any], unreadable: set[int]) -> None:
    async with svc.db() as session:
        keys = await svc.keys.get_many(
            session, {(r.author_id, r.key_version) for r in rows} | {(r.author_id, r.current) for r in rows}
        )
    writes: list[tuple[Any, dict[str, Any]]] = []
    for row in rows:
        old, new = keys.get((row.author_id, row.key_version)), keys.get((row.author_id, row.current))
        values = _rewrapped_post(row, old, new) if old is not None and new is not None else None
        if values is None:
            if row.id not in unreadable:
                log.warning("post %s cannot be rewrapped (its key is gone or does not open it)", row.id)
            unreadable.add(row.id)
            continue
        writes.append((row, values))
    await _write_posts(svc, run, writes, "posts_rewrapped")


def _rewrapped_post(row: Any, old: UserKey, new: UserKey) -> dict[str, Any] | None:
    try:
        body = rewrap(row.body, _ctx("body", row), old, new).data
        cw = rewrap(row.cw, _ctx("cw", row), old, new).data if row.cw is not None else None
    except InvalidToken:
        return None
    return {"body": body, "cw": cw, "key_version": new.version}


async def _write_posts(svc: Services, run: Run, writes: Sequence[tuple[Any, dict[str, Any]]], what: str) -> None:
    """Write each post's new values if the row is still what was read; drop the stale cache keys after the commit."""
    if run.dry_run:
        run.count(what, len(writes))
        return
    changed: list[int] = []
    async with svc.db.begin() as session:
        for row, values in writes:
            if await store.update_post_if_unchanged(
                session, row.id, values, revision=row.revision, key_version=row.key_version, body=row.body
            ):
                changed.append(row.id)
    run.count(what, len(changed))
    run.count("skipped_changed_meanwhile", len(writes) - len(changed))
    stale: list[tuple[Space, Any]] = [(space, i) for i in changed for space in (POSTS, *FRAME_SPACES)]
    await lookup.invalidate(svc, *stale)


async def rewrap_media_of(svc: Services, run: Run, *, user_id: int | None) -> None:
    """Rewrap the media (of ``user_id``, or everyone's) not under its owner's current key version: each file's data
    key first, then the row's alt text and blurhash with compare-and-set (a row changed meanwhile is taken by the
    next run; its files, which say their own version, are read either way)."""
    part = f"media-{user_id}" if user_id is not None else "media"
    if run.dry_run:
        async with svc.db() as session:
            run.count("media_rewrapped", await media_store.count_behind(session, user_id))
        return
    after = await run.cursor(part) or 0
    while True:
        async with svc.db() as session:
            rows = await media_store.behind(session, user_id, after=after, limit=batch.CHUNK)
        if not rows:
            break
        for row in rows:
            await _rewrap_media_row(svc, run, row)
        after = rows[-1].id
        await run.advance(after, part)
    await run.finish(part)


async def _rewrap_media_row(svc: Services, run: Run, row: Any) -> None:
    async with svc.db() as session:
        found = await store.key_versions_of(session, row.user_id)
        keys = await svc.keys.get_many(session, {(row.user_id, v) for v in found})
    by_version = {version: key for (_, version), key in keys.items()}
    new, old = by_version.get(row.current), by_version.get(row.key_version)
    try:
        if new is None or old is None:
            raise InvalidToken
        run.count("media_files_rewrapped", await media.rewrap_files(svc, row, by_version, new))
        values = media.rewrapped_fields(row, old, new)
    except InvalidToken:
        log.warning("media %s cannot be rewrapped (its key is gone or does not open it)", row.id)
        run.count("media_unreadable")
        return
    async with svc.db.begin() as session:
        written = await media_store.rekey_if_unchanged(
            session, row.id, key_version=row.key_version, revision=row.revision, values=values
        )
    run.count("media_rewrapped" if written else "skipped_changed_meanwhile")
    if written and row.post_id is not None:
        await lookup.invalidate(svc, (POSTS, row.post_id))  # its record holds the alt text and blurhash as sealed


async def _rewrap_emails(svc: Services, run: Run, *, user_id: int | None) -> None:
    """Rewrap sealed emails not under their user's current key (an email saved by a request that read the user
    before a rotation)."""
    part = f"emails-{user_id}" if user_id is not None else "emails"
    after = await run.cursor(part)
    while True:
        async with svc.db() as session:
            rows = await store.sealed_emails(session, user_id, after=after, limit=batch.CHUNK)
        if not rows:
            break
        after = rows[-1].id
        for row in rows:
            if _key_version_of(row.email_sealed) not in (None, row.key_version):
                await _rewrap_email(svc, run, row)
        await run.advance(after, part)
    await run.finish(part)


async def _rewrap_email(svc: Services, run: Run, row: Any) -> None:
    if run.dry_run:
        run.count("emails_rewrapped")
        return
    async with svc.db.begin() as session:
        key = await svc.keys.get(session, row.id, row.key_version)
        email = await _rewrapped_email(svc, session, run, row.id, row.email_sealed, key)
        if email == row.email_sealed:
            return
        written = await store.update_email_if_unchanged(
            session, row.id, key_version=row.key_version, expected=row.email_sealed, email_sealed=email
        )
    run.count("emails_rewrapped", int(written))


async def _rewrapped_email(
    svc: Services, session: Any, run: Run, user_id: int, blob: bytes | None, key: UserKey
) -> bytes | None:
    """``blob`` (a sealed email) wrapped under ``key``, or unchanged if it is already or cannot be."""
    if blob is None:
        return None
    try:
        sealed = Sealed(blob)
        if sealed.key_version == key.version:
            return blob
        old = await svc.keys.get(session, user_id, sealed.key_version)
        return rewrap(sealed, FieldContext("email", user_id, user_id, 0), old, key).data
    except (InvalidToken, NotFound):
        log.warning("the email of user %s does not open; left as it is", user_id)
        run.count("emails_unreadable")
        return blob


def _key_version_of(blob: bytes) -> int | None:
    try:
        return Sealed(blob).key_version
    except InvalidToken:
        return None


async def prune_user_keys(
    svc: Services, run: Run, *, user_id: int | None = None, grace: timedelta | None = None
) -> None:
    """Destroy user key versions older than their user's current one that no post and no email uses, once the
    current version is older than ``grace`` (default :data:`PRUNE_GRACE`)."""
    grace = PRUNE_GRACE if grace is None else grace
    async with svc.db() as session:
        rows = await store.unused_superseded_keys(session, current_before=now() - grace, user_id=user_id)
    doomed = [
        (r.user_id, r.version) for r in rows if r.email_sealed is None or _key_version_of(r.email_sealed) != r.version
    ]
    if run.dry_run or not doomed:
        run.count("user_keys_destroyed", len(doomed))
        return
    destroyed: dict[int, list[int]] = {}
    for start in range(0, len(doomed), batch.CHUNK):
        async with svc.db.begin() as session:
            for uid, version in doomed[start : start + batch.CHUNK]:
                if await store.delete_unused_key(session, uid, version):
                    destroyed.setdefault(uid, []).append(version)
        for uid, versions in destroyed.items():
            await lookup.forget_user_keys(svc, uid, versions)
        run.count("user_keys_destroyed", sum(len(v) for v in destroyed.values()))
        destroyed.clear()


def _ctx(field: str, row: Any) -> FieldContext:
    return FieldContext(field, row.id, row.author_id, row.revision)
