"""Issue 9 in the embedded mode: one real ``cipherfeed serve`` process (SQLite, no Redis: the outbox relay, the
streams and the hub all in process), read over real HTTP by server-sent event clients, Mastodon.py and a WebSocket
client. Runs in the SQLite pass (the scaled mode's processes are in ``test_live_processes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BACKEND, CSRF_RE, PASSWORD
from tests.feed.processes import LIMITS, AppProcess, metric
from tests.feed.sse import Stream, open_stream, post_id_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "sqlite", reason="the embedded mode's live tests run once, in the SQLite pass"),
]


def embedded_env(data_dir: Path, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    return inherited | {
        "CIPHERFEED_DATA_DIR": str(data_dir),
        "CIPHERFEED_EMBEDDED_CRON": "off",
        "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP": "1000",
        **extra,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    workdir = tmp_path_factory.mktemp("live")
    settings = embedded_env(workdir / "data", CIPHERFEED_STREAM_QUEUE="8", CIPHERFEED_FANOUT_MAX_FOLLOWERS="2")
    proc = AppProcess("embedded", settings, workdir)
    proc.wait_ready()
    yield proc
    proc.stop()


@dataclass
class Person:
    name: str
    http: httpx.AsyncClient
    csrf: str = ""
    token: str = ""

    async def form(self, url: str, data: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post(url, data={"csrf_token": self.csrf, **(data or {})})

    async def compose(self, text: str, **fields: str) -> int:
        response = await self.form("/posts", {"status": text, **fields})
        assert response.status_code == 303, response.text
        location = response.headers["location"]
        return int(location.split("#post-")[-1] if "#post-" in location else location.rsplit("/", 1)[-1])

    async def live(self, path: str = "/", **headers: str) -> Stream:
        """The live stream of the page at ``path``, as its htmx would open it."""
        page = (await self.http.get(path)).text
        url = page.split('sse-connect="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        return await open_stream(self.http, url, **headers)


@dataclass
class World:
    base: str
    people: dict[str, Person] = field(default_factory=dict)

    async def person(self, name: str) -> Person:
        http = httpx.AsyncClient(base_url=self.base, limits=LIMITS, timeout=30)
        csrf = CSRF_RE.search((await http.get("/register")).text)
        assert csrf
        data = {"csrf_token": csrf.group(1), "username": name, "password": PASSWORD, "password_confirm": PASSWORD}
        response = await http.post("/register", data=data)
        assert response.status_code == 303, response.text
        found = CSRF_RE.search((await http.get("/")).text)
        assert found
        self.people[name] = person = Person(name, http, found.group(1))
        return person

    async def close(self) -> None:
        for person in self.people.values():
            await person.http.aclose()


_counter = iter(range(10_000))


@pytest.fixture
async def world(server: AppProcess) -> AsyncIterator[Any]:
    made = World(server.url)
    suffix = next(_counter)

    async def person(name: str) -> Person:
        return await made.person(f"{name}{suffix}")

    yield person
    await made.close()


def api_token(server: AppProcess, name: str) -> str:
    found = subprocess.run(
        [sys.executable, "-m", "feed", "users", "token", name],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=server.log.parent,
    )
    return found.stdout.strip()


async def test_home_public_and_profile_pages_update_live(world: Any) -> None:
    alice, bob, carol = await world("alice"), await world("bob"), await world("carol")
    assert (await bob.form(f"/@{alice.name}/follow")).status_code == 303
    home = await bob.live("/")
    public = await carol.live("/public")
    profile = await carol.live(f"/@{alice.name}")
    visitors = [httpx.AsyncClient(base_url=alice.http.base_url, limits=LIMITS, timeout=30) for _ in range(2)]
    logged_out = [await Person("", http).live("/public") for http in visitors]
    try:
        # The stream's headers went through the middleware (its body chunks go past it, feed.web.middleware.DirectSend)
        assert home.response_headers["content-security-policy"].startswith("default-src 'none'")
        assert home.response_headers["cache-control"] == "no-store"
        started = time.monotonic()
        first = await alice.compose("hello <live> world")
        event = await home.next("post", timeout=1.0)
        assert event.at - started < 1.0
        assert post_id_of(event) == first and "hello &lt;live&gt; world" in event.data
        # Rendered for a logged-in reader: buttons of their page's one form, which holds their token (no post does)
        assert 'form="post-actions"' in event.data and bob.csrf not in event.data
        shown_to_carol = await public.next("post")
        assert post_id_of(shown_to_carol) == first
        assert 'form="post-actions"' in shown_to_carol.data
        assert carol.csrf not in shown_to_carol.data and bob.csrf not in shown_to_carol.data
        assert post_id_of(await profile.next("post")) == first
        # Logged-out visitors get the one rendering every visitor gets: no forms, nobody's token
        seen_logged_out = [await stream.next("post") for stream in logged_out]
        assert seen_logged_out[0].data == seen_logged_out[1].data
        assert "hello &lt;live&gt; world" in seen_logged_out[0].data and "csrf_token" not in seen_logged_out[0].data

        private = await alice.compose("for followers", visibility="followers")
        assert post_id_of(await home.next("post")) == private

        assert (await bob.form(f"/posts/{first}/like")).status_code == 303
        counts = json.loads((await home.next("counts")).data)
        assert counts == {str(first): [1, 0]}

        edited = await alice.form(f"/posts/{first}/edit", {"status": "hello again"})
        assert edited.status_code == 303
        edit = await home.next("edit")
        assert post_id_of(edit) == first and "hello again" in edit.data and "edited" in edit.data

        assert (await alice.form(f"/posts/{first}/delete", {"confirm": "yes"})).status_code == 303
        assert (await home.next("delete")).data == str(first)

        # The followers-only post never reached carol's streams, which saw the public one.
        for stream in (public, profile):
            assert private not in [post_id_of(e) for e in stream.seen if e.event in ("post", "edit")]
    finally:
        for stream in (home, public, profile, *logged_out):
            await stream.close()
        for http in visitors:
            await http.aclose()


async def test_a_popular_authors_posts_reach_their_followers_streams_without_a_fan_out(world: Any) -> None:
    """Past CIPHERFEED_FANOUT_MAX_FOLLOWERS (2 here) an author's posts are not fanned out; their followers' home
    streams take them from the posts stream instead."""
    star = await world("star")
    fans = [await world(f"fan{n}") for n in range(3)]
    for fan in fans:
        assert (await fan.form(f"/@{star.name}/follow")).status_code == 303
    stranger = await world("stranger")
    streams = [await fan.live("/") for fan in fans]
    other = await stranger.live("/")
    try:
        post = await star.compose("to all my fans")
        for stream in streams:
            assert post_id_of(await stream.next("post")) == post
        assert await other.quiet(1.0, "post") == [], "not to someone who does not follow"
    finally:
        for stream in (*streams, other):
            await stream.close()


async def test_a_popular_boosters_boosts_reach_their_followers_streams_without_a_fan_out(
    world: Any, server: AppProcess
) -> None:
    """A boost by someone past CIPHERFEED_FANOUT_MAX_FOLLOWERS is not fanned out either: the posts stream brings it
    to the home streams of the booster's followers (pages and apps), with "star boosted" above it; not to its
    author, nor to someone who does not follow the booster."""
    import websockets

    star, writer, stranger = await world("star"), await world("writer"), await world("stranger")
    fans = [await world(f"fan{n}") for n in range(3)]
    for person in (*fans, writer):
        assert (await person.form(f"/@{star.name}/follow")).status_code == 303
    streams = [await fan.live("/") for fan in fans]
    strangers, writers = await stranger.live("/"), await writer.live("/")
    token = await asyncio.to_thread(api_token, server, fans[0].name)
    ws_url = server.url.replace("http://", "ws://") + f"/api/v1/streaming?access_token={token}"
    try:
        async with websockets.connect(ws_url) as user_ws:
            await user_ws.send(json.dumps({"type": "subscribe", "stream": "user"}))
            await asyncio.sleep(0.5)  # the subscription is in
            post = await writer.compose("worth a boost")
            assert (await star.form(f"/posts/{post}/boost")).status_code == 303
            message = json.loads(await asyncio.wait_for(user_ws.recv(), 5))
            assert message["stream"] == ["user"] and message["event"] == "update"
            status = json.loads(message["payload"])
            assert status["account"]["username"] == star.name and status["reblog"]["id"] == str(post)
        for stream in streams:
            event = await stream.next("post")
            assert post_id_of(event) == post and f"{star.name}</a> boosted" in event.data
        assert await strangers.quiet(1.0, "post") == [], "not to someone who does not follow the booster"
        await writers.quiet(0.5)
        own = [e for e in writers.seen if e.event == "post"]
        assert [post_id_of(e) for e in own] == [post], "their own post, once"
        assert "boosted" not in own[0].data, "the author is not shown the boost"
    finally:
        for stream in (*streams, strangers, writers):
            await stream.close()


async def test_a_client_that_comes_back_gets_exactly_what_it_missed(world: Any) -> None:
    alice, bob = await world("alice"), await world("bob")
    await bob.form(f"/@{alice.name}/follow")
    stream = await bob.live("/")
    await alice.compose("before")
    resume_at = (await stream.next("post")).id
    assert resume_at
    await stream.close()
    missed = [await alice.compose(f"missed {n}") for n in range(3)]
    deadline = time.monotonic() + 10
    while True:  # until their fan-outs ran (side by side: in any order)
        page = (await bob.http.get("/")).text
        if all(f'id="post-{post}"' in page for post in missed):
            break
        assert time.monotonic() < deadline, "the posts did not reach bob's home timeline"
        await asyncio.sleep(0.05)
    again = await open_stream(bob.http, "/events?timeline=home", **{"Last-Event-ID": resume_at})
    try:
        got = [post_id_of(await again.next("post")) for _ in range(3)]
        assert got == missed[::-1][::-1]  # in the order they were made
        assert await again.quiet(1.0, "post") == [], "nothing twice"
        later = await alice.compose("live again")
        assert post_id_of(await again.next("post")) == later
    finally:
        await again.close()
    too_old = await open_stream(bob.http, "/events?timeline=home", **{"Last-Event-ID": "1-0/1-0"})
    try:
        resync = await too_old.next()
        assert resync.event == "resync" and resync.id and resync.id != "1-0/1-0"
    finally:
        await too_old.close()


async def test_streams_close_at_logout_password_change_and_account_deletion(world: Any) -> None:
    alice = await world("alice")
    other = httpx.AsyncClient(base_url=alice.http.base_url, cookies=alice.http.cookies, timeout=30)
    try:
        stream = await alice.live("/")
        await alice.form("/logout")
        await asyncio.wait_for(stream.ended.wait(), 3)
    finally:
        await other.aclose()

    bob = await world("bob")
    # A second browser of bob's: its stream closes when bob changes his password in the first.
    second = World(str(bob.http.base_url))
    phone = httpx.AsyncClient(base_url=bob.http.base_url, timeout=30)
    try:
        csrf = CSRF_RE.search((await phone.get("/login")).text)
        assert csrf
        login = await phone.post("/login", data={"csrf_token": csrf.group(1), "username": bob.name,
                                                "password": PASSWORD})  # fmt: skip
        assert login.status_code == 303
        phone_stream = await Person(bob.name, phone).live("/")
        changed = await bob.form("/settings/password", {"current_password": PASSWORD, "new_password": PASSWORD + "!",
                                                       "new_password_confirm": PASSWORD + "!"})  # fmt: skip
        assert changed.status_code in (200, 303), changed.text
        await asyncio.wait_for(phone_stream.ended.wait(), 3)
        own = await bob.live("/")
        deleted = await bob.form("/settings/delete", {"password": PASSWORD + "!"})
        assert deleted.status_code in (200, 303), deleted.text
        await asyncio.wait_for(own.ended.wait(), 3)
    finally:
        await phone.aclose()
        await second.close()


class RawReader:
    """A public page stream read as bytes (cheap enough for a hundred at once): when each post arrived."""

    POST = re.compile(rb'event: post\ndata: <li><article class="post" id="post-(\d+)"')

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrived: dict[int, float] = {}
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read())
        await asyncio.wait_for(self.ready.wait(), 10)

    async def _read(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /events?timeline=public HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        tail = b""
        try:
            while True:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    return
                self.ready.set()
                now = time.monotonic()
                data = tail + chunk
                last = 0
                for found in self.POST.finditer(data):
                    self.arrived.setdefault(int(found.group(1)), now)
                    last = found.end()
                tail = data[max(last, len(data) - 200) :]
        finally:
            writer.close()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self.task


async def test_a_reader_that_stops_reading_is_dropped_and_does_not_slow_the_others(
    world: Any, server: AppProcess
) -> None:
    """A client that stops reading fills the server's socket buffers (about 1.6 MB on loopback), then its queue (8
    messages here), and is dropped with a resync; a hundred others get every post meanwhile, promptly."""
    alice = await world("alice")
    readers = [RawReader(server.port) for _ in range(100)]
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(("127.0.0.1", server.port))
    stuck.sendall(b"GET /events?timeline=public HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        for reader in readers:
            await reader.start()
        made: dict[int, float] = {}
        for n in range(600):  # about 3.6 kB each as HTML
            started = time.monotonic()
            made[await alice.compose(f"{n} " + "&" * 490)] = started
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(len(r.arrived) < len(made) for r in readers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the readers fill their dicts as bytes arrive
        lags = sorted(r.arrived[post] - started for r in readers for post, started in made.items()
                      if post in r.arrived)  # fmt: skip
        assert len(lags) == 100 * len(made), "every reader got every post"
        assert lags[int(len(lags) * 0.99)] < 1.0, f"p99 delivery {lags[int(len(lags) * 0.99)]:.3f} s"
        text = (await alice.http.get("/metrics")).text
        assert metric(text, "cipherfeed_stream_drops_total") >= 1, "the reader that stopped was dropped"
        # Every write was counted, with its lag from the commit (noted per write, counted after each broadcast)
        assert metric(text, "cipherfeed_stream_events_sent_total", kind="page") >= len(lags)
        assert metric(text, "cipherfeed_stream_delivery_seconds_count") >= len(lags)
        assert metric(text, "cipherfeed_stream_delivery_seconds_bucket", le="10.0") >= len(lags)
        stuck.setblocking(False)
        seen = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                chunk = stuck.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.02)
                continue
            if not chunk:
                break
            seen += chunk
        assert b"event: resync\ndata: \n\n" in seen[-200:], "told to resync last"
        assert seen.endswith(b"\r\n0\r\n\r\n"), "then the stream ended (the last chunk of a chunked body)"
    finally:
        stuck.close()
        for reader in readers:
            await reader.close()


async def test_mastodon_clients_stream_over_sse_and_websocket(world: Any, server: AppProcess) -> None:
    import websockets
    from mastodon import CallbackStreamListener, Mastodon

    alice, bob = await world("alice"), await world("bob")
    await bob.form(f"/@{alice.name}/follow")
    token = await asyncio.to_thread(api_token, server, bob.name)
    client = Mastodon(access_token=token, api_base_url=server.url, version_check_mode="none")
    assert await asyncio.to_thread(client.stream_healthy)
    updates: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    listener = CallbackStreamListener(update_handler=lambda status: loop.call_soon_threadsafe(updates.put_nowait,
                                                                                              status))  # fmt: skip
    handle = await asyncio.to_thread(client.stream_user, listener, run_async=True)
    ws_url = server.url.replace("http://", "ws://") + "/api/v1/streaming"
    try:
        async with (
            websockets.connect(f"{ws_url}?access_token={token}") as user_ws,
            websockets.connect(ws_url, subprotocols=[websockets.Subprotocol(token)]) as public_ws,
        ):
            await user_ws.send(json.dumps({"type": "subscribe", "stream": "user"}))
            await public_ws.send(json.dumps({"type": "subscribe", "stream": "public"}))
            await asyncio.sleep(0.5)  # the subscriptions are in
            post = await alice.compose("to the apps")
            status = await asyncio.wait_for(updates.get(), 5)
            assert str(status["id"]) == str(post) and "to the apps" in status["content"]
            for ws, stream in ((user_ws, "user"), (public_ws, "public")):
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert message["stream"] == [stream] and message["event"] == "update"
                assert json.loads(message["payload"])["id"] == str(post)
            await public_ws.send(json.dumps({"type": "unsubscribe", "stream": "public"}))
            await asyncio.sleep(0.3)
            await alice.form(f"/posts/{post}/delete", {"confirm": "yes"})
            message = json.loads(await asyncio.wait_for(user_ws.recv(), 5))
            assert message == {"stream": ["user"], "event": "delete", "payload": str(post)}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(public_ws.recv(), 1.0)
            await public_ws.send("not json")
            assert "error" in json.loads(await asyncio.wait_for(public_ws.recv(), 5))
            handle.close()
            # Erasing the account revokes its tokens: their streams close.
            assert (await bob.form("/settings/delete", {"password": PASSWORD})).status_code in (200, 303)
            await asyncio.wait_for(user_ws.wait_closed(), 5)
    finally:
        handle.close()
    ws_base = server.url.replace("http://", "ws://")
    assert (await alice.http.get("/api/v1/instance")).json()["urls"]["streaming_api"] == ws_base
    assert (await alice.http.get("/api/v2/instance")).json()["configuration"]["urls"]["streaming"] == ws_base
    assert token not in server.output(), "a token in a query string reached the log"


async def test_notifications_arrive_live_in_every_page_and_in_the_apps(world: Any, server: AppProcess) -> None:
    import websockets

    alice, bob = await world("alice"), await world("bob")
    token = await asyncio.to_thread(api_token, server, alice.name)
    public = await alice.live("/public")  # not her home: the count in the navigation comes to every page
    ws_url = server.url.replace("http://", "ws://") + "/api/v1/streaming"
    try:
        async with websockets.connect(f"{ws_url}?access_token={token}&stream=user:notification") as ws:
            await asyncio.sleep(0.5)  # the subscription is in
            assert (await bob.form(f"/@{alice.name}/follow")).status_code == 303
            assert (await public.next("unread")).data == "1"
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert message["stream"] == ["user:notification"] and message["event"] == "notification"
            note = json.loads(message["payload"])
            assert note["type"] == "follow" and note["account"]["username"] == bob.name and "status" not in note
            post = await alice.compose("worth a like")
            assert (await bob.form(f"/posts/{post}/like")).status_code == 303
            assert (await public.next("unread")).data == "2"
            note = json.loads(json.loads(await asyncio.wait_for(ws.recv(), 5))["payload"])
            assert note["type"] == "favourite" and note["status"]["id"] == str(post)
            # Her own post is no news to her: two notifications, two counts.
            assert [e.event for e in public.seen].count("unread") == 2
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
    finally:
        await public.close()


async def test_blocks_and_mutes_reach_the_live_streams(world: Any) -> None:
    alice, bob, carol = await world("alice"), await world("bob"), await world("carol")
    await alice.form(f"/@{carol.name}/follow")
    await alice.form(f"/@{bob.name}/block")
    await alice.form(f"/@{carol.name}/mute")
    public = await alice.live("/public")
    home = await alice.live("/")
    watcher = await carol.live("/public")
    try:
        from_bob = await bob.compose("bob, live")
        from_carol = await carol.compose("carol, live")
        seen = [post_id_of(await watcher.next("post")) for _ in range(2)]
        assert sorted(seen) == sorted([from_bob, from_carol])  # carol's page gets both
        mine = await alice.compose("alice, live")  # a post after both: once it arrives, the others would have
        assert post_id_of(await public.next("post")) == mine
        assert post_id_of(await home.next("post")) == mine
        for stream in (public, home):
            shown = [post_id_of(e) for e in stream.seen if e.event == "post"]
            assert from_bob not in shown and from_carol not in shown, (stream, shown)
        # The block goes both ways: bob's public page does not get alice's posts either.
        bobs = await bob.live("/public")
        try:
            later = await alice.compose("alice again")
            after = await carol.compose("carol after")
            assert post_id_of(await bobs.next("post")) == after
            assert later not in [post_id_of(e) for e in bobs.seen if e.event == "post"]
        finally:
            await bobs.close()
    finally:
        for stream in (public, home, watcher):
            await stream.close()


async def test_a_follower_not_yet_approved_gets_no_followers_only_post_live(world: Any, server: AppProcess) -> None:
    alice, bob = await world("alice"), await world("bob")
    saved = await alice.form("/settings", {"display_name": "", "bio": "", "email": "", "locked": "on"})
    assert saved.status_code == 303
    assert (await bob.form(f"/@{alice.name}/follow")).status_code == 303  # a request: alice has not approved it
    home = await bob.live("/")
    profile = await bob.live(f"/@{alice.name}")
    try:
        hidden = await alice.compose("for approved followers only", visibility="followers")
        shown = await alice.compose("for everyone")
        assert post_id_of(await profile.next("post")) == shown  # the public post comes; the other never did
        await home.quiet(0.5)
        for stream in (home, profile):
            assert hidden not in [post_id_of(e) for e in stream.seen if e.event in ("post", "edit")]
        requests = (await alice.http.get("/follow_requests")).text
        approve = re.search(r'action="(/follow_requests/\d+/authorize)"', requests)
        assert approve is not None
        assert (await alice.form(approve.group(1))).status_code == 303
        later = await alice.compose("approved now", visibility="followers")
        assert post_id_of(await home.next("post")) == later
    finally:
        await home.close()
        await profile.close()


async def test_shutdown_closes_every_stream_at_once(tmp_path: Path) -> None:
    proc = AppProcess("shutdown", embedded_env(tmp_path / "data"), tmp_path)
    proc.wait_ready()
    try:
        http = httpx.AsyncClient(base_url=proc.url, limits=LIMITS, timeout=30)
        streams = [await open_stream(http, "/events?timeline=public") for _ in range(20)]
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(s.ended.wait() for s in streams)), 5)
        await asyncio.to_thread(proc.proc.wait, 10)
        assert time.monotonic() - started < 5, "serve stopped within a few seconds"
        await http.aclose()
    finally:
        proc.stop()
