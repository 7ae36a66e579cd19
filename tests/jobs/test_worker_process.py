"""The worker as operators run it: real ``cipherfeed worker`` processes on a Redis server of the test's own, which
the test restarts, and a worker the test kills in the middle of a job.

Runs once, in the PostgreSQL pass (a worker beside other processes is the scaled mode).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from feed.home_feeds import feed_key
from feed.runtime import open_runtime
from feed.services import accounts, fanout, follows, posts
from feed.settings import load_settings
from jobs.worker import LEASE_SECONDS
from tests.conftest import BACKEND, empty_tables
from tests.feed.processes import AppProcess, RedisServer, process_env, within

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="the worker's processes run once, in the PostgreSQL pass"),
]


@asynccontextmanager
async def services(env: dict[str, str]) -> AsyncIterator[Any]:
    """The services a CLI command opens, on the test's deployment (it relays nothing: the worker does)."""
    async with open_runtime(load_settings(env), "cli") as runtime:
        yield runtime


async def link_up(runtime: Any) -> bool:
    return bool(runtime.link.up) and bool(await runtime.link.run(lambda r: r.ping()))


async def in_feed(client: aioredis.Redis, user_id: int, post_id: int) -> bool:
    return await client.zscore(feed_key(user_id), str(post_id)) is not None


async def test_the_worker_outlives_redis_restarts_and_a_killed_workers_job_is_taken_up_within_seconds(
    tmp_path: Path, env: dict[str, str], processes_database_url: str, processes_engine: Any
) -> None:
    await empty_tables(processes_engine)  # nothing of another test's deployment left to relay
    server = RedisServer(tmp_path)
    server.start()
    deployment = process_env(env, server.url) | {"CIPHERFEED_DATABASE_URL": processes_database_url}
    client = aioredis.Redis.from_url(server.url)
    workers: list[AppProcess] = []

    def worker(name: str, **extra: str) -> AppProcess:
        proc = AppProcess(name, deployment | extra, tmp_path, ["worker"])
        proc.wait_ready()
        workers.append(proc)
        return proc

    try:
        first = worker("W1")
        async with services(deployment) as runtime:
            svc = runtime.services
            suffix = secrets.token_hex(3)
            alice = await accounts.register(svc, f"alice{suffix}", "correct horse battery staple")
            bob = await accounts.register(svc, f"bob{suffix}", "correct horse battery staple")
            await follows.follow(svc, bob, alice.id)

            # Redis restarts (and, without persistence, forgets everything): the worker waits and goes on.
            for _ in range(2):
                server.kill()
                await asyncio.sleep(1.0)
                server.start()
                assert await within(10, partial(link_up, runtime)) is not None
                await fanout.rebuild(svc, bob.id)  # bob's feed was lost with Redis: built again, as a read would
                assert await client.exists(feed_key(bob.id))
                post = await posts.create(svc, alice, "after a restart of Redis")
                took = await within(10, partial(in_feed, client, bob.id, post.id))
                assert took is not None, f"the fan-out did not run after Redis came back: {first.output()}"
            assert first.proc.poll() is None, f"the worker exited: {first.output()}"

            async def said_back_twice() -> bool:  # its jobs may run again a moment before the line is written
                return first.output().count("worker: Redis is back") == 2

            await within(10, said_back_twice)
            log = first.output()
            assert log.count("worker: Redis unreachable") == 2 and log.count("worker: Redis is back") == 2, log
            assert "Traceback" not in log, log

            # A worker killed in the middle of a fan-out: another takes the job up within seconds, not minutes.
            first.stop()
            doomed = worker("W2", CIPHERFEED_TEST_JOB_PAUSE="60")
            post = await posts.create(svc, alice, "its first worker is killed")

            async def taken() -> bool:  # cron jobs' marks (kept a minute after they ran) left out
                keys = [key async for key in client.scan_iter(match="arq:in-progress:*")]
                return any(not key.startswith(b"arq:in-progress:cron:") for key in keys)

            assert await within(10, taken) is not None, "the worker took the job"
            doomed.proc.send_signal(signal.SIGKILL)
            doomed.proc.wait(timeout=5)
            killed_at = time.monotonic()
            worker("W3")
            took = await within(LEASE_SECONDS + 10, partial(in_feed, client, bob.id, post.id))
            assert took is not None, "the killed worker's job was not taken up again"
            waited = time.monotonic() - killed_at
            assert waited < LEASE_SECONDS + 5, f"taken up {waited:.1f} s after the kill"
    finally:
        for proc in workers:
            proc.stop()
        await client.aclose()
        server.kill()


async def test_redis_lost_between_arqs_watch_and_exec_is_an_outage_not_the_workers_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arq takes a job with WATCH ... EXEC; a Redis lost in between reaches it from redis-py as a WatchError, which
    arq handles only at the EXEC. The worker waits for Redis, as for any other loss, instead of exiting."""
    import arq.worker
    from redis.exceptions import WatchError

    from jobs.worker import Worker, functions

    server = RedisServer(tmp_path)
    server.start()
    client = aioredis.Redis.from_url(server.url)
    raised: list[BaseException] = []

    async def watch_then_lose_redis(self: Any) -> None:  # what arq's start_jobs does, with Redis killed meanwhile
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch("arq:in-progress:some-job")
            server.kill()
            try:
                await pipe.exists("arq:in-progress:some-job")
            except BaseException as exc:
                raised.append(exc)
                raise

    monkeypatch.setattr(arq.worker.Worker, "_poll_iteration", watch_then_lose_redis)
    worker = Worker(functions=functions(), redis_settings=arq.connections.RedisSettings(port=server.port))
    try:
        await worker._poll_iteration()  # no exception: an outage
        assert len(raised) == 1 and isinstance(raised[0], WatchError), raised  # redis-py's word for it, for real
        assert worker._down_since is not None, "the worker knows Redis is away"
    finally:
        await client.aclose()
        server.kill()
