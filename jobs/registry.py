"""Every job by name: queued jobs (ids in, nothing out) and maintenance jobs (cleanup, rotation), with when cron
runs them. The arq worker and the in-process runner both read this table."""

from __future__ import annotations

from typing import Any

from feed.queue import JobFunction
from feed.services import cleanup, fanout, media, rotation
from feed.services.jobs import Maintenance, run_maintenance
from jobs.runner import Tries

# -- queued jobs: ``async def name(ctx, *ids)``, ctx["services"] being the process's Services


async def fan_out(ctx: dict[str, Any], post_id: int) -> None:
    await fanout.fan_out(ctx["services"], post_id)


async def unfan(ctx: dict[str, Any], post_id: int, author_id: int) -> None:
    await fanout.unfan(ctx["services"], post_id, author_id)


async def fan_out_boost(ctx: dict[str, Any], boost_id: int) -> None:
    await fanout.fan_out_boost(ctx["services"], boost_id)


async def unfan_boost(ctx: dict[str, Any], boost_id: int, booster_id: int) -> None:
    await fanout.unfan_boost(ctx["services"], boost_id, booster_id)


async def merge_follow(ctx: dict[str, Any], follower_id: int, followee_id: int) -> None:
    await fanout.merge_follow(ctx["services"], follower_id, followee_id)


async def unmerge_follow(ctx: dict[str, Any], follower_id: int, followee_id: int) -> None:
    await fanout.unmerge_follow(ctx["services"], follower_id, followee_id)


async def rebuild_feed(ctx: dict[str, Any], user_id: int) -> None:
    await fanout.rebuild(ctx["services"], user_id)


async def rotate_user_key(ctx: dict[str, Any], user_id: int, from_version: int) -> None:
    """A new key for ``user_id`` if theirs is still ``from_version``, their posts rewrapped (safe to run again)."""
    await run_maintenance(ctx["services"], rotation.user_rotation(user_id, from_version))


async def process_media(ctx: dict[str, Any], media_id: int) -> None:
    """An upload made into its variants (safe to run again)."""
    await media.process(ctx["services"], media_id)


QUEUED: dict[str, JobFunction] = {
    "fan_out": fan_out,
    "unfan": unfan,
    "fan_out_boost": fan_out_boost,
    "unfan_boost": unfan_boost,
    "merge_follow": merge_follow,
    "unmerge_follow": unmerge_follow,
    "rebuild_feed": rebuild_feed,
    "rotate_user_key": rotate_user_key,
    "process_media": process_media,
}
attempt = Tries(QUEUED)  # one try of a queued job, with the retry policy (jobs.runner)

# -- maintenance jobs, by hand (``cipherfeed jobs run NAME``) and, where a schedule is given, by cron

MAINTENANCE: dict[str, Maintenance] = {
    job.name: job for job in (*fanout.JOBS, *rotation.JOBS, *rotation.SCHEDULED, *cleanup.JOBS, *media.JOBS)
}


def maintenance(name: str) -> Maintenance:
    try:
        return MAINTENANCE[name]
    except KeyError:
        known = ", ".join(sorted(MAINTENANCE)) or "none"
        raise LookupError(f"no job named {name!r} (jobs: {known})") from None
