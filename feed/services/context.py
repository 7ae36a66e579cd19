"""What every service function receives: the resources opened by the app's lifespan, as plain values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from anyio import CapacityLimiter
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import async_sessionmaker

from feed.services.keys import KeyStore


@dataclass(frozen=True, slots=True)
class ThrottleRules:
    per_account: int
    per_ip: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class Services:
    db: async_sessionmaker[Any]
    keys: KeyStore
    index_key: bytes  # for the email blind index
    hasher: PasswordHasher
    # Argon2 runs in threads; this bounds how many at once (each takes ~64 MiB and a core for ~50 ms).
    hash_slots: CapacityLimiter
    dummy_hash: str  # verified against when the username is unknown, so both paths cost the same
    session_ttl: timedelta
    throttle: ThrottleRules
