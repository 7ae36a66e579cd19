"""Root key rotation: the next key ring, and every user key rewrapped under its primary.

Processes read the root key ring once, at start-up, so the ring changes in two steps (``cipherfeed keys rotate``),
each followed by a rolling restart of every process (``serve`` and ``worker``):

1. *add*: a new version joins the ring as decrypt-only. After the restart every process can open user keys
   wrapped under it, while every process still wraps new keys under the old primary.
2. *promote*: the new version becomes the primary and :func:`rewrap_user_keys` rewraps every user key under it.
   Processes not yet restarted keep wrapping new keys under the old version; the job sweeps until none are left,
   and ``keys retire`` refuses while any row uses the old version (run ``jobs run rewrap_user_keys`` again after
   the restart). Then *retire* removes the old version from the ring (and restart again).

Promoting before every process knows the new version would hide the users whose keys were rewrapped from the
processes that do not (their posts would vanish from pages until a restart); ``keys rotate --one-step`` does both
steps at once, for when no other process runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from crypto import InvalidToken, RootKeyRing
from feed.cache import USER_KEYS
from feed.services import lookup
from feed.services.context import Services
from feed.services.jobs import Run
from feed.services.rotation import batch, emails
from feed.storage import keys as store

log = logging.getLogger(__name__)


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
    """Rewrap every user key not wrapped under the root key ring's primary, then recompute the email indexes not
    keyed from it (``rewrap_user_keys``)."""
    ring = svc.keys.ring
    primary = ring.primary
    async with svc.db() as session:
        total = await store.count_user_keys_not_under(session, primary)
    await run.progress(0, total)
    unreadable: set[tuple[int, int]] = set()
    for _ in range(1 if run.dry_run else batch.PASSES):
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
    await emails.reindex_emails(svc, run)


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
            if await store.replace_wrapped_key(
                session, row.user_id, row.version, expected=row.wrapped, wrapped=wrapped, root_version=ring.primary
            ):
                changed.append((row.user_id, row.version))
    run.count("user_keys_rewrapped", len(changed))
    run.count("skipped_changed_meanwhile", len(writes) - len(changed))
    # The unwrapped keys stay valid (a root rotation does not change them); the cached wrapped blobs are stale.
    await lookup.invalidate(svc, *((USER_KEYS, lookup.key_name(u, v)) for u, v in changed))


async def _user_keys_chunk(svc: Services, primary: int, after: int | None) -> Sequence[Any]:
    """The user keys not under ``primary`` of the next :data:`CHUNK` users with id above ``after``."""
    async with svc.db() as session:
        return await store.user_keys_not_under(session, primary, after=after, limit=batch.CHUNK)


async def not_under(svc: Services, primary: int) -> int:
    """How many user keys a root key version other than ``primary`` wraps, and email indexes another key keys (what
    ``rewrap_user_keys`` would do)."""
    async with svc.db() as session:
        return await store.count_user_keys_not_under(session, primary) + await store.count_email_indexes_not_under(
            session, primary
        )


async def root_version_use(svc: Services, version: int) -> int:
    """How many user keys root key ``version`` wraps and email indexes it keys (a version is retired only at 0)."""
    async with svc.db() as session:
        return await store.count_user_keys_under(session, version) + await store.count_email_indexes_under(
            session, version
        )
