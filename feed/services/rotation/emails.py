"""Email indexes recomputed under the root key ring's primary (``reindex_emails``, and the second part of
``rewrap_user_keys``): after a root key rotation, and once for the rows whose index was keyed from the server
secret (before the index moved to the root key ring)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from crypto import FieldContext, InvalidToken, Sealed, UserKey, open_field
from feed.services import email_index
from feed.services.context import Services
from feed.services.jobs import Run
from feed.services.rotation import batch
from feed.storage import keys as store

log = logging.getLogger(__name__)

PART = "email-indexes"


async def reindex_emails(svc: Services, run: Run) -> None:
    """Recompute every email index not keyed from the primary root key version."""
    primary = svc.keys.ring.primary
    async with svc.db() as session:
        total = await store.count_email_indexes_not_under(session, primary)
    await run.progress(run.done, (run.total or 0) + total)
    unreadable: set[int] = set()
    for _ in range(1 if run.dry_run else batch.PASSES):
        before = run.changed.get("email_indexes_recomputed", 0)
        after = await run.cursor(PART)
        while rows := await _chunk(svc, primary, after):
            after = rows[-1].id
            await _reindex(svc, run, primary, rows, unreadable)
            await run.advance(after, PART)
            await run.progress(run.done + len(rows))
        await run.finish(PART)
        if run.changed.get("email_indexes_recomputed", 0) == before:
            break
    run.count("emails_unreadable", len(unreadable))


async def _chunk(svc: Services, primary: int, after: int | None) -> Sequence[Any]:
    async with svc.db() as session:
        return await store.email_indexes_not_under(session, primary, after=after, limit=batch.CHUNK)


async def _reindex(svc: Services, run: Run, primary: int, rows: Sequence[Any], unreadable: set[int]) -> None:
    async with svc.db() as session:
        keys = await svc.keys.get_many(session, {(r.id, v) for r in rows if (v := _key_version(r.email_sealed))})
    writes: list[tuple[Any, bytes]] = []
    for row in rows:
        address = _address(row, keys.get((row.id, _key_version(row.email_sealed) or 0)))
        if address is None:
            if row.id not in unreadable:
                log.warning("the email of user %s does not open; its index is left as it is", row.id)
            unreadable.add(row.id)
            continue
        writes.append((row, svc.keys.ring.blind_index(email_index.PURPOSE, address, version=primary)))
    if run.dry_run:
        run.count("email_indexes_recomputed", len(writes))
        return
    written = clashing = 0
    async with svc.db.begin() as session:
        for row, index in writes:
            try:
                async with session.begin_nested():
                    written += await store.replace_email_index(
                        session, row.id, expected=row.email_index, email_sealed=row.email_sealed, index=index,
                        root_version=primary,
                    )  # fmt: skip
            except IntegrityError:  # two accounts with one address, from before uniqueness held: left for a person
                log.warning("the email index of user %s equals another account's; left as it is", row.id)
                clashing += 1
    run.count("email_indexes_recomputed", written)
    run.count("email_indexes_clashing", clashing)
    run.count("skipped_changed_meanwhile", len(writes) - written - clashing)


def _key_version(blob: bytes) -> int | None:
    try:
        return Sealed(blob).key_version
    except InvalidToken:
        return None


def _address(row: Any, key: UserKey | None) -> str | None:
    if key is None:
        return None
    try:
        return open_field(key, row.email_sealed, FieldContext("email", row.id, row.id, 0))
    except InvalidToken:
        return None
