"""Media attachments: an upload is sealed in the request and stored as it came; a job (``process_media``) makes it
into clean variants, sealed, and then deletes the upload.

Files in the store are sealed streams (:mod:`crypto.stream`) named ``<media id>/<variant>``: ``original`` (the
upload, until its job is done) and each of ``feed.media.images.VARIANTS``. Each is sealed for the context
(``media:<variant>``, media id, owner, 0) under a data key of its own, wrapped by the owner's user key at the
row's ``key_version``: erasing the owner (their keys destroyed) makes every file unreadable at once.

The upload is kept only until its variants exist: what is served, and what stays, is pixels alone (no metadata).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncSession

from crypto import FieldContext, InvalidToken, UserKey, open_field, rewrap, seal_fields
from crypto.stream import (
    ENVELOPE_SIZE,
    StreamOpener,
    key_version_of,
    open_bytes,
    open_envelope,
    rewrap_header,
    seal_stream,
)
from feed.errors import Forbidden, Invalid, NotFound
from feed.events import Effects, Job
from feed.ids import new_id
from feed.media import images
from feed.services import effects, timelines
from feed.services.context import Services, now
from feed.services.jobs import Maintenance, Run
from feed.services.models import KEEP, Keep, Media, User
from feed.services.text import normalize_text
from feed.storage import media as store
from feed.storage import users as user_store

log = logging.getLogger(__name__)

ORIGINAL = "original"
VARIANTS = tuple(images.VARIANTS)
MAX_DESCRIPTION = 1500  # characters of alt text, as Mastodon allows
MAX_ATTACHMENTS = 4  # images per post


def file_name(media_id: int, variant: str) -> str:
    return f"{media_id}/{variant}"


def file_context(media_id: int, owner_id: int, variant: str) -> FieldContext:
    return FieldContext(f"media:{variant}", media_id, owner_id, 0)


def _description(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = normalize_text(raw, field="description", label="The description", max_chars=MAX_DESCRIPTION,
                          allow_empty=True)  # fmt: skip
    return text or None


def parse_focus(raw: str | None) -> tuple[float, float] | None:
    """Mastodon's focal point, ``"x,y"`` with each in -1..1 (0,0 the middle); None when not given."""
    if raw is None or not raw.strip():
        return None
    try:
        x, y = (float(part) for part in raw.split(","))
    except ValueError:
        raise Invalid("Focus must be two numbers, x,y, each from -1 to 1", "focus") from None
    if not (-1.0 <= x <= 1.0 and -1.0 <= y <= 1.0):  # NaN fails this too
        raise Invalid("Focus must be two numbers, x,y, each from -1 to 1", "focus")
    return x, y


async def upload(
    svc: Services,
    user: User,
    data: bytes,
    *,
    description: str | None = None,
    focus: tuple[float, float] | None = None,
) -> Media:
    """Take an image file: checked for size and format from its header, sealed, stored, its job queued."""
    if not data:
        raise Invalid("The file is empty", "file")
    if len(data) > svc.media_max_bytes:
        raise Invalid(f"An image may be at most {svc.media_max_bytes // (1024 * 1024)} MB", "file")
    if images.sniff(data) is None:
        raise Invalid("Only JPEG, PNG, WebP, GIF and AVIF images can be attached", "file")
    text = _description(description)
    media_id = new_id()
    async with svc.db() as session:
        version = await user_store.current_key_version(session, user.id)
        if not version:
            raise Forbidden("This account no longer exists")
        key = await svc.keys.get(session, user.id, version)
    # The file before its row: a row always has its file; a file whose row never came is an orphan (cleanup).
    await svc.media.put(
        file_name(media_id, ORIGINAL), seal_stream(key, file_context(media_id, user.id, ORIGINAL), [data])
    )
    sealed = _seal(key, media_id, user.id, {"description": text} if text else {})
    caused = Effects(jobs=(Job("process_media", (media_id,)),))
    async with svc.db.begin() as session:
        await store.insert(
            session, id=media_id, user_id=user.id, state="processing", key_version=version,
            description=sealed.get("description"), size_bytes=len(data), created_at=now(),
            focus_x=(focus or (0.0, 0.0))[0], focus_y=(focus or (0.0, 0.0))[1],
        )  # fmt: skip
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    return Media(media_id, user.id, None, "processing", "image", None, None, {}, text, None, focus or (0.0, 0.0))


async def describe(
    svc: Services,
    user: User,
    media_id: int,
    *,
    description: str | Keep | None = KEEP,
    focus: tuple[float, float] | None = None,
) -> Media:
    """Change the alt text (sealed anew, at the next revision) or the focal point of one of the user's uploads that
    no post took yet (as in Mastodon, a post's images change with an edit of the post)."""
    async with svc.db.begin() as session:
        row = await store.get(session, media_id)
        if row is None or row.user_id != user.id or row.post_id is not None:
            raise NotFound()
        values: dict[str, Any] = {}
        if not isinstance(description, Keep):
            text = _description(description)
            key = await svc.keys.get(session, row.user_id, row.key_version)
            sealed = seal_fields(key, {"description": text}, object_id=media_id, owner_id=row.user_id,
                                 revision=row.revision + 1) if text else {}  # fmt: skip
            values |= {"description": sealed["description"].data if text else None, "revision": row.revision + 1}
        if focus is not None:
            values |= {"focus_x": focus[0], "focus_y": focus[1]}
        if values and not await store.describe(session, media_id, **values):
            raise NotFound()  # a post took it meanwhile
    return await get(svc, media_id, user)


async def discard(svc: Services, user: User, media_id: int) -> None:
    """Delete one of the user's uploads that no post took: its files, then its row."""
    async with svc.db() as session:
        row = await store.get(session, media_id)
    if row is None or row.user_id != user.id or row.post_id is not None:
        raise NotFound()
    async with svc.db.begin() as session:
        if not await store.delete_unattached(session, media_id):
            raise NotFound()  # a post took it meanwhile
    for variant in (ORIGINAL, *VARIANTS):
        await svc.media.delete(file_name(media_id, variant))


async def settled(svc: Services, media_id: int, user: User, within: float) -> Media:
    """The upload once its job has run (ready or failed), or as it is after ``within`` seconds."""
    deadline = anyio.current_time() + within
    delay = 0.02
    while True:
        found = await get(svc, media_id, user)
        if found.state != "processing" or anyio.current_time() >= deadline:
            return found
        await anyio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def check_ids(ids: Sequence[int]) -> list[int]:
    """The images a post is to have, in order: at most four, none twice."""
    ids = list(ids)
    if len(ids) > MAX_ATTACHMENTS:
        raise Invalid(f"A post can have at most {MAX_ATTACHMENTS} images", "media_ids")
    if len(set(ids)) != len(ids):
        raise Invalid("The same image is attached twice", "media_ids")
    return ids


async def take(session: AsyncSession, owner_id: int, post_id: int, ids: list[int]) -> None:
    """In the post's own transaction: ``ids`` (the owner's uploads, ready, taken by no other post) become the post's
    images, in this order; those it had and no longer lists are let go."""
    rows = {row.id: row for row in await store.for_update(session, ids)} if ids else {}
    for media_id in ids:
        row = rows.get(media_id)
        if row is None or row.user_id != owner_id or row.post_id not in (None, post_id):
            raise Invalid(f"Media {media_id} was not found", "media_ids")
        if row.state == "processing":
            raise Invalid("An image is still being processed; try again in a moment", "media_ids")
        if row.state == "failed":
            raise Invalid("An image could not be processed; remove it and upload it again", "media_ids")
    await store.attach(session, post_id, ids)


async def attached(session: AsyncSession, post_id: int) -> bool:
    return bool(await store.of_posts(session, [post_id]))


def _seal(key: UserKey, media_id: int, owner_id: int, fields: dict[str, str]) -> dict[str, bytes]:
    sealed = seal_fields(key, fields, object_id=media_id, owner_id=owner_id, revision=0)
    return {name: blob.data for name, blob in sealed.items()}


async def process(svc: Services, media_id: int) -> None:
    """The ``process_media`` job: the upload's variants, sealed and stored, then the upload deleted. Safe to run
    again: a row no longer waiting is left alone, and files are written whole under fixed names."""
    async with svc.db() as session:
        row = await store.get(session, media_id)
        if row is None or row.state != "processing":
            return
        try:
            key = await svc.keys.get(session, row.user_id, row.key_version)
        except NotFound:  # the owner was erased meanwhile: nothing can be made of it
            return
    original = file_name(media_id, ORIGINAL)
    size = await svc.media.size(original)
    try:
        if size is None:
            raise InvalidToken
        data = open_bytes(key, file_context(media_id, row.user_id, ORIGINAL), await svc.media.read(original, 0, size))
        done = await anyio.to_thread.run_sync(images.process, data)
    except (images.BadImage, InvalidToken):
        async with svc.db.begin() as session:
            await store.mark_failed(session, media_id, now())
        await svc.media.delete(original)
        log.info("media %s could not be made into an image", media_id)
        return
    del data
    for name, variant in done.variants.items():
        sealed = seal_stream(key, file_context(media_id, row.user_id, name), [variant.data])
        await svc.media.put(file_name(media_id, name), sealed)
    async with svc.db.begin() as session:
        await store.mark_ready(
            session,
            media_id,
            kind="gifv" if done.animated else "image",
            source_type=done.source_type,
            width=done.width,
            height=done.height,
            variants=json.dumps({name: [v.width, v.height] for name, v in done.variants.items()}),
            blurhash=_seal(key, media_id, row.user_id, {"blurhash": done.blurhash})["blurhash"],
            when=now(),
        )
    await svc.media.delete(original)


async def get(svc: Services, media_id: int, user: User) -> Media:
    """One of the user's own uploads (NotFound for anyone else's)."""
    async with svc.db() as session:
        row = await store.get(session, media_id)
        if row is None or row.user_id != user.id:
            raise NotFound()
        key = await svc.keys.get(session, row.user_id, row.key_version)
    return _view(row, key)


def _view(row: object, key: UserKey) -> Media:
    r: Any = row

    def opened(field: str, revision: int) -> str | None:
        blob = getattr(r, field)
        if blob is None:
            return None
        return open_field(key, bytes(blob), FieldContext(field, r.id, r.user_id, revision))

    sizes = {name: (int(w), int(h)) for name, (w, h) in json.loads(r.variants).items()} if r.variants else {}
    description, blurhash = opened("description", r.revision), opened("blurhash", 0)
    focus = (float(r.focus_x), float(r.focus_y))
    return Media(r.id, r.user_id, r.post_id, r.state, r.kind, r.width, r.height, sizes, description, blurhash, focus)


@dataclass(eq=False)
class OpenFile:
    """A variant of an attachment, opened for one reader: its plaintext size is proven (its last chunk opened), and
    :meth:`read` opens the chunks a byte range spans, one at a time."""

    svc: Services
    name: str
    size: int
    public: bool  # of a public or unlisted post: a shared cache may hold it (briefly, see feed.web.media)
    _opener: StreamOpener
    _chunks: int

    def __repr__(self) -> str:
        return f"OpenFile({self.name}, {self.size} bytes)"

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The plaintext bytes ``start`` (inclusive) to ``end`` (exclusive), chunk by chunk."""
        step = self._opener.chunk_size
        for index in range(start // step, (end - 1) // step + 1 if end > start else 0):
            offset, length = self._opener.span(index, self._chunks, self.size)
            sealed = await self.svc.media.read(self.name, offset, offset + length)
            plain = self._opener.open_chunk(index, sealed, index == self._chunks - 1)
            yield plain[max(0, start - index * step) : end - index * step]


async def open_variant(svc: Services, media_id: int, variant: str, viewer: User | None) -> OpenFile:
    """A variant for ``viewer``: NotFound unless the media is ready and they may see it (its owner, before it is
    attached; once attached, whoever may read its post). InvalidToken if its file does not open (tampered, cut
    short, or its owner erased)."""
    if variant not in VARIANTS:
        raise NotFound()
    async with svc.db() as session:
        row = await store.get(session, media_id)
    if row is None or row.state != "ready":
        raise NotFound()
    public = False
    if row.post_id is None:
        if viewer is None or viewer.id != row.user_id:
            raise NotFound()
    else:
        post = await timelines.readable(svc, row.post_id, viewer)
        if post is None:
            raise NotFound()
        public = post.visibility in ("public", "unlisted")
    name = file_name(media_id, variant)
    stored_size = await svc.media.size(name)
    if stored_size is None or stored_size < ENVELOPE_SIZE:
        raise NotFound()
    envelope = await svc.media.read(name, 0, ENVELOPE_SIZE)
    wanted = (row.user_id, key_version_of(envelope))  # a rotation rewraps each file before its row
    async with svc.db() as session:
        key = (await svc.keys.get_many(session, [wanted])).get(wanted)
    if key is None:  # the owner was erased: their media is unreadable
        raise NotFound()
    opener = open_envelope(key, file_context(media_id, row.user_id, variant), envelope)
    size, chunks = opener.layout(stored_size)
    offset, length = opener.span(chunks - 1, chunks, size)
    opener.open_chunk(chunks - 1, await svc.media.read(name, offset, offset + length), True)  # proves the size
    return OpenFile(svc, name, size, public, opener, chunks)


# -- key rotation


async def rewrap_files(svc: Services, row: Any, keys: Mapping[int, UserKey], new: UserKey) -> int:
    """Rewrap the data key of each of the media's files under ``new`` (``keys``: the owner's keys by version, for
    files under other versions); the chunks stay as they are. Each file says its own key version, so a rotation
    stopped half way leaves every file readable. Returns how many files were rewrapped; InvalidToken if one does
    not open."""
    rewrapped = 0
    for variant in (ORIGINAL, *VARIANTS):
        name = file_name(row.id, variant)
        size = await svc.media.size(name)
        if size is None:
            continue
        data = await svc.media.read(name, 0, size)
        version = key_version_of(data[:ENVELOPE_SIZE])
        if version == new.version:
            continue
        old = keys.get(version)
        if old is None:
            raise InvalidToken
        envelope = rewrap_header(data[:ENVELOPE_SIZE], file_context(row.id, row.user_id, variant), old, new)
        await svc.media.put(name, [envelope, data[ENVELOPE_SIZE:]])
        rewrapped += 1
    return rewrapped


def rewrapped_fields(row: Any, old: UserKey, new: UserKey) -> dict[str, Any]:
    """The row's alt text and blurhash rewrapped from ``old`` to ``new``, with the new ``key_version``."""
    values: dict[str, Any] = {"key_version": new.version}
    for field, revision in (("description", row.revision), ("blurhash", 0)):
        blob = getattr(row, field)
        if blob is not None:
            values[field] = rewrap(bytes(blob), FieldContext(field, row.id, row.user_id, revision), old, new).data
    return values


# -- cleanup

CHUNK = 500
UNATTACHED_DAYS = 1  # an upload no post took within this long is removed, and so is one that failed
ORPHAN_GRACE = timedelta(hours=1)  # a file without a row is removed once this old (an upload writes its file first)


async def remove(svc: Services, job: Run, ids: list[int]) -> None:
    """Remove media ``ids``: their files, then their rows (a run stopped between the two finds the rows again and
    finishes). In a dry run, count them only."""
    if job.dry_run:
        job.count("media", len(ids))
        return
    for media_id in ids:
        for variant in (ORIGINAL, *VARIANTS):
            await svc.media.delete(file_name(media_id, variant))
    async with svc.db.begin() as session:
        job.count("media", await store.delete(session, ids))


async def purge_media(svc: Services, job: Run) -> None:
    """Remove uploads no post took within a day (and failed ones), the media of deleted posts, and files the store
    holds for no media row (an upload cut off between its file and its row; a row gone with an erased account)."""
    cutoff = now() - timedelta(days=UNATTACHED_DAYS)
    async with svc.db() as session:
        total = await store.count_doomed(session, cutoff)
    await job.progress(0, total)
    after = await job.cursor("rows") or 0
    while True:
        async with svc.db() as session:
            ids = await store.doomed_after(session, after, CHUNK, cutoff)
        if not ids:
            break
        await remove(svc, job, ids)
        after = ids[-1]
        await job.advance(after, "rows")
        await job.progress(job.done + len(ids))
    await job.finish("rows")
    await _orphan_files(svc, job)


async def _orphan_files(svc: Services, job: Run) -> None:
    old_enough = now() - ORPHAN_GRACE
    batch: dict[int, list[str]] = {}

    async def settle() -> None:
        async with svc.db() as session:
            kept = await store.existing(session, list(batch))
        for media_id, names in batch.items():
            if media_id in kept:
                continue
            job.count("files", len(names))
            if not job.dry_run:
                for name in names:
                    await svc.media.delete(name)
        batch.clear()

    async for found in svc.media.files():
        head = found.name.partition("/")[0]
        if not head.isdigit() or found.modified > old_enough:
            continue  # not ours (the audit reports it), or an upload that may be getting its row now
        batch.setdefault(int(head), []).append(found.name)
        if len(batch) >= CHUNK:
            await settle()
    if batch:
        await settle()


JOBS = (
    Maintenance(
        "purge_media",
        "remove uploads never attached, media of deleted posts, and stored files of no media",
        purge_media,
        minute=frozenset({25}),
    ),
)
