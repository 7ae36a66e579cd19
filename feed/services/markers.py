"""Read positions: where a person stopped reading their home timeline and their notifications, kept for the apps
they use (Mastodon's markers), so that another device opens where the last one left off."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from feed.errors import Invalid
from feed.events import Effects
from feed.services import effects
from feed.services.context import Services, now
from feed.services.models import User
from feed.storage import markers as store

TIMELINES = ("home", "notifications")


@dataclass(frozen=True, slots=True)
class Marker:
    timeline: str
    last_read_id: int
    version: int
    updated_at: datetime


async def read(svc: Services, user: User, timelines: Iterable[str]) -> list[Marker]:
    """The user's markers of those of ``timelines`` that have one (names other than :data:`TIMELINES` are
    ignored)."""
    wanted = [t for t in dict.fromkeys(timelines) if t in TIMELINES]
    if not wanted:
        return []
    async with svc.db() as session:
        rows = await store.of(session, user.id, wanted)
    return [Marker(r.timeline, int(r.last_read_id), int(r.version), r.updated_at) for r in rows]


async def save(svc: Services, user: User, positions: Mapping[str, int]) -> list[Marker]:
    """Set the markers of ``positions`` (timeline: last read post id); the markers as they are now."""
    if not positions:
        raise Invalid("Give last_read_id of home or notifications")
    unknown = set(positions) - set(TIMELINES)
    if unknown:
        raise Invalid(f"Unknown timeline {sorted(unknown)[0][:30]!r}")
    caused = effects.unread_changed(user.id) if "notifications" in positions else Effects()
    async with svc.db.begin() as session:
        for timeline, last_read_id in positions.items():
            await store.save(session, user.id, timeline, last_read_id, now())
        await effects.record(session, caused)
    await effects.committed(svc, caused)
    return await read(svc, user, positions)
