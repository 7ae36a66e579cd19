"""Erasure: crypto-shredding an account.

:func:`erase` destroys every key of the user in one transaction, so from its commit on each post of theirs, in the
database, its backups (see below) and any cache, is ciphertext that nothing can open. The same transaction records
a receipt, ends their sessions and API tokens, and turns the account row into a tombstone: no key version
(:data:`ERASED`), a password hash that matches nothing, no email, no display name or bio. The tombstone cannot log
in and is shown nowhere (``accounts`` treats it as absent); it keeps the username taken until the
``purge_erased`` cleanup job (``feed.services.cleanup``) has removed the dead posts, likes, mentions and follows in
batches and, last, the row itself. Pages meanwhile leave the dead posts out (``timelines.views`` skips a post whose
author key is gone).

After the commit the caches are told (over the bus, so every process drops the keys it holds) and the user's
pending jobs are dropped.

**Per-user jobs.** A queued job about one user gets the key ``NAME:USER_ID`` (``rebuild_feed:42``): the queue then
runs at most one of them at a time, and :func:`drop_user_jobs` finds and drops it when the user is erased. A job that
was already running, or that the in-process runner holds, still runs: every per-user job must do nothing for an
erased user (whose keys are gone).

**Receipts.** ``erasure_receipts.subject`` is a keyed hash of the user id (HMAC-SHA256 under a key derived from the
server secret), so that a copy of the database cannot tell whose receipt it is, while an operator with the secret
and a user id can prove the erasure (:func:`receipts_for`). ``key_ids`` names the destroyed keys as
``v{version}@root{root version}``: not the user id, which would undo the keyed hash; the root versions say which
root keys must be retired before older backups, which still hold the wrapped user keys, become unreadable too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from feed.cache import PAGE_SPACES, Space
from feed.errors import Conflict, NotFound
from feed.events import merge
from feed.home_feeds import FeedsUnavailable
from feed.queue import Queue
from feed.redis_link import scan_keys
from feed.services import effects, lookup
from feed.services.context import Services, now
from feed.services.text import USERNAME_RE
from feed.storage import erasure as store
from feed.storage import users as user_store
from feed.storage.erasure import ERASED

log = logging.getLogger(__name__)

UNUSABLE_PASSWORD = "!erased"  # noqa: S105 - not an Argon2 hash: verifying anything against it fails
_RECEIPT_LABEL = b"cipherfeed:erasure-receipt"


@dataclass(frozen=True, slots=True)
class Receipt:
    """What :func:`erase` did."""

    id: int
    user_id: int
    username: str
    keys: tuple[tuple[int, int], ...]  # destroyed (version, root version)
    erased_at: datetime
    sessions: int  # browser sessions ended
    tokens: int  # API tokens revoked
    jobs: int  # pending jobs dropped


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    id: int
    key_ids: str
    erased_at: datetime


def is_erased(row: Any) -> bool:
    """Whether a user row or record (anything with ``key_version``) is an erased account's tombstone."""
    return bool(row.key_version == ERASED)


def subject(svc: Services, user_id: int) -> bytes:
    """The receipt's keyed hash of ``user_id``. Its key is derived from the server secret's email index key (itself
    derived from the server secret) under a label of its own, so the two never coincide; a new server secret
    orphans old receipts."""
    key = hmac.new(svc.secrets.secret_index_key, _RECEIPT_LABEL, hashlib.sha256).digest()
    return hmac.new(key, str(user_id).encode(), hashlib.sha256).digest()


def key_ids(keys: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"v{version}@root{root}" for version, root in sorted(keys))


async def erase_user(svc: Services, username: str) -> Receipt:
    """:func:`erase` by username (the operator's ``cipherfeed users delete NAME``)."""
    name = username.strip().lstrip("@").lower()
    if not USERNAME_RE.fullmatch(name):
        raise NotFound(f"no user named {username!r}")
    async with svc.db() as session:
        user_id = await store.user_id_by_username(session, name)
    if user_id is None:
        raise NotFound(f"no user named {username!r}")
    return await erase(svc, user_id)


async def erase(svc: Services, user_id: int) -> Receipt:
    """Crypto-shred the account: see the module docstring. Raises NotFound for no such user, Conflict if it is
    erased already."""
    when = now()
    async with svc.db.begin() as session:
        # Locked (PostgreSQL; SQLite's write transaction holds its one lock already): a concurrent key rotation
        # that adds a version must not slip in between reading the keys and deleting them.
        row = await store.lock_user(session, user_id)
        if row is None:
            raise NotFound("No such user")
        if is_erased(row):
            raise Conflict(f"@{row.username} is erased already; the purge_erased job removes what is left")
        destroyed = await store.delete_user_keys(session, user_id)
        await user_store.update_user(
            session,
            user_id,
            key_version=ERASED,
            password_hash=UNUSABLE_PASSWORD,
            email_index=None,
            email_index_version=None,
            email_sealed=None,
            display_name="",
            bio="",
            updated_at=when,
        )
        ended = await user_store.delete_other_sessions(session, user_id, keep=None)
        revoked = await store.delete_tokens(session, user_id)
        keys = tuple(sorted((int(k.version), int(k.root_version)) for k in destroyed))
        receipt_id = await store.insert_receipt(session, subject=subject(svc, user_id), key_ids=key_ids(keys), now=when)
        caused = merge(
            [
                effects.user_erased(user_id, [lookup.key_name(user_id, v) for v, _ in keys]),
                effects.sessions_ended(ended),
                effects.tokens_revoked(revoked),
            ]
        )
        await effects.record(session, caused)
    log.info("erased user %s: %d keys destroyed (receipt %s)", user_id, len(keys), receipt_id)
    await effects.committed(svc, caused)
    if svc.feeds is not None:
        try:
            await svc.feeds.drop([user_id])
        except FeedsUnavailable:
            pass  # vacuum_feeds drops it once the account row is purged
    await drop_page_blobs(svc)
    dropped = await drop_user_jobs(svc.queue, user_id)
    return Receipt(receipt_id, user_id, row.username, keys, when, len(ended), len(revoked), dropped)


async def drop_page_blobs(svc: Services) -> int:
    """Every viewer's page blob (``feed.web.page_blobs``), in this process and in Redis: the erased person's words
    may be in anyone's, sealed under the viewer's key. Each is invalidated (its generation counter raised), so a
    blob drawn before the erasure and stored after it is refused too. The other processes drop theirs when the
    erasure's outbox row tells them to forget the person. How many were in Redis."""
    for space in PAGE_SPACES:
        svc.cache.drop_space(space)
    link = svc.cache.link
    if link is None:
        return 0
    viewers: list[tuple[Space, int]] = []

    async def find(r: Any) -> None:
        for space in PAGE_SPACES:
            async for names in scan_keys(r, match=f"{space.key_prefix}*"):
                for name in names:
                    key = (name.decode() if isinstance(name, bytes) else str(name))[len(space.key_prefix) : -1]
                    if key.isdigit():
                        viewers.append((space, int(key)))

    await link.run(find)
    for start in range(0, len(viewers), 500):
        await svc.cache.invalidate(viewers[start : start + 500], broadcast=False)
    return len(viewers)


async def drop_user_jobs(queue: Queue, user_id: int) -> int:
    """Drop the waiting jobs keyed ``NAME:USER_ID`` (waiting, or deferred for a retry); how many went. A job a
    worker has taken already runs to its end, and finds the user's keys gone."""
    try:
        return await queue.drop_keyed(f":{user_id}")
    except ConnectionError as exc:
        # The erasure stands: a job that runs later finds the user's keys gone and does nothing.
        log.warning("pending jobs of an erased user not dropped: Redis unavailable (%s)", type(exc).__name__)
        return 0


async def receipts_for(svc: Services, user_id: int) -> list[ReceiptRow]:
    """The erasure receipts of ``user_id`` (found by its keyed hash), oldest first."""
    async with svc.db() as session:
        rows = await store.receipts(session, subject(svc, user_id))
    return [ReceiptRow(r.id, r.key_ids, r.erased_at) for r in rows]
