"""The arq worker: ``cipherfeed worker`` runs the queued jobs and the cron
schedule of the maintenance jobs, with the server's own setup (settings from the environment, read once here).

Results are not kept (``keep_result = 0``) nor logged: a job returns nothing worth keeping, and a result in Redis or
a log line is one more place a value could leak. Job arguments are ids only (``feed.queue.check_args``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from arq import Retry, cron
from arq.cron import CronJob

from feed.queue import retry_delay
from feed.services.jobs import Maintenance, record_failure, run_maintenance
from jobs.registry import MAINTENANCE, QUEUED

log = logging.getLogger(__name__)

# Seconds a job may run (CIPHERFEED_JOB_TIMEOUT overrides it for ``cipherfeed worker``). Long maintenance jobs
# checkpoint, so a timed-out run is retried from where it was; and a killed worker's jobs are picked up again
# this long (plus 10 s) after they started, so it is kept short.
JOB_TIMEOUT = 300
MAX_TRIES = 5


def _queued(name: str, function: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The job function, retried with growing delays (arq retries only on ``Retry``), its last failure recorded
    for ``cipherfeed jobs status``."""

    @functools.wraps(function)
    async def job(ctx: dict[str, Any], *args: int) -> None:
        tries = int(ctx.get("job_try", 1))
        try:
            await function(ctx, *args)
        except Exception as exc:
            if tries < MAX_TRIES:
                log.warning("job %s failed (%s); try %d in %.0f s", name, type(exc).__name__, tries + 1,
                            retry_delay(tries))  # fmt: skip
                raise Retry(defer=retry_delay(tries)) from None
            log.error("job %s failed for good after %d tries (%s)", name, tries, type(exc).__name__)
            await record_failure(ctx["services"], name, args, exc)
            raise

    return job


def _scheduled(job: Maintenance) -> CronJob:
    async def run(ctx: dict[str, Any]) -> None:
        await run_maintenance(ctx["services"], job)

    run.__qualname__ = run.__name__ = f"cron_{job.name}"
    return cron(run, name=f"cron:{job.name}", minute=set(job.minute or ()), hour=set(job.hour) if job.hour else None,
                unique=True, run_at_startup=False)  # fmt: skip


def functions() -> list[Any]:
    from arq.worker import func

    return [func(cast(Any, _queued(name, fn)), name=name, max_tries=MAX_TRIES) for name, fn in QUEUED.items()]


def cron_jobs() -> list[CronJob]:
    return [_scheduled(job) for job in MAINTENANCE.values() if job.minute is not None]


async def startup(ctx: dict[str, Any]) -> None:
    """The server's own lifespan (database, Redis, keys, caches, bus), entered for the worker's life."""
    from feed.app import create_app
    from feed.settings import load_settings

    app = create_app(ctx.get("settings") or load_settings(), role="worker")
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    ctx["lifespan"], ctx["services"] = lifespan, app.state.services


async def shutdown(ctx: dict[str, Any]) -> None:
    if (lifespan := ctx.get("lifespan")) is not None:
        await lifespan.__aexit__(None, None, None)


class WorkerSettings:
    """What arq reads (every attribute is an argument of ``arq.worker.Worker``; a test checks that). The Redis
    settings come from CIPHERFEED_REDIS_URL, given by ``cipherfeed worker``."""

    functions: ClassVar[list[Any]] = functions()
    cron_jobs: ClassVar[list[CronJob]] = cron_jobs()
    on_startup = startup
    on_shutdown = shutdown
    keep_result = 0
    log_results = False
    max_tries = MAX_TRIES
    job_timeout = JOB_TIMEOUT
    max_jobs = 10
    poll_delay = 0.05  # seconds between looks at the queue: a new post's fan-out starts within this
    health_check_interval = 60
