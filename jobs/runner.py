"""How a queued job is tried: the one place that decides retries, for the arq worker and the in-process runner.

A try that raises is tried again after 1, 4, 9, 16 ... seconds, up to :data:`MAX_TRIES` tries; the last failure is
recorded for ``cipherfeed jobs status`` (its type, and the message only of our own errors) and counted in the
job metrics. A try that failed because the database or Redis did not answer is not the job's fault: it is tried
again every few seconds (at most :data:`OUTAGE_PAUSE`) for up to :data:`OUTAGE_TRIES` tries, about half an hour,
so that an outage does not use up a job's tries and drop it. Nothing of a failure reaches a queue or a log beyond
the job's name and the error's type.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from feed.queue import JobFunction
from feed.services.jobs import record_failure

log = logging.getLogger(__name__)

MAX_TRIES = 5
OUTAGE_TRIES = 70  # also arq's own cap on tries (jobs.worker)
OUTAGE_PAUSE = 30.0


def retry_delay(tries: int) -> float:
    """Seconds before try ``tries + 1``: 1, 4, 9, 16 ..."""
    return float(tries * tries)


def outage_delay(tries: int) -> float:
    """Seconds before try ``tries + 1`` after an outage: 2, 4, 6 ... then every :data:`OUTAGE_PAUSE`."""
    return min(OUTAGE_PAUSE, 2.0 * tries)


@dataclass(frozen=True, slots=True)
class Tries:
    """Tries one job of ``functions`` (``feed.queue.Attempt``): None when it is over, else the seconds to wait."""

    functions: Mapping[str, JobFunction]
    max_tries: int = MAX_TRIES
    delay: Callable[[int], float] = retry_delay
    outage: Callable[[int], float] = outage_delay

    async def __call__(self, ctx: dict[str, Any], name: str, args: tuple[int, ...]) -> float | None:
        svc = ctx["services"]
        metrics = svc.job_metrics
        tries = int(ctx.get("job_try", 1))
        if svc.job_pause:  # a test's fault point: a window in which to kill the worker mid job
            await asyncio.sleep(svc.job_pause)
        started = time.monotonic()
        try:
            await self.functions[name](ctx, *args)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if metrics is not None:
                metrics.failures.labels(name).inc()
            if _outage(exc) and tries < OUTAGE_TRIES:
                wait = self.outage(tries)
                log.warning("job %s: a dependency is away (%s); try %d in %.0f s", name, type(exc).__name__,
                            tries + 1, wait)  # fmt: skip
                return wait
            if tries < self.max_tries:
                wait = self.delay(tries)
                log.warning("job %s failed (%s); try %d in %.0f s", name, type(exc).__name__, tries + 1, wait)
                return wait
            log.error("job %s failed for good after %d tries (%s)", name, tries, type(exc).__name__)
            try:
                await record_failure(svc, name, args, exc)
            except Exception as unrecorded:
                log.error("job %s: its failure could not be recorded (%s)", name, type(unrecorded).__name__)
            return None
        finally:
            if metrics is not None:
                metrics.seconds.labels(name).observe(time.monotonic() - started)


def _outage(exc: BaseException) -> bool:
    """Whether the try failed because the database or Redis did not answer."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from feed import db

    return db.unreachable(exc) or isinstance(exc, RedisConnectionError | RedisTimeoutError)
