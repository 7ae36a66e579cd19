"""Maintenance runs, as services see them, and what ``cipherfeed jobs status`` shows.

Queued jobs (by name, with ids only) go through ``feed.queue``; their functions live in ``jobs/`` and call services.

A *maintenance job* (cleanup, rotation, erasure follow-up) is a service function ``async def run(svc, job)`` that
works in batches, reports progress and what it changed through ``job`` (a :class:`Run`), honours ``job.dry_run``
(count, change nothing), and keeps a checkpoint through ``job.cursor``/``job.advance`` so that a run stopped half
way goes on from where it was. Each run is recorded in ``job_runs`` (what ``cipherfeed jobs status`` shows).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from feed.queue import JobMetrics
from feed.services.context import Services, now
from feed.storage import jobs as store

log = logging.getLogger(__name__)


Progress = Callable[[int, int | None], None]  # (done, total or None when not known)


def _quiet(done: int, total: int | None) -> None:
    pass


@dataclass
class Run:
    """One run of a maintenance job, handed to its service function."""

    svc: Services
    name: str
    dry_run: bool = False
    on_progress: Progress = _quiet
    run_id: int | None = None
    changed: dict[str, int] = field(default_factory=dict)
    done: int = 0
    total: int | None = None
    _saved_at: float = 0.0

    def count(self, what: str, n: int = 1) -> None:
        """``n`` more ``what`` changed (or, in a dry run, would have)."""
        if n:
            self.changed[what] = self.changed.get(what, 0) + n

    async def progress(self, done: int, total: int | None = None) -> None:
        self.done, self.total = done, total if total is not None else self.total
        self.on_progress(self.done, self.total)
        if self.run_id is not None and time.monotonic() - self._saved_at > 1.0:
            self._saved_at = time.monotonic()
            async with self.svc.db.begin() as session:
                await store.save_progress(session, self.run_id, self.done, self.total)

    async def cursor(self, part: str = "") -> int | None:
        """The checkpoint this job (``part`` of it) saved last, or None to start from the beginning."""
        async with self.svc.db() as session:
            return await store.get_cursor(session, self._key(part))

    async def advance(self, cursor: int, part: str = "") -> None:
        """Save a checkpoint (not in a dry run, which must change nothing)."""
        if self.dry_run:
            return
        async with self.svc.db.begin() as session:
            await store.save_cursor(session, self._key(part), cursor, now())

    async def finish(self, part: str = "") -> None:
        """The job (``part``) went through to the end: the next run starts from the beginning."""
        if self.dry_run:
            return
        async with self.svc.db.begin() as session:
            await store.delete_cursor(session, self._key(part))

    def _key(self, part: str) -> str:
        return f"{self.name}:{part}" if part else self.name

    def summary(self) -> str:
        return ", ".join(f"{name}={count}" for name, count in sorted(self.changed.items()))


MaintenanceFn = Callable[["Services", Run], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Maintenance:
    """A maintenance job: its name, what it does (one line), the service function, and when cron runs it
    (``minute`` and ``hour`` as arq cron sets; None: by hand only)."""

    name: str
    description: str
    run: MaintenanceFn
    minute: frozenset[int] | None = None
    hour: frozenset[int] | None = None


async def run_maintenance(
    svc: Services, job: Maintenance, *, dry_run: bool = False, on_progress: Progress = _quiet
) -> Run:
    """Run ``job`` now, in this process, recorded in ``job_runs``; raises what the job raised (recorded too)."""
    async with svc.db.begin() as session:
        run_id = await store.start_run(session, job.name, dry_run, now())
    run = Run(svc, job.name, dry_run=dry_run, on_progress=on_progress, run_id=run_id)
    with _timed(job.name, svc.job_metrics):
        try:
            await job.run(svc, run)
        except asyncio.CancelledError:
            # Stopped (a shutdown): recorded as such, and the next run goes on from the checkpoint. Shielded, so that
            # the record is written even while the scope that stopped the run is still cancelling.
            with anyio.CancelScope(shield=True):
                await _end(svc, run, "cancelled")
            raise
        except BaseException as exc:
            if svc.job_metrics is not None:
                svc.job_metrics.failures.labels(job.name).inc()
            with anyio.CancelScope(shield=True):
                await _end(svc, run, "failed", error=describe(exc))
            raise
    await _end(svc, run, "done")
    return run


async def record_failure(svc: Services, name: str, args: tuple[int, ...], exc: BaseException) -> None:
    """A queued job failed for good (no retries left): keep the reason for ``jobs status``."""
    async with svc.db.begin() as session:
        await store.insert_failure(
            session, name=name, args=",".join(str(int(a)) for a in args)[:200], now=now(), error=describe(exc)
        )


def describe(exc: BaseException) -> str:
    """An error as ``jobs status`` shows it: the type, and the message only of our own errors (whose messages are
    written by us and carry no user text); other libraries' messages may quote data."""
    from feed.errors import DomainError

    if isinstance(exc, DomainError):
        return f"{type(exc).__name__}: {exc.message}"[:300]
    return type(exc).__name__


async def _end(svc: Services, run: Run, state: str, error: str | None = None) -> None:
    if run.run_id is None:
        return
    async with svc.db.begin() as session:
        await store.end_run(
            session,
            run.run_id,
            state=state,
            now=now(),
            done=run.done,
            total=run.total,
            changed=run.summary()[:1000],
            error=error,
        )


@contextmanager
def _timed(name: str, metrics: JobMetrics | None) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - start
        log.info("job %s took %.2f s", name, seconds)
        if metrics is not None:
            metrics.seconds.labels(name).observe(seconds)


@dataclass(frozen=True, slots=True)
class RunInfo:
    name: str
    args: str
    dry_run: bool
    state: str
    started_at: Any
    finished_at: Any
    done: int
    total: int | None
    changed: str
    error: str | None


@dataclass(frozen=True, slots=True)
class Status:
    waiting: int | None  # None: not known from here
    running: list[RunInfo]
    failed: list[RunInfo]
    last: dict[str, RunInfo]  # per maintenance job name, its last run


async def status(svc: Services, names: list[str], *, failures: int = 10) -> Status:
    """What ``cipherfeed jobs status`` shows: queue depth, runs under way, recent failures, each job's last run."""

    def info(row: Any) -> RunInfo:
        return RunInfo(row.name, row.args, row.dry_run, row.state, row.started_at, row.finished_at, row.done,
                       row.total, row.changed, row.error)  # fmt: skip

    async with svc.db() as session:
        running = await store.running(session)
        failed = await store.failed(session, failures)
        last: dict[str, RunInfo] = {}
        for name in names:
            row = await store.last_run(session, name)
            if row is not None:
                last[name] = info(row)
    try:
        waiting: int | None = await svc.queue.depth()
    except (ConnectionError, OSError):
        waiting = None
    return Status(waiting, [info(r) for r in running], [info(r) for r in failed], last)


def due(job: Maintenance, when: datetime) -> bool:
    """Whether ``job``'s schedule (arq cron sets, UTC) names this minute."""
    if job.minute is None or when.minute not in job.minute:
        return False
    return job.hour is None or when.hour in job.hour


async def run_cron(svc: Services, jobs: Sequence[Maintenance]) -> None:
    """The maintenance schedule inside the server (the embedded mode has no worker): once a minute, each job whose
    schedule names that minute, one after the other. Runs until cancelled; a failing job is logged and recorded."""
    last = None
    while True:
        moment = now().replace(second=0, microsecond=0)
        if moment != last:
            last = moment
            for job in jobs:
                if due(job, moment):
                    try:
                        await run_maintenance(svc, job)
                    except Exception as exc:
                        log.error("cron job %s failed (%s)", job.name, type(exc).__name__)
        await asyncio.sleep(60 - now().second + 0.5)
