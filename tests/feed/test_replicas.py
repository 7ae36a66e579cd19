"""PostgreSQL read replicas: a private primary and a streaming replica of it made with ``pg_basebackup``, replaying
what it receives 5 s late (``recovery_min_apply_delay``, so that its lag is long enough to see), two ``cipherfeed
serve`` processes (A reads a replica up to 30 s behind, B one up to 1 s behind), a worker and Redis.

Runs once, in the PostgreSQL pass.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BACKEND
from tests.feed.processes import AppProcess, PostgresServer, RedisServer, metric, process_env, register

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL replicas: once, in the PostgreSQL pass"),
]

APPLY_DELAY = 5.0


@dataclass
class Replicated:
    primary: PostgresServer
    replica: PostgresServer
    procs: dict[str, AppProcess]
    settings: dict[str, str]


@pytest.fixture
async def replicated(env: dict[str, str], tmp_path: Path) -> AsyncIterator[Replicated]:
    primary = PostgresServer()
    primary.settings["full_page_writes"] = "on"  # pg_basebackup needs it
    replica: PostgresServer | None = None
    redis = RedisServer(tmp_path)
    procs: dict[str, AppProcess] = {}
    try:
        await asyncio.to_thread(primary.start)
        replica = await asyncio.to_thread(PostgresServer, primary)
        replica.settings["recovery_min_apply_delay"] = f"{int(APPLY_DELAY * 1000)}ms"
        await asyncio.to_thread(replica.start)
        redis.start()
        settings = process_env(env | {
            "CIPHERFEED_DATABASE_URL": primary.url,
            "CIPHERFEED_DATABASE_REPLICA_URLS": replica.url,
            "CIPHERFEED_REPLICA_MAX_LAG_SECONDS": "30",
            "CIPHERFEED_DATA_DIR": str(tmp_path / "data"),
        }, redis.url)  # fmt: skip
        upgraded = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "feed", "db", "upgrade"],
                                           env=settings, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                                           check=False)  # fmt: skip
        assert upgraded.returncode == 0, upgraded.stderr
        procs["a"] = AppProcess("a", settings, tmp_path)
        procs["b"] = AppProcess("b", settings | {"CIPHERFEED_REPLICA_MAX_LAG_SECONDS": "1"}, tmp_path)
        procs["worker"] = AppProcess("worker", settings, tmp_path, ["worker"])
        for proc in procs.values():
            await asyncio.to_thread(proc.wait_ready)
        yield Replicated(primary, replica, procs, settings)
    finally:
        for proc in procs.values():
            proc.stop()
        redis.kill()
        for server in (replica, primary):
            if server is not None:
                await asyncio.to_thread(server.remove)
    for proc in procs.values():
        output = proc.output()
        assert "Traceback" not in output and "unhandled error" not in output, f"process {proc.name}:\n{output}"


async def until(check: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_replica_serves_timeline_reads_the_author_reads_their_writes_and_a_stopped_replica_costs_nothing(
    replicated: Replicated,
) -> None:
    a, b = replicated.procs["a"].url, replicated.procs["b"].url
    clients: list[httpx.AsyncClient] = []
    visitor = {where: httpx.AsyncClient(base_url=url, timeout=30) for where, url in (("a", a), ("b", b))}
    try:
        alice = await register({"a": a, "b": b}, "alice", clients)
        carol = await register({"a": a, "b": b}, "carol", clients)
        assert (await carol.post("a", f"/@{alice.name}/follow")).status_code == 303
        before = await alice.compose("a", "an older post")

        async def replica_ready() -> bool:
            lines = (await visitor["a"].get("/readyz")).text.splitlines()
            return any(line.startswith("replica ") and ": up, lag" in line and "not read" not in line for line in lines)

        await until(replica_ready, "the replica never answered as one")

        async def replicated_older() -> bool:  # the replica has the older post (5 s after it was written)
            return f'id="post-{before}"' in (await visitor["a"].get("/@alice")).text

        await until(replicated_older, "the older post never reached the replica")
        reads = metric((await visitor["a"].get("/metrics")).text, "cipherfeed_db_reads_total", target="replica")
        assert reads > 0, "the visitor's profile reads went to the replica"

        # A new post: its author sees it at once on both processes (their reads wait for a replica that has it, or
        # go to the primary); a visitor on A, which tolerates 30 s, reads the replica (5 s behind) without it.
        post = await alice.compose("a", "fresh off the primary")
        written = time.monotonic()
        for where in ("a", "b"):
            assert f'id="post-{post}"' in (await alice.on[where].get("/@alice")).text, f"alice on {where.upper()}"
        assert f'id="post-{post}"' not in (await visitor["a"].get("/@alice")).text, "the visitor read the replica"
        # B tolerates 1 s: once the replica is further behind than that, B reads the primary.
        await asyncio.sleep(max(0.0, written + 2.0 - time.monotonic()))
        assert f'id="post-{post}"' in (await visitor["b"].get("/@alice")).text, "B skips a replica 2 s behind"
        assert time.monotonic() - written < APPLY_DELAY, "the checks ran before the replica replayed the post"

        # A block is another person's write: the replica lacks it for 5 s, and carol's home page from it must not
        # show alice's posts meanwhile (what the replica's rows say about others is checked again against the caches).
        older = f"/?max_id={post + 1}"
        assert f'id="post-{before}"' in (await carol.on["a"].get(older)).text
        assert (await alice.post("a", f"/@{carol.name}/block")).status_code == 303
        blocked_at = time.monotonic()
        reads = metric((await visitor["a"].get("/metrics")).text, "cipherfeed_db_reads_total", target="replica")
        assert f'id="post-{before}"' not in (await carol.on["a"].get(older)).text, "a blocked reader saw the post"
        after = metric((await visitor["a"].get("/metrics")).text, "cipherfeed_db_reads_total", target="replica")
        assert after > reads and time.monotonic() - blocked_at < APPLY_DELAY, "that page came from the replica"

        # Through the API, with alice's token: her new status is in her account's statuses at once.
        made_token = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "feed", "users", "token", "alice"],
                                             env=replicated.settings, capture_output=True, text=True, check=True,
                                             timeout=60)  # fmt: skip
        token = made_token.stdout.strip()
        api = httpx.AsyncClient(base_url=a, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        clients.append(api)
        me = (await api.get("/api/v1/accounts/verify_credentials")).json()
        made = await api.post("/api/v1/statuses", data={"status": "through the API"})
        assert made.status_code == 200, made.text
        listed = (await api.get(f"/api/v1/accounts/{me['id']}/statuses")).json()
        assert listed[0]["id"] == made.json()["id"]

        # The replica stops: reads go back to the primary, without an error.
        await asyncio.to_thread(replicated.replica.stop)
        for where in ("a", "b"):
            page = await visitor[where].get("/@alice")
            assert page.status_code == 200 and f'id="post-{post}"' in page.text
            assert (await alice.on[where].get("/@alice?max_id=" + str(post))).status_code == 200

        async def reported_down() -> bool:
            body = (await visitor["a"].get("/readyz")).text
            return "ready" in body and ": down" in body

        await until(reported_down, "/readyz did not say the replica is down", 10)
        text = (await visitor["a"].get("/metrics")).text
        assert metric(text, "cipherfeed_db_replica_up") == 0
    finally:
        for http in [*clients, *visitor.values()]:
            await http.aclose()
