"""Fixtures of the tests that run cipherfeed processes of their own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import empty_tables
from tests.feed.processes import AppProcess, Cluster, ClusterRedis, RedisServer, process_env


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def cluster(
    processes_engine: Any,
    processes_database_url: str,
    env: dict[str, str],
    redis_server: RedisServer | ClusterRedis,
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    """Processes A and B on a database of their own (emptied) and the test's Redis (a module may give a
    :class:`ClusterRedis` as ``redis_server``)."""
    await empty_tables(processes_engine)
    settings = process_env(env | {"CIPHERFEED_DATABASE_URL": processes_database_url}, redis_server.url)
    if isinstance(redis_server, ClusterRedis):
        settings["CIPHERFEED_QUEUE_REDIS_URL"] = redis_server.queue_url
    async with deployment(settings, redis_server, tmp_path) as made:
        yield made


@contextlib.asynccontextmanager
async def deployment(settings: dict[str, str], redis: Any, workdir: Path) -> AsyncIterator[Cluster]:
    """Web processes A and B and a worker with ``settings``; on the way out, none of them logged a traceback."""
    procs = {name: AppProcess(name, settings, workdir) for name in ("a", "b")}
    worker = AppProcess("worker", settings, workdir, ["worker"])
    cluster = Cluster(redis, procs, [worker])
    try:
        for proc in (*procs.values(), worker):
            proc.wait_ready()
        for name, proc in procs.items():
            cluster.anonymous[name] = httpx.AsyncClient(base_url=proc.url, timeout=30)
        cluster.clients.extend(cluster.anonymous.values())
        yield cluster
    finally:
        for http in cluster.clients:
            await http.aclose()
        for proc in cluster.every_process():
            proc.stop()
    for proc in cluster.every_process(stopped=True):
        output = proc.output()
        assert "Traceback" not in output and "unhandled error" not in output, f"process {proc.name}:\n{output}"
