"""The email blind index: a keyed HMAC of the normalised address, for uniqueness, without the address.

Its key is derived from the root key ring (``RootKeyRing.blind_index``), so it rotates with the ring and a copy of
the database without the root key cannot confirm a guessed address. Each row records the root key version its index
is keyed from (``users.email_index_version``); rows from before that have NULL and an index keyed from the server
secret, until ``reindex_emails`` (or ``rewrap_user_keys``) recomputes them under the primary.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from crypto import blind_index
from feed.services.context import Services
from feed.storage import users as store

PURPOSE = "email"


def index(svc: Services, address: str) -> tuple[bytes, int]:
    """``address``'s index under the primary root key version, and that version."""
    ring = svc.keys.ring
    return ring.blind_index(PURPOSE, address), ring.primary


def every_index(svc: Services, address: str) -> list[bytes]:
    """``address``'s index under every key a stored index may be keyed from: each root key version of the ring and
    the server secret (rows not yet reindexed)."""
    return [*svc.keys.ring.blind_indexes(PURPOSE, address).values(), blind_index(svc.secrets.secret_index_key, address)]


async def taken(svc: Services, session: AsyncSession, address: str, *, except_user: int | None = None) -> bool:
    """Whether another account has ``address``, under any key; holds the address's lock until the transaction ends
    (every process names it alike, whatever its ring), so that the write that follows cannot race another."""
    legacy = blind_index(svc.secrets.secret_index_key, address)
    await store.lock_email(session, int.from_bytes(legacy[:8], "big", signed=True))
    return await store.email_taken(session, every_index(svc, address), except_user=except_user)
