"""Email indexes recomputed under the root key ring's primary (``reindex_emails``, and the second part of
``rewrap_user_keys``): after a root key rotation, and once for the rows whose index was keyed from the server
secret (before the index moved to the root key ring).

Only indexes keyed from an older version than this process's primary are taken (versions only grow), so a process
that has not heard of a promotion yet never moves indexes back. Nothing is left that would hold a version in use
for ever: an index whose address cannot be opened any more (its key is gone), or that equals another account's (the
same address saved twice under different server secrets, before 0008), is dropped, with a warning naming the user
id. The sealed address stays; the other account still holds the address, and one that cannot be opened cannot be
shown or checked anyway.
"""

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
    """Recompute every email index keyed from an older root key version than the primary, or from the secret."""
    primary = svc.keys.ring.primary
    async with svc.db() as session:
        total = await store.count_email_indexes_not_under(session, primary)
    await run.progress(run.done, (run.total or 0) + total)
    for _ in range(1 if run.dry_run else batch.PASSES):
        before = sum(run.changed.get(what, 0) for what in _WRITES)
        after = None if run.dry_run else await run.cursor(PART)
        from_start = after is None
        while rows := await _chunk(svc, primary, after):
            after = rows[-1].id
            await _reindex(svc, run, primary, rows)
            await run.advance(after, PART)
            await run.progress(run.done + len(rows))
        await run.finish(PART)
        if from_start and sum(run.changed.get(what, 0) for what in _WRITES) == before:
            break  # a whole pass found nothing (one resumed from a checkpoint had not seen the rows below it)


_WRITES = ("email_indexes_recomputed", "email_indexes_dropped")


async def _chunk(svc: Services, primary: int, after: int | None) -> Sequence[Any]:
    async with svc.db() as session:
        return await store.email_indexes_not_under(session, primary, after=after, limit=batch.CHUNK)


async def _reindex(svc: Services, run: Run, primary: int, rows: Sequence[Any]) -> None:
    async with svc.db() as session:
        keys = await svc.keys.get_many(session, {(r.id, v) for r in rows if (v := _key_version(r.email_sealed))})
    writes: list[tuple[Any, bytes | None]] = []  # None: drop the index (its address does not open)
    for row in rows:
        address = _address(row, keys.get((row.id, _key_version(row.email_sealed) or 0)))
        if address is None:
            log.warning("the email of user %s does not open; its index is dropped", row.id)
        index = None if address is None else svc.keys.ring.blind_index(email_index.PURPOSE, address, version=primary)
        writes.append((row, index))
    if run.dry_run:
        run.count("email_indexes_recomputed", sum(1 for _, index in writes if index is not None))
        run.count("email_indexes_dropped", sum(1 for _, index in writes if index is None))
        return
    counts = dict.fromkeys(("email_indexes_recomputed", "email_indexes_dropped", "email_indexes_changed_meanwhile"), 0)
    async with svc.db.begin() as session:
        for row, index in writes:
            counts[await _write(session, row, index, primary)] += 1
    for what, n in counts.items():
        run.count(what, n)


async def _write(session: Any, row: Any, index: bytes | None, primary: int) -> str:
    """Write one row's new index (compare-and-set on the index and sealed address read); what happened."""
    if index is not None:
        try:
            async with session.begin_nested():
                written = await store.replace_email_index(
                    session, row.id, expected=row.email_index, email_sealed=row.email_sealed, index=index,
                    root_version=primary,
                )  # fmt: skip
            return "email_indexes_recomputed" if written else "email_indexes_changed_meanwhile"
        except IntegrityError:
            log.warning("the email index of user %s equals another account's; it is dropped", row.id)
    dropped = await store.clear_email_index(session, row.id, expected=row.email_index)
    return "email_indexes_dropped" if dropped else "email_indexes_changed_meanwhile"


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
