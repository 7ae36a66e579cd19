"""Figures about this server as a whole (the API's instance endpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from feed.services.context import Services
from feed.storage import users as store


@dataclass(frozen=True, slots=True)
class SiteStats:
    users: int
    posts: int
    active_month: int  # people who posted in the last 30 days


async def stats(svc: Services) -> SiteStats:
    async with svc.db() as session:
        people, post_count, active = await store.site_counts(session, datetime.now(UTC) - timedelta(days=30))
    return SiteStats(people, post_count, active)
