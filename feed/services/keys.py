"""User keys: created wrapped by the root key ring, unwrapped on demand and kept in process memory briefly.

Unwrapped keys never leave this process: they are not picklable (``crypto.UserKey``), never cached in Redis,
and expire from memory after ``ttl`` seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncSession

from crypto import InvalidToken, RootKeyRing, UserKey
from feed.errors import NotFound
from feed.storage import users as store


class KeyStore:
    def __init__(self, ring: RootKeyRing, *, ttl: float = 300.0, max_keys: int = 50_000) -> None:
        self.ring = ring
        self._memory: TTLCache[tuple[int, int], UserKey] = TTLCache(maxsize=max_keys, ttl=ttl)

    def use_ring(self, ring: RootKeyRing) -> None:
        """Wrap and unwrap with ``ring`` from now on (a step of a root key rotation, in this process).

        User keys already unwrapped stay: a root rotation rewraps them, it does not change them. New user keys are
        wrapped under ``ring.primary``."""
        self.ring = ring

    async def create(self, session: AsyncSession, user_id: int, version: int, now: datetime) -> UserKey:
        key = UserKey.generate(user_id, version)
        await store.insert_user_key(
            session,
            user_id=user_id,
            version=version,
            root_version=self.ring.primary,
            wrapped=self.ring.wrap_user_key(key),
            now=now,
        )
        return key  # not remembered here: the transaction may still roll back

    async def get(self, session: AsyncSession, user_id: int, version: int) -> UserKey:
        key = (await self.get_many(session, [(user_id, version)])).get((user_id, version))
        if key is None:
            raise NotFound("the key for this data is gone")
        return key

    async def get_many(self, session: AsyncSession, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], UserKey]:
        """Keys for every (user id, version), loading the missing ones in one query.

        A key that was shredded (or cannot be unwrapped) is absent from the result: its data is unreadable.
        """
        found: dict[tuple[int, int], UserKey] = {}
        missing: list[tuple[int, int]] = []
        for pair in set(pairs):
            key = self._memory.get(pair)
            if key is None:
                missing.append(pair)
            else:
                found[pair] = key
        if missing:
            found.update(self.open_many(await store.get_wrapped_keys(session, missing)))
        return found

    def open_many(self, wrapped: dict[tuple[int, int], bytes]) -> dict[tuple[int, int], UserKey]:
        """Unwrap the given wrapped keys (from the cache), reusing keys already in memory; bad blobs are left out."""
        out: dict[tuple[int, int], UserKey] = {}
        for pair, blob in wrapped.items():
            key = self._memory.get(pair)
            if key is None:
                try:
                    key = self.ring.unwrap_user_key(blob, user_id=pair[0], version=pair[1])
                except InvalidToken:
                    continue
                self._memory[pair] = key
            out[pair] = key
        return out

    def held(self, user_id: int, version: int) -> UserKey | None:
        """The key if this process holds it unwrapped now (no lookup, no unwrap)."""
        return self._memory.get((user_id, version))

    def forget_all(self) -> None:
        """Drop every unwrapped key (they are unwrapped again from the database when next needed)."""
        self._memory.clear()

    def forget(self, user_id: int) -> None:
        for pair in [p for p in self._memory if p[0] == user_id]:
            self._memory.pop(pair, None)
