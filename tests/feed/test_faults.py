"""The fault suite (issue 10): the scaled mode under a load of posts, likes and reads while its dependencies fail.

Two ``cipherfeed serve`` processes (A, B), a ``cipherfeed worker``, and a PostgreSQL cluster and a Redis server of
the test's own. Clients post through the API with an ``Idempotency-Key`` (retried, with the same key, on any error,
as a careful client would), like and unlike, and read their home timelines, while the test:

1. kills Redis (no persistence: every key is lost) and starts it again;
2. stops PostgreSQL cleanly for a few seconds, then starts it;
3. kills PostgreSQL (SIGKILL of every process: crash recovery at the next start);
4. SIGKILLs the worker in the middle of its fan-outs, and starts another (as a supervisor would);
5. makes a third web process die right after a post's commit (a fault point), its client retrying elsewhere.

Then it checks: every post that got a 2xx exists, reads back, and is in every follower's home timeline; no post was
made twice under retries; like counts equal the database's; A, B and the second worker are the processes that
started (none had to be restarted); no answer was a 500, and while PostgreSQL was away every failure was a 503;
writes succeeded again within 5 s of each dependency returning. It prints its figures.

Runs once, in the PostgreSQL pass, in about a minute and a half.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from feed import db
from feed.runtime import open_runtime
from feed.services import accounts, follows
from feed.settings import load_settings
from feed.storage.tables import likes, outbox, posts
from tests.conftest import BACKEND
from tests.feed.processes import AppProcess, PostgresServer, RedisServer, process_env

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="the fault suite runs once, in the PostgreSQL pass"),
]

USERS = 5
WRITE_PAUSE = 0.25  # seconds between one writer's posts
RECOVERY_LIMIT = 5.0


@dataclass
class Outcome:
    at: float
    kind: str  # post, like, read
    target: str
    status: int  # 0: no answer (connection refused or reset)


@dataclass
class Deployment:
    workdir: Path
    env: dict[str, str]
    pg: PostgresServer
    redis: RedisServer
    procs: dict[str, AppProcess] = field(default_factory=dict)

    def start(self, name: str, *command: str, **extra: str) -> AppProcess:
        proc = AppProcess(name, process_env(self.env, self.redis.url) | extra, self.workdir, list(command) or None)
        proc.wait_ready(60)
        self.procs[name] = proc
        return proc


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, root_key_json: str) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("faults")
    pg = PostgresServer()
    redis = RedisServer(workdir)
    try:
        pg.start()
        redis.start()
        env = {
            "CIPHERFEED_DATABASE_URL": pg.url,
            "CIPHERFEED_DATA_DIR": str(workdir / "data"),
            "CIPHERFEED_ROOT_KEY": root_key_json,
            "CIPHERFEED_SECRET_KEY": "fault-secret-" + "z" * 40,
            "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "100000",
        }
        subprocess.run([sys.executable, "-m", "feed", "db", "upgrade"], env=process_env(env, redis.url), check=True,
                       capture_output=True, cwd=workdir)  # fmt: skip
        made = Deployment(workdir, env, pg, redis)
        yield made
    finally:
        for proc in locals().get("made", Deployment(workdir, {}, pg, redis)).procs.values():
            proc.stop()
        redis.kill()
        pg.remove()


class Load:
    """Writers, likers and readers against A and B until stopped; every answer recorded."""

    def __init__(self, urls: dict[str, str], tokens: list[str]) -> None:
        self.urls = urls
        self.clients = {
            (name, token): httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=15)
            for name, url in urls.items()
            for token in tokens
        }
        self.tokens = tokens
        self.outcomes: list[Outcome] = []
        self.acked: dict[str, str] = {}  # idempotency key -> status id
        self.texts: dict[str, str] = {}  # idempotency key -> text
        self.unanswered: set[str] = set()  # keys that never got a 2xx
        self.stopping = asyncio.Event()
        self.rng = random.Random(20261202)

    async def request(
        self, kind: str, target: str, token: str, method: str, url: str, **kw: Any
    ) -> httpx.Response | None:
        try:
            response = await self.clients[(target, token)].request(method, url, **kw)
        except httpx.TransportError:
            self.outcomes.append(Outcome(time.monotonic(), kind, target, 0))
            return None
        self.outcomes.append(Outcome(time.monotonic(), kind, target, response.status_code))
        return response

    async def post(self, token: str, key: str, text: str, first: str) -> str | None:
        """One logical post, retried with the same key until it is acknowledged (or 60 s pass)."""
        self.texts[key] = text
        deadline = time.monotonic() + 60
        targets = itertools.cycle([first, *(t for t in self.urls if t != first)])
        while time.monotonic() < deadline:
            target = next(targets)
            response = await self.request("post", target, token, "POST", "/api/v1/statuses",
                                          json={"status": text}, headers={"Idempotency-Key": key})  # fmt: skip
            if response is not None and response.status_code == 200:
                status_id: str = response.json()["id"]
                self.acked[key] = status_id
                return status_id
            await asyncio.sleep(0.2)
        self.unanswered.add(key)
        return None

    async def writer(self, n: int) -> None:
        token = self.tokens[n]
        for i in itertools.count():
            if self.stopping.is_set():
                return
            await self.post(token, f"w{n}-{i}", f"fault load post {n}.{i}", "A" if i % 2 else "B")
            await asyncio.sleep(WRITE_PAUSE)

    async def liker(self, n: int) -> None:
        token = self.tokens[n]
        while not self.stopping.is_set():
            if self.acked:
                status_id = self.rng.choice(list(self.acked.values()))
                verb = self.rng.choice(["favourite", "favourite", "unfavourite"])
                await self.request("like", self.rng.choice(list(self.urls)), token, "POST",
                                   f"/api/v1/statuses/{status_id}/{verb}")  # fmt: skip
            await asyncio.sleep(0.1)

    async def reader(self, n: int) -> None:
        token = self.tokens[n]
        while not self.stopping.is_set():
            await self.request("read", self.rng.choice(list(self.urls)), token, "GET", "/api/v1/timelines/home")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def jobs_under_way(client: aioredis.Redis) -> tuple[int, list[bytes]]:
    """Queued jobs due now, and the jobs a worker holds. arq keeps a cron job's mark for a minute after it ran (so that
    it runs once): those are left out."""
    due = await client.zcount("arq:queue", "-inf", int(time.time() * 1000))
    held = [k async for k in client.scan_iter(match="arq:in-progress:*") if not k.startswith(b"arq:in-progress:cron:")]
    return int(due), held


async def shown_in_a_home(load: Load, tokens: list[str]) -> float:
    """When the next post acknowledged from now on showed in another user's home timeline (its first page)."""
    since = len(load.acked)
    deadline = time.monotonic() + 30
    while len(load.acked) <= since:
        assert time.monotonic() < deadline, "no post was acknowledged"
        await asyncio.sleep(0.01)
    status_id = list(load.acked.values())[since]
    reader = load.clients[("B", tokens[-1])]
    while time.monotonic() < deadline:
        page = await reader.get("/api/v1/timelines/home", params={"limit": 40})
        if page.status_code == 200 and status_id in [s["id"] for s in page.json()]:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError("new posts did not reach home timelines after Redis came back")


def first_success_after(outcomes: list[Outcome], moment: float, kind: str = "post") -> float | None:
    times = [o.at for o in outcomes if o.kind == kind and o.at >= moment and 200 <= o.status < 300]
    return min(times) - moment if times else None


async def walk(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """Every status of a timeline, page by page (limit 40, max_id)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 40}
    while True:
        page = await client.get(url, params=params)
        assert page.status_code == 200, (url, page.status_code, page.text)
        batch = page.json()
        if not batch:
            return found
        found += batch
        params["max_id"] = batch[-1]["id"]


async def test_the_deployment_survives_its_dependencies_failing_under_load(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    settings = load_settings(process_env(d.env, d.redis.url))
    async with open_runtime(settings, "cli") as runtime:
        svc = runtime.services
        people = [await accounts.register(svc, f"faulty{n}", "correct horse battery staple") for n in range(USERS)]
        tokens = [await accounts.create_token(svc, p.username) for p in people]
        for a in people:
            for b in people:
                if a.id != b.id:
                    await follows.follow(svc, a, b.id)
    started = {name: d.start(name).proc.pid for name in ("A", "B")}
    started["W"] = d.start("W", "worker").proc.pid
    load = Load({"A": d.procs["A"].url, "B": d.procs["B"].url}, tokens)
    tasks = [asyncio.create_task(job(n)) for n in range(USERS) for job in (load.writer, load.liker, load.reader)]
    events: dict[str, float] = {}
    crash_key = "crash-after-commit"
    try:
        await asyncio.sleep(3)
        events["redis killed"] = time.monotonic()
        d.redis.kill()
        await asyncio.sleep(1.0)
        d.redis.start()
        events["redis back"] = time.monotonic()
        events["home timelines live again"] = await shown_in_a_home(load, tokens)

        events["postgres stopped"] = time.monotonic()
        await asyncio.to_thread(d.pg.stop)
        await asyncio.sleep(4)
        await asyncio.to_thread(d.pg.start)
        events["postgres back"] = time.monotonic()
        await asyncio.sleep(4)

        events["postgres killed"] = time.monotonic()
        await asyncio.to_thread(d.pg.kill)
        await asyncio.sleep(2)
        await asyncio.to_thread(d.pg.start)
        events["postgres back after kill"] = time.monotonic()
        await asyncio.sleep(4)

        async with aioredis.Redis.from_url(d.redis.url) as watch:  # kill it while it holds jobs (mid fan-out)
            for _ in range(200):
                if (await jobs_under_way(watch))[1]:
                    break
                await asyncio.sleep(0.01)
        events["worker killed"] = time.monotonic()
        d.procs["W"].proc.send_signal(signal.SIGKILL)
        d.procs["W"].proc.wait(timeout=5)
        started["W2"] = (await asyncio.to_thread(d.start, "W2", "worker")).proc.pid
        await asyncio.sleep(3)

        # A web process dies right after a post's commit; its client sends the same key again to A.
        crashing = await asyncio.to_thread(d.start, "C", CIPHERFEED_TEST_CRASH_AFTER_COMMIT="1")
        load.urls["C"] = crashing.url
        load.clients[("C", tokens[0])] = httpx.AsyncClient(
            base_url=crashing.url, headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=15
        )
        events["web process crashed"] = time.monotonic()
        crashed_id = await load.post(tokens[0], crash_key, "posted as its web process died", "C")
        assert await asyncio.to_thread(crashing.proc.wait, 10) == -signal.SIGKILL, "the fault point fired"
        del load.urls["C"]
        await asyncio.sleep(2)
    finally:
        load.stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert crashed_id is not None and load.outcomes[-1].status == 200

    # The work the load caused settles: the outbox is relayed, the fan-outs have run.
    engine = db.make_engine(settings.database_url)
    settle_started = time.monotonic()
    try:
        async with aioredis.Redis.from_url(d.redis.url) as queue:
            while True:
                async with engine.connect() as conn:
                    waiting = await conn.scalar(sa.select(sa.func.count()).select_from(outbox))
                due, running = await jobs_under_way(queue)
                if not waiting and not due and not running:
                    break
                assert time.monotonic() - settle_started < 60, (waiting, due, running)
                await asyncio.sleep(0.2)
        settle_seconds = time.monotonic() - settle_started

        # Every acknowledged post exists, reads back, once, and is in every follower's home timeline.
        acked = dict(load.acked)
        texts_by_id = {status_id: load.texts[key] for key, status_id in acked.items()}
        client = load.clients[("A", tokens[0])]
        for n, person in enumerate(people):
            own = await walk(load.clients[("A", tokens[n])], f"/api/v1/accounts/{person.id}/statuses")
            seen = Counter(s["content"] for s in own)
            assert all(count == 1 for count in seen.values()), [t for t, c in seen.items() if c > 1][:5]
            home_ids = {s["id"] for s in await walk(load.clients[("B", tokens[n])], "/api/v1/timelines/home")}
            missing = set(acked.values()) - home_ids
            assert not missing, f"{len(missing)} acknowledged posts missing from {person.username}'s home"
        for status_id, text in texts_by_id.items():
            answer = await client.get(f"/api/v1/statuses/{status_id}")
            assert answer.status_code == 200 and text in answer.json()["content"], (status_id, answer.text)
        async with engine.connect() as conn:
            stored = await conn.scalar(sa.select(sa.func.count()).select_from(posts))
            like_rows = dict((await conn.execute(
                sa.select(likes.c.post_id, sa.func.count()).group_by(likes.c.post_id))).all())  # fmt: skip
        assert stored <= len(load.texts), f"{stored} posts stored for {len(load.texts)} logical posts: duplicates"
        assert stored >= len(acked)
        for status_id in acked.values():
            shown = (await client.get(f"/api/v1/statuses/{status_id}")).json()["favourites_count"]
            assert shown == like_rows.get(int(status_id), 0), status_id
    finally:
        await engine.dispose()
        await load.close()

    # The processes that started are the ones still running; no 500 anywhere; 503s only while PostgreSQL was away.
    for name in ("A", "B", "W2"):
        proc = d.procs[name]
        assert proc.proc.poll() is None and proc.proc.pid == started[name], f"{name} exited: {proc.output()[-3000:]}"
        assert "Traceback" not in proc.output(), f"{name}: {proc.output()[-3000:]}"
    outages = [(events["postgres stopped"], events["postgres back"] + RECOVERY_LIMIT),
               (events["postgres killed"], events["postgres back after kill"] + RECOVERY_LIMIT)]  # fmt: skip
    by_status = Counter((o.kind, o.status) for o in load.outcomes)
    assert not [o for o in load.outcomes if o.status >= 500 and o.status != 503], by_status
    assert not [o for o in load.outcomes if o.status == 0 and o.target != "C"], "A and B always answered"
    for o in load.outcomes:
        if o.status == 503:
            assert any(start <= o.at <= end for start, end in outages), f"{o} outside the database outages"
    recovery = {
        name: first_success_after(load.outcomes, events[name])
        for name in ("redis back", "postgres back", "postgres back after kill")
    }
    recovery["home timelines, after redis back"] = events["home timelines live again"] - events["redis back"]
    for name, seconds in recovery.items():
        assert seconds is not None and seconds <= RECOVERY_LIMIT, (name, seconds)

    report = [
        f"fault suite: {len(load.outcomes)} requests, {len(acked)} posts acknowledged of {len(load.texts)} "
        f"({len(load.unanswered)} never), {stored} stored, settled {settle_seconds:.1f} s after the load",
        "answers: " + ", ".join(f"{k} {status or 'no answer'}: {n}" for (k, status), n in sorted(by_status.items())),
        "recovered (first write, or a new post in a home timeline) after: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in recovery.items()),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(report))
