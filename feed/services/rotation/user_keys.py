"""User key rotation: a new key version for one user or for every user, their posts rewrapped under it.

For each user, one transaction adds a new key version (wrapped under the root primary), makes it the user's current
version (``users.key_version``, which new posts and edits seal under from then on) and rewraps the sealed email
under it; then the user's posts are rewrapped (:func:`~feed.services.rotation.rewrap.rewrap_posts_of`): each data
key unwrapped with the old user key and wrapped with the new one, ciphertext untouched. The rotation of one user
(:func:`user_rotation`) is named by the version it rotates from, the rotation of all users
(:func:`rotate_user_keys`) by its start time (kept in ``job_cursors``): either one run again goes on with the same
rotation or, finished, finds nothing to do. Old versions stay in ``user_keys`` until
:func:`~feed.services.rotation.rewrap.prune_user_keys` destroys those no row uses any more, at least
:data:`~feed.services.rotation.rewrap.PRUNE_GRACE` after they were superseded: until then a request that read its
user before the rotation (a cached record) may still seal under the old version, which the next pass (or ``jobs run
rewrap_posts``) rewraps.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError

from feed.cache import USERS
from feed.services import lookup
from feed.services.context import Services, now
from feed.services.jobs import Maintenance, Run
from feed.services.rotation import batch
from feed.services.rotation.rewrap import (
    _rewrap_emails,
    _rewrapped_email,
    prune_user_keys,
    rewrap_media_of,
    rewrap_posts,
    rewrap_posts_of,
)
from feed.storage import keys as store


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
            row = await store.get_user_for_rotation(session, user_id, lock=False)
            if row is None or row.key_version != from_version:
                return None if row is None else int(row.key_version)
            latest = await store.latest_key_version(session, user_id)
        if latest is not None:
            run.count("user_keys_created")
        return None if latest is None else latest + 1
    async with svc.db.begin() as session:
        row = await store.get_user_for_rotation(session, user_id, lock=True)
        if row is None or row.key_version != from_version:
            return None if row is None else int(row.key_version)
        latest = await store.latest_key_version(session, user_id)
        if latest is None:  # shredded: nothing to rotate, nothing readable
            return None
        key = await svc.keys.create(session, user_id, latest + 1, now())
        email = await _rewrapped_email(svc, session, run, user_id, row.email_sealed, key)
        await store.set_current_key(
            session, user_id, from_version=from_version, version=key.version, email_sealed=email
        )
    run.count("user_keys_created")
    await lookup.invalidate(svc, (USERS, user_id))
    await lookup.forget_user_keys(svc, user_id, [from_version, key.version])
    return key.version


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
    await rewrap_media_of(svc, run, user_id=user_id)
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
        total = await store.count_users(session)
    await run.progress(0, total)
    after = await run.cursor("users")
    while chunk := await _users_chunk(svc, after):
        after = chunk[-1].id
        due = [row for row in chunk if row.created_at < since]
        for row in due:
            await rotate_user(svc, run, row.id, row.key_version)
        if run.dry_run and due:
            async with svc.db() as session:
                run.count("posts_rewrapped", await store.count_posts_of(session, [row.id for row in due]))
        await run.advance(after, "users")
        await run.progress(run.done + len(chunk))
    if run.dry_run:  # and the posts a stopped run left behind
        async with svc.db() as session:
            behind = await store.count_posts_behind(session, None)
        run.count("posts_rewrapped", behind)
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
    async with svc.db() as session:
        return await store.users_with_current_key(session, after=after, limit=batch.CHUNK)


async def _count_behind(svc: Services, run: Run, user_id: int, version: int) -> None:
    """In a dry run: how many of the user's posts a rotation to ``version`` would rewrap."""
    async with svc.db() as session:
        run.count("posts_rewrapped", await store.count_posts_not_under(session, user_id, version))
