"""Issue 9 in the scaled mode: two real ``cipherfeed serve`` processes (A and B), a real ``cipherfeed worker``, a
PostgreSQL database and a Redis server of this module's own (so that it can restart it, and capture every command
with MONITOR). A client streams from B while people write through A.

Runs once, in the PostgreSQL pass (several processes on one database is the scaled mode).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKEND, _pg_url, _psql
from tests.feed.processes import Account, AppProcess, RedisServer, like_count, process_env, register
from tests.feed.sse import Stream, open_stream, post_id_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="the scaled mode's processes run once, in the PostgreSQL pass"),
]


@dataclass
class Cluster:
    workdir: Path
    env: dict[str, str]
    redis: RedisServer
    procs: dict[str, AppProcess] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    names: Iterator[int] = field(default_factory=lambda: iter(range(1000)))

    def start(self, name: str, *command: str, **extra: str) -> AppProcess:
        env = process_env(self.env, self.redis.url) | extra
        proc = AppProcess(name, env, self.workdir, list(command) or None)
        proc.wait_ready()
        self.procs[name] = proc
        return proc

    @property
    def urls(self) -> dict[str, str]:
        return {name: self.procs[name].url for name in ("A", "B")}

    async def account(self, name: str) -> Account:
        return await register(self.urls, f"{name}{next(self.names)}", self.clients)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, root_key_json: str) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("scaled")
    name = f"cipherfeed_live_{os.getpid()}_{secrets.token_hex(3)}"
    _psql(f"CREATE DATABASE {name}")
    redis = RedisServer(workdir)
    redis.start()
    env = {
        "CIPHERFEED_DATABASE_URL": _pg_url(name),
        "CIPHERFEED_DATA_DIR": str(workdir / "data"),
        "CIPHERFEED_ROOT_KEY": root_key_json,
        "CIPHERFEED_SECRET_KEY": "live-secret-" + "y" * 40,
        "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "1000",
    }
    subprocess.run([sys.executable, "-m", "feed", "db", "upgrade"], env=process_env(env, redis.url), check=True,
                   capture_output=True, cwd=workdir)  # fmt: skip
    made = Cluster(workdir, env, redis)
    try:
        made.start("A")
        made.start("B")
        made.start("W", "worker")
        yield made
    finally:
        made.stop()
        redis.kill()
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def scaled(cluster: Cluster) -> AsyncIterator[Cluster]:
    yield cluster
    for http in cluster.clients:
        await http.aclose()
    cluster.clients.clear()


async def live(account: Account, where: str, path: str = "/", **headers: str) -> Stream:
    page = (await account.on[where].get(path)).text
    url = page.split('sse-connect="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    return await open_stream(account.on[where], url, **headers)


async def in_home(account: Account, where: str, posts: list[int]) -> None:
    """Until each of ``posts`` is in the account's home timeline (their fan-outs have run)."""
    deadline = time.monotonic() + 10
    while True:
        page = (await account.on[where].get("/")).text
        if all(f'id="post-{post}"' in page for post in posts):
            return
        assert time.monotonic() < deadline, "the posts did not reach the home timeline"
        await asyncio.sleep(0.05)


class Monitor:
    """Every command Redis runs (pub/sub messages included, as the PUBLISH commands that sent them)."""

    def __init__(self, redis: RedisServer, path: Path) -> None:
        binary = shutil.which("redis-cli")
        assert binary, "redis-cli is needed for MONITOR"
        self.path = path
        self._out = path.open("wb")
        self.proc = subprocess.Popen([binary, "-p", str(redis.port), "monitor"], stdout=self._out)

    def text(self) -> str:
        self.proc.terminate()
        self.proc.wait(5)
        self._out.close()
        return self.path.read_text(errors="replace")


async def test_what_is_written_through_one_process_streams_from_another(scaled: Cluster) -> None:
    canary = f"CANARYlive{secrets.token_hex(6)}"
    monitor = Monitor(scaled.redis, scaled.workdir / "monitor.log")
    alice, bob, carol = await scaled.account("alice"), await scaled.account("bob"), await scaled.account("carol")
    assert (await bob.post("B", f"/@{alice.name}/follow")).status_code == 303
    home = await live(bob, "B")
    public = await live(carol, "B", "/public")
    profile = await live(carol, "B", f"/@{alice.name}")
    try:
        started = time.monotonic()
        first = await alice.compose("A", f"{canary} first")
        event = await home.next("post", timeout=1.0)
        assert event.at - started < 1.0, f"took {event.at - started:.3f} s"
        assert post_id_of(event) == first and canary in event.data
        assert 'form="post-actions"' in event.data and bob.csrf not in event.data  # drawn for a reader, token-free
        assert post_id_of(await public.next("post")) == first

        private = await alice.compose("A", f"{canary} followers only", visibility="followers")
        assert post_id_of(await home.next("post")) == private

        assert (await bob.post("A", f"/posts/{first}/like")).status_code == 303
        assert json.loads((await home.next("counts")).data) == {str(first): [1, 0]}
        assert (await alice.post("A", f"/posts/{first}/edit", {"status": f"{canary} edited"})).status_code == 303
        edit = await home.next("edit")
        assert post_id_of(edit) == first and "edited" in edit.data
        assert (await alice.post("A", f"/posts/{first}/delete", {"confirm": "yes"})).status_code == 303
        assert (await home.next("delete")).data == str(first)

        # A post deleted before its fan-out ran never reaches a home stream.
        scaled.procs["W"].stop()
        gone = await alice.compose("A", f"{canary} gone soon")
        assert (await alice.post("A", f"/posts/{gone}/delete", {"confirm": "yes"})).status_code == 303
        scaled.start("W", "worker")
        after = await alice.compose("A", f"{canary} after")
        assert post_id_of(await home.next("post", timeout=5)) == after
        assert gone not in [post_id_of(e) for e in home.seen if e.event == "post"]

        for stream in (public, profile):  # carol does not follow alice
            assert private not in [post_id_of(e) for e in stream.seen if e.event in ("post", "edit")]
        assert first in [post_id_of(e) for e in profile.seen if e.event == "post"]
    finally:
        for stream in (home, public, profile):
            await stream.close()
    captured = monitor.text()
    assert "xadd" in captured.lower() and "publish" in captured.lower(), "the capture saw the streams at work"
    assert canary not in captured, "post text went through Redis"
    dump = await asyncio.to_thread(
        subprocess.run, ["redis-cli", "-p", str(scaled.redis.port), "--scan"], capture_output=True, check=True
    )
    assert b"cf:ev:posts" in dump.stdout and b"cf:ev:{u" in dump.stdout


async def test_a_process_killed_right_after_a_commit_loses_nothing(scaled: Cluster) -> None:
    """A process dies between committing a write and doing anything about it; the other one's relay delivers the
    event, invalidates the caches and queues the fan-out."""
    alice, bob = await scaled.account("alice"), await scaled.account("bob")
    await bob.post("B", f"/@{alice.name}/follow")
    home = await live(bob, "B")
    try:
        doomed = scaled.start("dying", CIPHERFEED_TEST_CRASH_AFTER_COMMIT="1")
        via = httpx.AsyncClient(base_url=doomed.url, cookies=alice.on["A"].cookies, timeout=10)
        try:
            with pytest.raises(httpx.HTTPError):
                await via.post("/posts", data={"csrf_token": alice.csrf, "status": "through a crash"})
        finally:
            await via.aclose()
        assert doomed.proc.wait(10) == -signal.SIGKILL
        event = await home.next("post", timeout=5)
        post = post_id_of(event)
        page = (await bob.on["B"].get("/")).text
        assert f'id="post-{post}"' in page, "the fan-out ran: the post is in bob's home"

        assert like_count((await bob.on["B"].get(f"/posts/{post}")).text, post) == 0  # cached on B now
        doomed = scaled.start("dying2", CIPHERFEED_TEST_CRASH_AFTER_COMMIT="1")
        via = httpx.AsyncClient(base_url=doomed.url, cookies=bob.on["A"].cookies, timeout=10)
        try:
            with pytest.raises(httpx.HTTPError):
                await via.post(f"/posts/{post}/like", data={"csrf_token": bob.csrf})
        finally:
            await via.aclose()
        doomed.proc.wait(10)
        deadline = time.monotonic() + 5
        while like_count((await bob.on["B"].get(f"/posts/{post}")).text, post) != 1:
            assert time.monotonic() < deadline, "B still shows the like count from before the crash"
            await asyncio.sleep(0.1)
        assert json.loads((await home.next("counts")).data) == {str(post): [1, 0]}
    finally:
        await home.close()


async def test_resume_redis_restart_and_shutdown(scaled: Cluster) -> None:
    alice, bob, carol = await scaled.account("alice"), await scaled.account("bob"), await scaled.account("carol")
    await bob.post("B", f"/@{alice.name}/follow")

    # Disconnect, three posts, come back with Last-Event-ID: exactly those three, in order, once.
    stream = await live(bob, "B")
    await alice.compose("A", "before")
    resume_at = (await stream.next("post")).id
    await stream.close()
    missed = [await alice.compose("A", f"missed {n}") for n in range(3)]
    await in_home(bob, "B", missed)  # their fan-outs ran (side by side: in any order)
    again = await open_stream(bob.on["B"], "/events?timeline=home", **{"Last-Event-ID": resume_at or ""})
    assert [post_id_of(await again.next("post")) for _ in missed] == missed
    assert await again.quiet(1.0, "post") == []
    old = await open_stream(bob.on["B"], "/events?timeline=home", **{"Last-Event-ID": "1-0/1-0"})
    assert (await old.next()).event == "resync"
    await old.close()

    # Redis restarts (and loses everything) mid-stream: the streams resync, and what was written meanwhile arrives.
    public = await live(carol, "B", "/public")
    scaled.redis.kill()
    during = await alice.compose("A", "while Redis was away")
    scaled.redis.start()
    resync = await again.next("resync", timeout=10)
    assert resync.id
    fragment = await bob.on["B"].get("/?fragment=timeline", headers={"HX-Request": "true"})
    assert f'id="post-{during}"' in fragment.text, "the refetched timeline has the post written meanwhile"
    arrived = await public.quiet(5.0)
    assert during in [post_id_of(e) for e in arrived if e.event == "post"] or "resync" in [e.event for e in arrived]
    assert scaled.procs["W"].proc.poll() is None, "the worker outlived the restart of Redis"
    later = await alice.compose("A", "after Redis came back")
    got: list[int] = []
    while later not in got:  # the post written meanwhile comes too once its fan-out ran into the new stream
        got.append(post_id_of(await again.next("post", timeout=5)))
    assert set(got) <= {during, later} and len(got) == len(set(got))

    # B stops: its streams end at once, and the client goes on at A from where it was.
    position = again.last_id
    started = time.monotonic()
    scaled.procs["B"].proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(again.ended.wait(), 5)
    meanwhile = await alice.compose("A", "while B restarts")
    moved = await open_stream(bob.on["A"], "/events?timeline=home", **{"Last-Event-ID": position or ""})
    assert post_id_of(await moved.next("post", timeout=5)) == meanwhile
    # uvicorn re-raises the signal once it has shut down cleanly, so a clean stop ends "killed by SIGTERM".
    assert await asyncio.to_thread(scaled.procs["B"].proc.wait, 10) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 5, "serve stopped within a few seconds"
    for s in (again, public, moved):
        await s.close()
    scaled.start("B")
