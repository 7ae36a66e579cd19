"""Format re-encryption: posts sealed in an older Sealed format sealed again in the current one.

Posts whose body or content warning is sealed in a format older than the one ``crypto`` writes
(``crypto.sealed.FORMAT_VERSION``) are opened and sealed again under a new data key, same user key version and
revision. There is only format 1 today: the job finds nothing and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from crypto import InvalidToken, UserKey, open_fields, seal_fields
from crypto import sealed as sealed_format
from feed.services.context import Services
from feed.services.jobs import Run
from feed.services.rotation import batch
from feed.services.rotation.rewrap import _write_posts
from feed.storage import keys as store

log = logging.getLogger(__name__)


async def reencrypt_posts(svc: Services, run: Run) -> None:
    """Re-seal the posts whose body or content warning is in a format older than the one ``crypto`` writes
    (``reencrypt_posts``). With format 1 the only one there is, it finds nothing and changes nothing."""
    target = sealed_format.FORMAT_VERSION
    async with svc.db() as session:
        total = await store.count_posts_in_format_below(session, target)
    await run.progress(0, total)
    unreadable: set[int] = set()
    after = await run.cursor()
    while rows := await _older_chunk(svc, target, after):
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


async def _older_chunk(svc: Services, target: int, after: int | None) -> Sequence[Any]:
    """The next :data:`CHUNK` posts with id above ``after`` with a field sealed in a format older than ``target``."""
    async with svc.db() as session:
        return await store.posts_in_format_below(session, target, after=after, limit=batch.CHUNK)


def _resealed_post(row: Any, key: UserKey) -> dict[str, Any] | None:
    """The post's fields opened and sealed again in the current format under a new data key."""
    blobs = {"body": row.body} | ({"cw": row.cw} if row.cw is not None else {})
    try:
        texts = open_fields(key, blobs, object_id=row.id, owner_id=row.author_id, revision=row.revision)
    except InvalidToken:
        return None
    sealed = seal_fields(key, texts, object_id=row.id, owner_id=row.author_id, revision=row.revision)
    return {"body": sealed["body"].data, "cw": sealed["cw"].data if "cw" in sealed else None}
