"""Running queued jobs in tests, as production runs them: a real arq Worker (burst mode) on the app's Redis with
the app's services, or, in the embedded mode, the app's own in-process runner."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import default_queue_name

from feed.queue import LocalQueue
from feed.storage.tables import outbox
from jobs.worker import Worker, WorkerSettings


def worker_for(app: Any, **overrides: Any) -> Worker:
    """An arq Worker with cipherfeed's settings and the app's services (no cron, no signal handling)."""
    queue = app.state.queue
    options = {k: v for k, v in vars(WorkerSettings).items() if not k.startswith("_")}
    options.update(on_startup=None, on_shutdown=None, cron_jobs=[], handle_signals=False, poll_delay=0.01)
    options.update(overrides)
    pool = ArqRedis(connection_pool=queue.pool.connection_pool.__class__.from_url(_url(queue.pool)))
    return Worker(**options, redis_pool=pool, ctx={"services": app.state.services})


def _url(pool: ArqRedis) -> str:
    kwargs = pool.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


async def start_worker(app: Any) -> None:
    """A real arq worker for the app's whole life (scaled mode), as ``cipherfeed worker`` would run beside it."""
    queue = app.state.queue
    if isinstance(queue, LocalQueue):
        return
    worker = worker_for(app)
    app.state.test_worker = worker
    app.state.test_worker_task = asyncio.get_running_loop().create_task(worker.main())


async def stop_worker(app: Any) -> None:
    task = getattr(app.state, "test_worker_task", None)
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app.state.test_worker.close()


async def relayed(app: Any, limit: float = 20.0) -> None:
    """Wait until the outbox is empty: every committed write's invalidations, jobs and events went out."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        async with app.state.engine.connect() as conn:
            if not await conn.scalar(sa.select(sa.func.count()).select_from(outbox)):
                return
        await asyncio.sleep(0.005)
    raise TimeoutError("the outbox was not relayed")


async def settle(app: Any, limit: float = 20.0) -> None:
    """Wait until every write so far was relayed and every job queued so far (and those they queued) has run: what
    a reader sees a moment after a write, once the background work is done."""
    await relayed(app, limit)
    queue = app.state.queue
    if isinstance(queue, LocalQueue):
        while queue._tasks:
            await queue.drain(grace=limit)
        return
    worker = getattr(app.state, "test_worker", None)
    if worker is None:
        await run_jobs(app)
        return
    deadline = time.monotonic() + limit
    pool = queue.pool
    while time.monotonic() < deadline:
        due = await pool.zcard(default_queue_name)  # deferred ones too: a retried job is not done
        busy = any(not task.done() for task in worker.tasks.values())
        if not due and not busy:  # arq keeps a job in its queue until the job has finished
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("queued jobs did not finish")


async def run_jobs(app: Any) -> None:
    """Run every job queued so far (and those they queue) to the end."""
    queue = app.state.queue
    if isinstance(queue, LocalQueue):
        while queue._tasks:
            await queue.drain(grace=60)
        return
    worker = worker_for(app, burst=True)
    try:
        await worker.main()
    finally:
        await worker.close()
