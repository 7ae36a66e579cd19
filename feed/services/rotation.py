"""Batch-encrypt jobs: root key rotation, user key rotation and re-encryption to the current Sealed format.

Every job here is a maintenance job (``feed.services.jobs``): it takes ids and numbers only, works in chunks of
:data:`CHUNK` rows with a checkpoint after each committed chunk (a run stopped half way goes on from there), reports
progress, changes nothing in a dry run, and finds nothing to do when run again after it finished. Each row is
written with a compare-and-set on what the job read (id, revision, key version and the blob itself), so a
concurrent edit, delete or erasure wins and the row is skipped; the stale cache keys of the rows written are
dropped after each chunk's commit. Decrypted text exists only while :func:`reencrypt_posts` re-seals a post, in
this process's memory.

**Root key rotation** (``cipherfeed keys rotate``). Processes read the root key ring once, at start-up, so the
ring changes in two steps, each followed by a rolling restart of every process (``serve`` and ``worker``):

1. *add*: a new version joins the ring as decrypt-only. After the restart every process can open user keys
   wrapped under it, while every process still wraps new keys under the old primary.
2. *promote*: the new version becomes the primary and :func:`rewrap_user_keys` rewraps every user key under it.
   Processes not yet restarted keep wrapping new keys under the old version; the job sweeps until none are left,
   and ``keys retire`` refuses while any row uses the old version (run ``jobs run rewrap_user_keys`` again after
   the restart). Then *retire* removes the old version from the ring (and restart again).

Promoting before every process knows the new version would hide the users whose keys were rewrapped from the
processes that do not (their posts would vanish from pages until a restart); ``keys rotate --one-step`` does both
steps at once, for when no other process runs.

**User key rotation** (:func:`user_rotation` for one user, :func:`rotate_user_keys` for all). For each user, one
transaction adds a new key version (wrapped under the root primary), makes it the user's current version
(``users.key_version``, which new posts and edits seal under from then on) and rewraps the sealed email under it;
then the user's posts are rewrapped (:func:`rewrap_posts_of`): each data key unwrapped with the old user key and
wrapped with the new one, ciphertext untouched. The rotation of one user is named by the version it rotates from,
the rotation of all users by its start time (kept in ``job_cursors``): either one run again goes on with the same
rotation or, finished, finds nothing to do. Old versions stay in ``user_keys`` until :func:`prune_user_keys`
destroys those no row uses any more, at least :data:`PRUNE_GRACE` after they were superseded: until then a request
that read its user before the rotation (a cached record) may still seal under the old version, which the next pass
(or ``jobs run rewrap_posts``) rewraps.

**Format re-encryption** (:func:`reencrypt_posts`). Posts whose body or content warning is sealed in a format older
than the one ``crypto`` writes (``crypto.sealed.FORMAT_VERSION``) are opened and sealed again under a new data key,
same user key version and revision. There is only format 1 today: the job finds nothing and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from crypto import FieldContext, InvalidToken, RootKeyRing, Sealed, UserKey, open_fields, rewrap, seal_fields
from crypto import sealed as sealed_format
from feed.cache import FRAMES, POSTS, USER_KEYS, USERS, Space
from feed.errors import NotFound
from feed.services import lookup
from feed.services.context import Services, now
from feed.services.jobs import Maintenance, Run
from feed.storage.tables import posts, user_keys, users

log = logging.getLogger(__name__)

CHUNK = 200
"""Rows per transaction and checkpoint."""
PASSES = 3
"""Full passes at most per run: a pass after the first picks up rows written behind the cursor meanwhile (by a
process that had not heard of the new version yet); a pass that changes nothing ends the run."""
PRUNE_GRACE = timedelta(minutes=15)
"""How long a superseded user key version is kept after the rotation that superseded it, even when no row uses it:
longer than any cached user record lives (10 minutes in Redis) and than an unwrapped key stays in memory (5)."""


# -- root key rotation


def next_ring(ring: RootKeyRing, *, one_step: bool = False) -> tuple[RootKeyRing, str]:
    """The ring after the next step of a root key rotation, and the step: ``"add"`` (a new decrypt-only version)
    or ``"promote"`` (a version added earlier, or with ``one_step`` a new one, becomes the primary).

    A version above the primary is one added and not yet promoted: it is promoted rather than another one added.
    """
    pending = [v for v in ring.versions if v > ring.primary]
    if pending:
        return ring.promote(max(pending)), "promote"
    added = ring.with_new_version()
    if not one_step:
        return added, "add"
    return added.promote(max(added.versions)), "promote"


async def rewrap_user_keys(svc: Services, run: Run) -> None:
    """Rewrap every user key not wrapped under the root key ring's primary (``rewrap_user_keys``)."""
    ring = svc.keys.ring
    primary = ring.primary
    async with svc.db() as session:
        total = int(await session.scalar(_count(user_keys, user_keys.c.root_version != primary)) or 0)
    await run.progress(0, total)
    unreadable: set[tuple[int, int]] = set()
    for _ in range(1 if run.dry_run else PASSES):
        before = run.changed.get("user_keys_rewrapped", 0)
        after = await run.cursor()
        while rows := await _user_keys_chunk(svc, primary, after):
            after = rows[-1].user_id
            await _rewrap_user_key_rows(svc, run, ring, rows, unreadable)
            await run.advance(after)
            await run.progress(run.done + len(rows))
        await run.finish()
        if run.changed.get("user_keys_rewrapped", 0) == before:
            break
    run.count("user_keys_unreadable", len(unreadable))


async def _rewrap_user_key_rows(
    svc: Services, run: Run, ring: RootKeyRing, rows: Sequence[Any], unreadable: set[tuple[int, int]]
) -> None:
    writes: list[tuple[Any, bytes]] = []
    for row in rows:
        try:
            key = ring.unwrap_user_key(row.wrapped, user_id=row.user_id, version=row.version)
        except InvalidToken:
            if (row.user_id, row.version) not in unreadable:
                log.warning("user key %s v%s does not unwrap; left as it is", row.user_id, row.version)
            unreadable.add((row.user_id, row.version))
            continue
        writes.append((row, ring.wrap_user_key(key)))
    if run.dry_run:
        run.count("user_keys_rewrapped", len(writes))
        return
    changed: list[tuple[int, int]] = []
    async with svc.db.begin() as session:
        for row, wrapped in writes:
            result = await session.execute(
                user_keys.update()
                .where(
                    user_keys.c.user_id == row.user_id,
                    user_keys.c.version == row.version,
                    user_keys.c.wrapped == row.wrapped,
                )
                .values(wrapped=wrapped, root_version=ring.primary)
            )
            if _rowcount(result):
                changed.append((row.user_id, row.version))
    run.count("user_keys_rewrapped", len(changed))
    run.count("skipped_changed_meanwhile", len(writes) - len(changed))
    # The unwrapped keys stay valid (a root rotation does not change them); the cached wrapped blobs are stale.
    await lookup.invalidate(svc, *((USER_KEYS, lookup.key_name(u, v)) for u, v in changed))


async def _user_keys_chunk(svc: Services, primary: int, after: int | None) -> Sequence[Any]:
    """The user keys not under ``primary`` of the next :data:`CHUNK` users with id above ``after``."""
    pending = user_keys.c.root_version != primary
    query = sa.select(user_keys.c.user_id).where(pending).distinct().order_by(user_keys.c.user_id).limit(CHUNK)
    if after is not None:
        query = query.where(user_keys.c.user_id > after)
    async with svc.db() as session:
        ids = list(await session.scalars(query))
        if not ids:
            return []
        rows = await session.execute(
            sa.select(user_keys.c.user_id, user_keys.c.version, user_keys.c.wrapped)
            .where(user_keys.c.user_id.in_(ids), pending)
            .order_by(user_keys.c.user_id, user_keys.c.version)
        )
        return rows.all()


async def not_under(svc: Services, primary: int) -> int:
    """How many user keys a root key version other than ``primary`` wraps (what ``rewrap_user_keys`` would do)."""
    async with svc.db() as session:
        return int(await session.scalar(_count(user_keys, user_keys.c.root_version != primary)) or 0)


async def root_version_use(svc: Services, version: int) -> int:
    """How many user keys root key ``version`` wraps (a version is retired only at 0)."""
    async with svc.db() as session:
        return int(await session.scalar(_count(user_keys, user_keys.c.root_version == version)) or 0)


# -- user key rotation


async def rotate_user(svc: Services, run: Run, user_id: int, from_version: int) -> int | None:
    """Give ``user_id`` a new key version if their current one is still ``from_version``, and rewrap their email.

    Returns the version now current (None if the user or their current key is gone). Rotating again with the same
    ``from_version`` does nothing, so a job that stopped after this step can run again.
    """
    for _ in range(3):
        try:
            return await _rotate_user_once(svc, run, user_id, from_version)
        except IntegrityError:  # another rotation added the same version first: look again
            continue
    raise RuntimeError(f"user {user_id}: the key version kept changing")


async def _rotate_user_once(svc: Services, run: Run, user_id: int, from_version: int) -> int | None:
    if run.dry_run:  # what would happen, read without taking the row's lock
        async with svc.db() as session:
            row = await _user_for_rotation(session, user_id, lock=False)
            if row is None or row.key_version != from_version:
                return None if row is None else int(row.key_version)
            latest = await _latest_key_version(session, user_id)
        if latest is not None:
            run.count("user_keys_created")
        return None if latest is None else latest + 1
    async with svc.db.begin() as session:
        row = await _user_for_rotation(session, user_id, lock=True)
        if row is None or row.key_version != from_version:
            return None if row is None else int(row.key_version)
        latest = await _latest_key_version(session, user_id)
        if latest is None:  # shredded: nothing to rotate, nothing readable
            return None
        key = await svc.keys.create(session, user_id, latest + 1, now())
        email = await _rewrapped_email(svc, session, run, user_id, row.email_sealed, key)
        await session.execute(
            users.update()
            .where(users.c.id == user_id, users.c.key_version == from_version)
            .values(key_version=key.version, email_sealed=email)
        )
    run.count("user_keys_created")
    await lookup.invalidate(svc, (USERS, user_id))
    await lookup.forget_user_keys(svc, user_id, [from_version, key.version])
    return key.version


async def _user_for_rotation(session: Any, user_id: int, *, lock: bool) -> Any:
    query = sa.select(users.c.key_version, users.c.email_sealed).where(users.c.id == user_id)
    return (await session.execute(query.with_for_update() if lock else query)).first()


async def _latest_key_version(session: Any, user_id: int) -> int | None:
    latest = await session.scalar(sa.select(sa.func.max(user_keys.c.version)).where(user_keys.c.user_id == user_id))
    return None if latest is None else int(latest)


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


def user_rotation(user_id: int, from_version: int) -> Maintenance:
    """The job that rotates one user's key (if it is still ``from_version``) and rewraps their posts."""
    return Maintenance(
        "rotate_user_key",
        "a new key for one user, their posts rewrapped under it",
        partial(_rotate_one_user, user_id=user_id, from_version=from_version),
    )


async def _rotate_one_user(svc: Services, run: Run, *, user_id: int, from_version: int) -> None:
    version = await rotate_user(svc, run, user_id, from_version)
    if version is None:
        return
    if run.dry_run:
        await _count_behind(svc, run, user_id, version)
        return
    await rewrap_posts_of(svc, run, user_id=user_id)
    await _rewrap_emails(svc, run, user_id=user_id)
    await prune_user_keys(svc, run, user_id=user_id)


async def rotate_user_keys(svc: Services, run: Run, *, fresh: bool = False) -> None:
    """A new key version for every user whose current key is older than this rotation's start, then every post
    rewrapped (``rotate_user_keys``).

    The start is kept (in ``job_cursors``): a run that stopped goes on with the same rotation, and running again
    after it finished finds nothing to do. ``fresh`` starts a new rotation now (``keys rotate-user --all``) unless
    one stopped half way, which it finishes instead; the first run ever starts one too."""
    since_us = await run.cursor("since")
    if fresh and since_us is not None and await run.cursor("users") is None:
        since_us = None  # the last rotation finished: this is a new one
    if since_us is None:
        since = now()
        await run.advance(int(since.timestamp() * 1_000_000), "since")
    else:
        since = datetime.fromtimestamp(since_us / 1_000_000, UTC)
    async with svc.db() as session:
        total = int(await session.scalar(sa.select(sa.func.count()).select_from(users)) or 0)
    await run.progress(0, total)
    after = await run.cursor("users")
    while chunk := await _users_chunk(svc, after):
        after = chunk[-1].id
        due = [row for row in chunk if row.created_at < since]
        for row in due:
            await rotate_user(svc, run, row.id, row.key_version)
        if run.dry_run and due:
            query = _count(posts, posts.c.author_id.in_([row.id for row in due]))
            async with svc.db() as session:
                run.count("posts_rewrapped", int(await session.scalar(query) or 0))
        await run.advance(after, "users")
        await run.progress(run.done + len(chunk))
    if run.dry_run:  # and the posts a stopped run left behind
        async with svc.db() as session:
            behind = await session.scalar(sa.select(sa.func.count()).select_from(_behind(None).subquery()))
        run.count("posts_rewrapped", int(behind or 0))
    else:
        await rewrap_posts(svc, run)
    await run.finish("users")


def new_user_rotation() -> Maintenance:
    """``rotate_user_keys`` starting a new rotation now, instead of going on with (or finding done) the last one."""
    return Maintenance(
        "rotate_user_keys",
        "a new key for every user, their posts rewrapped under it",
        partial(rotate_user_keys, fresh=True),
    )


async def _users_chunk(svc: Services, after: int | None) -> Sequence[Any]:
    """Users with id above ``after`` and the creation time of their current key."""
    query = (
        sa.select(users.c.id, users.c.key_version, user_keys.c.created_at)
        .join(user_keys, sa.and_(user_keys.c.user_id == users.c.id, user_keys.c.version == users.c.key_version))
        .order_by(users.c.id)
        .limit(CHUNK)
    )
    if after is not None:
        query = query.where(users.c.id > after)
    async with svc.db() as session:
        return (await session.execute(query)).all()


async def _count_behind(svc: Services, run: Run, user_id: int, version: int) -> None:
    """In a dry run: how many of the user's posts a rotation to ``version`` would rewrap."""
    query = _count(posts, sa.and_(posts.c.author_id == user_id, posts.c.key_version != version))
    async with svc.db() as session:
        run.count("posts_rewrapped", int(await session.scalar(query) or 0))


# -- rewrapping posts under their author's current key


async def rewrap_posts(svc: Services, run: Run) -> None:
    """Rewrap every post (and sealed email) not under its author's current key version, then destroy superseded
    user key versions nothing uses (``rewrap_posts``)."""
    await rewrap_posts_of(svc, run, user_id=None)
    await _rewrap_emails(svc, run, user_id=None)
    await prune_user_keys(svc, run, user_id=None)


async def rewrap_posts_of(svc: Services, run: Run, *, user_id: int | None) -> None:
    """Rewrap the data keys of the posts (of ``user_id``, or everyone's) whose key version is not their author's
    current one, in chunks, with compare-and-set on (id, revision, key version, body)."""
    part = f"posts-{user_id}" if user_id is not None else "posts"
    async with svc.db() as session:
        total = int(await session.scalar(sa.select(sa.func.count()).select_from(_behind(user_id).subquery())) or 0)
    run.done = 0
    await run.progress(0, total)
    unreadable: set[int] = set()
    for _ in range(1 if run.dry_run else PASSES):
        before = run.changed.get("posts_rewrapped", 0)
        after = await run.cursor(part)
        while rows := await _posts_chunk(svc, _behind(user_id), after):
            after = rows[-1].id
            await _rewrap_post_rows(svc, run, rows, unreadable)
            await run.advance(after, part)
            await run.progress(run.done + len(rows))
        await run.finish(part)
        if run.changed.get("posts_rewrapped", 0) == before:
            break
    run.count("posts_unreadable", len(unreadable))


def _behind(user_id: int | None) -> sa.Select[Any]:
    """Posts not under their author's current key version, with that version as ``current``."""
    query = (
        sa.select(
            posts.c.id,
            posts.c.author_id,
            posts.c.revision,
            posts.c.key_version,
            posts.c.body,
            posts.c.cw,
            users.c.key_version.label("current"),
        )
        .join(users, users.c.id == posts.c.author_id)
        .where(posts.c.key_version != users.c.key_version)
    )
    return query.where(posts.c.author_id == user_id) if user_id is not None else query


async def _posts_chunk(svc: Services, query: sa.Select[Any], after: int | None) -> Sequence[Any]:
    if after is not None:
        query = query.where(posts.c.id > after)
    async with svc.db() as session:
        return list((await session.execute(query.order_by(posts.c.id).limit(CHUNK))).all())


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
            result = await session.execute(
                posts.update()
                .where(
                    posts.c.id == row.id,
                    posts.c.revision == row.revision,
                    posts.c.key_version == row.key_version,
                    posts.c.body == row.body,
                )
                .values(**values)
            )
            if _rowcount(result):
                changed.append(row.id)
    run.count(what, len(changed))
    run.count("skipped_changed_meanwhile", len(writes) - len(changed))
    stale: list[tuple[Space, Any]] = [(space, i) for i in changed for space in (POSTS, FRAMES)]
    await lookup.invalidate(svc, *stale)


async def _rewrap_emails(svc: Services, run: Run, *, user_id: int | None) -> None:
    """Rewrap sealed emails not under their user's current key (an email saved by a request that read the user
    before a rotation)."""
    part = f"emails-{user_id}" if user_id is not None else "emails"
    query = sa.select(users.c.id, users.c.key_version, users.c.email_sealed).where(users.c.email_sealed.is_not(None))
    if user_id is not None:
        query = query.where(users.c.id == user_id)
    after = await run.cursor(part)
    while True:
        page = query.where(users.c.id > after) if after is not None else query
        async with svc.db() as session:
            rows = (await session.execute(page.order_by(users.c.id).limit(CHUNK))).all()
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
        result = await session.execute(
            users.update()
            .where(
                users.c.id == row.id, users.c.key_version == row.key_version, users.c.email_sealed == row.email_sealed
            )
            .values(email_sealed=email)
        )
    run.count("emails_rewrapped", _rowcount(result))


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
    current = user_keys.alias("current")
    used = sa.exists().where(posts.c.author_id == user_keys.c.user_id, posts.c.key_version == user_keys.c.version)
    candidates = (
        sa.select(user_keys.c.user_id, user_keys.c.version, users.c.email_sealed)
        .join(users, users.c.id == user_keys.c.user_id)
        .join(current, sa.and_(current.c.user_id == users.c.id, current.c.version == users.c.key_version))
        .where(user_keys.c.version < users.c.key_version, current.c.created_at <= now() - grace, ~used)
        .order_by(user_keys.c.user_id, user_keys.c.version)
    )
    if user_id is not None:
        candidates = candidates.where(user_keys.c.user_id == user_id)
    async with svc.db() as session:
        rows = (await session.execute(candidates)).all()
    doomed = [
        (r.user_id, r.version) for r in rows if r.email_sealed is None or _key_version_of(r.email_sealed) != r.version
    ]
    if run.dry_run or not doomed:
        run.count("user_keys_destroyed", len(doomed))
        return
    destroyed: dict[int, list[int]] = {}
    for start in range(0, len(doomed), CHUNK):
        async with svc.db.begin() as session:
            for uid, version in doomed[start : start + CHUNK]:
                # Checked again in the statement: a post written under this version since the read keeps it.
                still_unused = ~sa.exists().where(posts.c.author_id == uid, posts.c.key_version == version)
                below_current = sa.select(users.c.key_version).where(users.c.id == uid).scalar_subquery()
                result = await session.execute(
                    user_keys.delete().where(
                        user_keys.c.user_id == uid,
                        user_keys.c.version == version,
                        user_keys.c.version < below_current,
                        still_unused,
                    )
                )
                if _rowcount(result):
                    destroyed.setdefault(uid, []).append(version)
        for uid, versions in destroyed.items():
            await lookup.forget_user_keys(svc, uid, versions)
        run.count("user_keys_destroyed", sum(len(v) for v in destroyed.values()))
        destroyed.clear()


# -- re-encryption to the current Sealed format


async def reencrypt_posts(svc: Services, run: Run) -> None:
    """Re-seal the posts whose body or content warning is in a format older than the one ``crypto`` writes
    (``reencrypt_posts``). With format 1 the only one there is, it finds nothing and changes nothing."""
    target = sealed_format.FORMAT_VERSION
    older = sa.bindparam("format", bytes([target]), type_=sa.LargeBinary)
    query = sa.select(
        posts.c.id, posts.c.author_id, posts.c.revision, posts.c.key_version, posts.c.body, posts.c.cw
    ).where(sa.or_(_format_byte(posts.c.body) < older, _format_byte(posts.c.cw) < older))
    async with svc.db() as session:
        total = int(await session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0)
    await run.progress(0, total)
    unreadable: set[int] = set()
    after = await run.cursor()
    while rows := await _posts_chunk(svc, query, after):
        after = rows[-1].id
        async with svc.db() as session:
            keys = await svc.keys.get_many(session, {(r.author_id, r.key_version) for r in rows})
        writes: list[tuple[Any, dict[str, Any]]] = []
        for row in rows:
            key = keys.get((row.author_id, row.key_version))
            values = _resealed_post(row, key) if key is not None else None
            if values is None:
                if row.id not in unreadable:
                    log.warning("post %s cannot be re-encrypted (its key is gone or does not open it)", row.id)
                unreadable.add(row.id)
                continue
            writes.append((row, values))
        await _write_posts(svc, run, writes, "posts_reencrypted")
        await run.advance(after)
        await run.progress(run.done + len(rows))
    await run.finish()
    run.count("posts_unreadable", len(unreadable))


def _format_byte(column: Any) -> Any:
    """The format version byte of a sealed column (the third byte), as a one-byte binary value."""
    # Literal positions, so that PostgreSQL sees the same expression in SELECT and GROUP BY.
    return sa.type_coerce(sa.func.substr(column, sa.literal_column("3"), sa.literal_column("1")), sa.LargeBinary)


def _resealed_post(row: Any, key: UserKey) -> dict[str, Any] | None:
    """The post's fields opened and sealed again in the current format under a new data key."""
    blobs = {"body": row.body} | ({"cw": row.cw} if row.cw is not None else {})
    try:
        texts = open_fields(key, blobs, object_id=row.id, owner_id=row.author_id, revision=row.revision)
    except InvalidToken:
        return None
    sealed = seal_fields(key, texts, object_id=row.id, owner_id=row.author_id, revision=row.revision)
    return {"body": sealed["body"].data, "cw": sealed["cw"].data if "cw" in sealed else None}


# -- what ``keys status`` shows of posts


@dataclass(frozen=True, slots=True)
class PostKeyUse:
    by_key_version: dict[int, int]  # posts by the user key version that wraps their data key
    behind: int  # posts not under their author's current key version
    fields_by_format: dict[int, int]  # sealed post fields (bodies and content warnings) by Sealed format version
    user_keys_by_version: dict[int, int]
    superseded: int  # user key versions older than their user's current one (destroyed by prune_user_keys)


async def post_key_use(svc: Services) -> PostKeyUse:
    async with svc.db() as session:
        by_version = await _grouped(session, posts.c.key_version)
        behind = int(await session.scalar(sa.select(sa.func.count()).select_from(_behind(None).subquery())) or 0)
        formats: dict[int, int] = {}
        for column in (posts.c.body, posts.c.cw):
            byte = _format_byte(column)
            rows = await session.execute(sa.select(byte, sa.func.count()).where(column.is_not(None)).group_by(byte))
            for value, count in rows:
                version = bytes(value)[0] if value else 0
                formats[version] = formats.get(version, 0) + int(count)
        key_versions = await _grouped(session, user_keys.c.version)
        superseded = await session.scalar(
            sa.select(sa.func.count())
            .select_from(user_keys.join(users, users.c.id == user_keys.c.user_id))
            .where(user_keys.c.version < users.c.key_version)
        )
    return PostKeyUse(by_version, behind, formats, key_versions, int(superseded or 0))


async def _grouped(session: Any, column: Any) -> dict[int, int]:
    rows = await session.execute(sa.select(column, sa.func.count()).group_by(column))
    return {int(v): int(n) for v, n in rows}


# -- helpers


def _ctx(field: str, row: Any) -> FieldContext:
    return FieldContext(field, row.id, row.author_id, row.revision)


def _count(table: sa.Table, where: Any) -> sa.Select[Any]:
    return sa.select(sa.func.count()).select_from(table).where(where)


def _rowcount(result: Any) -> int:
    return int(result.rowcount or 0)


JOBS = (
    Maintenance("rewrap_user_keys", "rewrap every user key under the root key ring's primary", rewrap_user_keys),
    Maintenance("rotate_user_keys", "a new key for every user, their posts rewrapped under it", rotate_user_keys),
    Maintenance(
        "rewrap_posts",
        "rewrap posts under their author's current key; destroy superseded user keys",
        rewrap_posts,
    ),
    Maintenance("reencrypt_posts", "re-encrypt posts sealed in an older format", reencrypt_posts),
)
"""By hand only (``cipherfeed jobs run NAME``, ``cipherfeed keys ...``): a rotation is an operator's decision."""
