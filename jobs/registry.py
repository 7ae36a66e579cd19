"""Every job by name: queued jobs (ids in, nothing out) and maintenance jobs (cleanup, rotation), with when cron
runs them. The arq worker and the in-process runner both read this table."""

from __future__ import annotations

from typing import Any

from feed.queue import JobFunction
from feed.services.jobs import Maintenance


def _services(ctx: dict[str, Any]) -> Any:
    return ctx["services"]


# -- queued jobs: ``async def name(ctx, *ids)``

QUEUED: dict[str, JobFunction] = {}

# -- maintenance jobs, by hand (``cipherfeed jobs run NAME``) and, where a schedule is given, by cron

MAINTENANCE: dict[str, Maintenance] = {}


def maintenance(name: str) -> Maintenance:
    try:
        return MAINTENANCE[name]
    except KeyError:
        known = ", ".join(sorted(MAINTENANCE)) or "none"
        raise LookupError(f"no job named {name!r} (jobs: {known})") from None
