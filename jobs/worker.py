"""The arq worker: ``cipherfeed worker`` runs the queued jobs and the cron schedule of the maintenance jobs, with the
services every process opens (``feed.runtime``, settings read once by the CLI).

arq is used as it is, with two changes (:class:`Worker`):

- **It outlives Redis.** arq's own worker exits when a Redis command fails. Ours logs one warning when Redis goes
  away and one line when it is back, retries with a growing pause (up to :data:`MAX_PAUSE`), and goes on by itself;
  jobs that could not be taken or finished stay in the queue and run then.
- **Jobs are leased, not held for their whole timeout.** arq marks a job taken for the longest job timeout plus
  10 s, so a job whose worker was killed waited minutes to be taken up again. Ours marks it for
  :data:`LEASE_SECONDS` and renews the mark every third of that while the job runs: a killed worker's jobs are
  taken up again within seconds. Jobs are safe to run twice (fan-outs write the same feed entries, maintenance
  jobs go on from their checkpoint).

Results are not kept (``keep_result = 0``) nor logged: a job returns nothing worth keeping, and a result in Redis or
a log line is one more place a value could leak. How a job is tried and retried is ``jobs.runner``'s business; a
job's failure reaches arq only as "try again in N seconds" (``Retry``), never as an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

import arq.worker
from arq import Retry, cron
from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.cron import CronJob
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from feed.services.jobs import Maintenance, run_maintenance
from jobs.registry import MAINTENANCE, QUEUED, attempt
from jobs.runner import OUTAGE_TRIES

log = logging.getLogger(__name__)

# Seconds a job may run (CIPHERFEED_JOB_TIMEOUT overrides it for ``cipherfeed worker``). Long maintenance jobs
# checkpoint, so a timed-out run is retried from where it was.
JOB_TIMEOUT = 300
LEASE_SECONDS = 10.0  # a job whose worker stopped renewing its mark is taken up again after this long
MAX_PAUSE = 2.0  # seconds between tries while Redis is away, at most
LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)


def _arq_job(name: str) -> Callable[..., Awaitable[None]]:
    async def job(ctx: dict[str, Any], *args: int) -> None:
        wait = await attempt(ctx, name, tuple(args))
        if wait is not None:
            raise Retry(defer=wait)

    job.__name__ = job.__qualname__ = name
    return job


def _scheduled(job: Maintenance) -> CronJob:
    async def run(ctx: dict[str, Any]) -> None:
        await run_maintenance(ctx["services"], job)

    run.__qualname__ = run.__name__ = f"cron_{job.name}"
    return cron(run, name=f"cron:{job.name}", minute=set(job.minute or ()), hour=set(job.hour) if job.hour else None,
                unique=True, run_at_startup=False)  # fmt: skip


def functions() -> list[Any]:
    # arq's cap is the outage one: jobs.runner decides when a job has failed for good, before arq would.
    return [arq.worker.func(cast(Any, _arq_job(name)), name=name, max_tries=OUTAGE_TRIES) for name in QUEUED]


def cron_jobs() -> list[CronJob]:
    return [_scheduled(job) for job in MAINTENANCE.values() if job.minute is not None]


class Worker(arq.worker.Worker):
    """arq's worker that waits out Redis outages and leases its jobs (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = LEASE_SECONDS
        self._down_since: float | None = None
        self._pause = 0.1
        self._lease_task: asyncio.Task[None] | None = None

    async def main(self) -> None:
        while self._pool is None:  # arq tries a few times, then gives up: this waits for Redis instead
            try:
                self._pool = await create_pool(
                    self.redis_settings,
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                )
            except LINK_ERRORS as exc:
                await self._link_down(exc)
        self._lease_task = asyncio.get_running_loop().create_task(self._renew_leases())
        try:
            while True:
                try:
                    await super().main()  # the pool is set: arq's own loop, from its start-up on
                    return
                except LINK_ERRORS as exc:
                    if "services" in self.ctx:
                        raise  # past start-up, _poll_iteration handles these: not a blink
                    await self._link_down(exc)
        finally:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (*LINK_ERRORS, WatchError) as exc:
            # WatchError: redis-py's word for a connection lost between arq's WATCH and its EXEC (a job another
            # worker took meanwhile is arq's to handle, at the EXEC); the worker waits for Redis as for any loss.
            await self._link_down(exc)
        else:
            self._link_up()

    async def _link_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("worker: Redis unreachable (%s); waiting for it", type(exc).__name__)
        await asyncio.sleep(self._pause)
        self._pause = min(self._pause * 2, MAX_PAUSE)

    def _link_up(self) -> None:
        if self._down_since is not None:
            log.warning("worker: Redis is back after %.1f s; taking jobs again", time.monotonic() - self._down_since)
            self._down_since = None
        self._pause = 0.1

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            if not running or self._pool is None:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in running:
                        pipe.pexpire(in_progress_key_prefix + job_id, int(LEASE_SECONDS * 1000))
                    await pipe.execute()
            except LINK_ERRORS:
                pass  # the poll loop says Redis is away; a lease that lapses meanwhile means a job runs twice

    async def close(self) -> None:
        """arq's close, which does not fail when Redis is away at shutdown, and closes the pool without the
        deprecated call."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if self._pool is None:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(*LINK_ERRORS):
            await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


async def startup(ctx: dict[str, Any]) -> None:
    """The services every process opens (``feed.runtime``), held for the worker's life, and the worker's own
    metrics endpoint (``CIPHERFEED_WORKER_METRICS``)."""
    from feed.runtime import open_runtime
    from feed.settings import load_settings

    settings = ctx.get("settings") or load_settings()
    opening = open_runtime(settings, "worker")
    runtime = await opening.__aenter__()
    ctx["services"], ctx["runtime"] = runtime.services, opening
    if settings.worker_metrics is not None:
        ctx["metrics_server"] = _serve_metrics(runtime, *settings.worker_metrics)
        ctx["queue_gauge"] = asyncio.get_running_loop().create_task(_watch_queue(runtime))


async def shutdown(ctx: dict[str, Any]) -> None:
    if (task := ctx.pop("queue_gauge", None)) is not None:
        task.cancel()
    if (server := ctx.pop("metrics_server", None)) is not None:
        server.shutdown()
    if (runtime := ctx.pop("runtime", None)) is not None:
        await runtime.__aexit__(None, None, None)


def _serve_metrics(runtime: Any, host: str, port: int) -> Any:
    """prometheus-client's own HTTP endpoint (a thread) for this worker's registry; None if the port is taken
    (another worker on this machine has it: this one runs on without an endpoint)."""
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, host, registry=runtime.metrics.registry)
    except OSError as exc:
        log.warning("worker: no metrics endpoint on %s:%d (%s)", host, port, type(exc).__name__)
        return None
    log.info("worker: metrics on http://%s:%d/metrics", host, server.server_port)
    return server


async def _watch_queue(runtime: Any) -> None:
    """What the endpoint shows is written here: callback gauges, and the queue's depth."""
    from feed.metrics import REFRESH_SECONDS

    metrics = runtime.services.job_metrics
    while True:
        runtime.metrics.refresh()
        with contextlib.suppress(ConnectionError, OSError):
            metrics.waiting.set(await runtime.queue.depth())
        await asyncio.sleep(REFRESH_SECONDS)


class WorkerSettings:
    """What arq reads (every attribute is an argument of ``arq.worker.Worker``; a test checks that). The Redis
    settings come from CIPHERFEED_REDIS_URL, given by ``cipherfeed worker``."""

    functions: ClassVar[list[Any]] = functions()
    cron_jobs: ClassVar[list[CronJob]] = cron_jobs()
    on_startup = startup
    on_shutdown = shutdown
    keep_result = 0
    log_results = False
    max_tries = OUTAGE_TRIES
    job_timeout = JOB_TIMEOUT
    max_jobs = 10
    poll_delay = 0.05  # seconds between looks at the queue: a new post's fan-out starts within this
    health_check_interval = 60
