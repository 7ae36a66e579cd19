"""Batch-encrypt jobs (``feed.services.rotation``): root and user key rotation while requests are served, crashes in
the middle, dry runs, second runs, re-encryption to a newer Sealed format, the queued per-user rotation.

Requests go through the app's real middleware and routes (httpx's ASGI transport), concurrently with the job, in
the same event loop: every chunk the job commits lands between requests. Chunks are made small so that a few dozen
posts take several chunks.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import sqlalchemy as sa

from crypto import blind_index
from crypto import sealed as sealed_format
from feed.errors import Conflict
from feed.services import accounts, keystatus, rotation
from feed.services import posts as post_service
from feed.services.jobs import Run, run_maintenance
from feed.storage.tables import job_cursors, posts, user_keys, users
from jobs.registry import MAINTENANCE
from tests.conftest import empty_tables, forget_cached, snapshot
from tests.worker import settle

pytestmark = pytest.mark.anyio

NAMES = ("alice", "bob", "carol")
PER_USER = 6


class Crash(Exception):
    """A process dying in the middle of a job."""


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rotation.batch, "CHUNK", 4)


@pytest.fixture
async def restore(app: Any, peer_app: Any) -> AsyncIterator[None]:
    """Put back the session's root key ring (and empty what was written under another) after a test that rotates."""
    rings = [(a.state.services.keys, a.state.services.keys.ring) for a in (app, peer_app)]
    yield
    for keys, ring in rings:
        keys.use_ring(ring)
        keys.forget_all()
    await empty_tables(app.state.engine)
    await forget_cached(app)
    await forget_cached(peer_app)


async def job(app: Any, name: str, *, dry_run: bool = False) -> Run:
    return await run_maintenance(app.state.services, MAINTENANCE[name], dry_run=dry_run)


@dataclass
class World:
    """Users with API clients, their posts, and every text each post has had (readers accept any of them)."""

    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    author: dict[int, str] = field(default_factory=dict)
    latest: dict[int, str] = field(default_factory=dict)
    texts: dict[int, set[str]] = field(default_factory=dict)
    seeded: set[int] = field(default_factory=set)

    def record(self, post_id: int, name: str, text: str) -> None:
        self.author[post_id] = name
        self.latest[post_id] = text
        self.texts.setdefault(post_id, set()).add(text)


async def seed(api: Any) -> World:
    world = World()
    for name in NAMES:
        world.clients[name] = client = await api(name)
        world.ids[name] = int((await client.get("/api/v1/accounts/verify_credentials")).json()["id"])
    for name in NAMES:
        for other in NAMES:
            if other != name:
                response = await world.clients[name].post(f"/api/v1/accounts/{world.ids[other]}/follow")
                assert response.status_code == 200, response.text
        for n in range(PER_USER):
            text = f"{name} post {n}"
            data = {"status": text} | ({"spoiler_text": f"cw {n}"} if n % 2 else {})
            response = await world.clients[name].post("/api/v1/statuses", data=data)
            assert response.status_code == 200, response.text
            world.record(int(response.json()["id"]), name, text)
    world.seeded = set(world.latest)
    return world


def _text(status: dict[str, Any]) -> str:
    content = str(status["content"])
    return content.removeprefix("<p>").removesuffix("</p>")


@dataclass
class Load:
    """Clients hammering the app while ``work`` runs; what went wrong, and how much was served during the work."""

    world: World
    failures: list[str] = field(default_factory=list)
    during: int = 0
    total: int = 0
    working: bool = False
    newcomers: list[Any] = field(default_factory=list)

    def served(self, what: str, response: httpx.Response, expected: int = 200) -> bool:
        self.total += 1
        if self.working:
            self.during += 1
        if response.status_code != expected:
            self.failures.append(f"{what}: {response.status_code}")
            return False
        return True

    async def reader(self, name: str, stop: anyio.Event) -> None:
        client = self.world.clients[name]
        rng = random.Random(name)
        while not stop.is_set():
            # In process, a request answered from the caches never waits, so nothing else would run: a real
            # client's request waits on its socket.
            await anyio.lowlevel.checkpoint()
            response = await client.get("/api/v1/timelines/public?limit=40")
            if self.served("public timeline", response):
                statuses = response.json()
                missing = self.world.seeded - {int(s["id"]) for s in statuses}
                if missing:
                    self.failures.append(f"public timeline left out {sorted(missing)}")
                for status in statuses:
                    self.check(int(status["id"]), status)
            post_id = rng.choice(sorted(self.world.seeded))
            response = await client.get(f"/api/v1/statuses/{post_id}")
            if self.served(f"status {post_id}", response):
                self.check(post_id, response.json())

    def check(self, post_id: int, status: dict[str, Any]) -> None:
        known = self.world.texts.get(post_id)
        if known is not None and _text(status) not in known:
            self.failures.append(f"status {post_id} shows text that was never posted")

    async def page_reader(self, browser: Any, stop: anyio.Event) -> None:
        rng = random.Random(browser.username)
        while not stop.is_set():
            await anyio.lowlevel.checkpoint()  # as in ``reader``
            for url in ("/", "/public", f"/posts/{rng.choice(sorted(self.world.seeded))}"):
                self.served(url, await browser.get(url))

    async def editor(self, name: str, stop: anyio.Event) -> None:
        client = self.world.clients[name]
        own = sorted(p for p, who in self.world.author.items() if who == name)
        k = 0
        while not stop.is_set():
            k += 1
            for post_id in own:
                text = f"{name} edit {k} of {post_id}"
                self.world.texts[post_id].add(text)
                response = await client.put(f"/api/v1/statuses/{post_id}", data={"status": text, "spoiler_text": ""})
                if self.served(f"edit {post_id}", response):
                    self.world.latest[post_id] = text

    async def composer(self, name: str, stop: anyio.Event) -> None:
        client = self.world.clients[name]
        for n in range(8):  # the public timeline's first 40 still hold every seeded post
            if stop.is_set():
                return
            text = f"{name} new {n}"
            response = await client.post("/api/v1/statuses", data={"status": text})
            if self.served("compose", response):
                self.world.record(int(response.json()["id"]), name, text)

    async def newcomer(self, make: Callable[..., Awaitable[Any]], name: str, stop: anyio.Event) -> None:
        browser = await make(name)
        self.newcomers.append(browser)
        while not stop.is_set():
            self.served("newcomer home", await browser.get("/"))
            response = await browser.post("/posts", {"status": f"{name} says hello"})
            self.served("newcomer post", response, 303)


async def served_more(load: Load, count: int) -> None:
    """Wait until the load has served ``count`` more requests."""
    target = load.total + count
    with anyio.fail_after(30):
        while load.total < target:  # noqa: ASYNC110 - the clients count their answers; nothing to wait on
            await anyio.sleep(0.005)


async def serving(load: Load, work: Callable[[], Awaitable[Any]], *tasks: Callable[[anyio.Event], Any]) -> Any:
    """Run ``work`` while ``tasks`` serve requests; its result once they have stopped."""
    stop = anyio.Event()
    result: list[Any] = []
    async with anyio.create_task_group() as group:
        for task in tasks:
            group.start_soon(task, stop)
        await served_more(load, len(tasks))  # the clients are under way
        load.working = True
        try:
            result.append(await work())
        finally:
            load.working = False
            await served_more(load, len(tasks))  # and go on after the work, through its last invalidations
            stop.set()
    return result[0]


async def every_post_opens(app: Any, world: World) -> None:
    """From the database, with nothing cached: each post opens for its author and shows its latest text."""
    await forget_cached(app)
    app.state.services.keys.forget_all()
    for post_id, name in world.author.items():
        response = await world.clients[name].get(f"/api/v1/statuses/{post_id}")
        assert response.status_code == 200, (post_id, response.text)
        assert _text(response.json()) == world.latest[post_id]


async def rows(app: Any, query: Any) -> list[Any]:
    async with app.state.services.db() as session:
        return list((await session.execute(query)).all())


# -- root key rotation


async def test_root_key_rotation_while_serving(
    app: Any, peer_app: Any, api: Any, make_browser: Any, make_peer_browser: Any, restore: None
) -> None:
    """Two processes (this app and the second one) share the database. The new version is rolled out to both, this
    one promotes it and rewraps every user key while both serve; the other, not restarted yet, still wraps new keys
    under the old version; after its restart a second run picks those up and the old version is retired."""
    world = await seed(api)
    svc, other = app.state.services, peer_app.state.services
    start = svc.keys.ring
    added, step = rotation.next_ring(start)
    assert step == "add" and added.primary == start.primary and len(added.versions) == len(start.versions) + 1
    for process in (svc, other):  # rolled out: every process can read keys wrapped under the new version
        process.keys.use_ring(added)
    promoted, step = rotation.next_ring(added)
    assert step == "promote" and promoted.primary == max(added.versions)
    svc.keys.use_ring(promoted)  # this process runs with the promoted ring; the other one not yet
    old, new = start.primary, promoted.primary

    load = Load(world)
    reader = await make_browser("reader")
    late = await make_peer_browser("reader2")
    run = await serving(
        load,
        lambda: job(app, "rewrap_user_keys"),
        *(lambda stop, n=n: load.reader(n, stop) for n in NAMES),
        lambda stop: load.page_reader(reader, stop),
        lambda stop: load.page_reader(late, stop),
        lambda stop: load.composer("bob", stop),
        lambda stop: load.newcomer(make_browser, "dora", stop),
        lambda stop: load.newcomer(make_peer_browser, "eve", stop),
    )
    assert not load.failures, load.failures[:10]
    assert load.during > 0, "no request was served while the job ran"
    assert run.changed["user_keys_rewrapped"] >= len(NAMES) + 1  # and reader2, made by the other process

    # The other process, not restarted yet, still wraps new keys under the old version: retiring now is refused.
    await make_peer_browser("frank")
    assert await rotation.root_version_use(svc, old) >= 1
    other.keys.use_ring(promoted)  # its restart
    again = await job(app, "rewrap_user_keys")
    assert again.changed.get("user_keys_rewrapped", 0) >= 1
    assert (await job(app, "rewrap_user_keys")).changed == {}  # nothing left

    report = await keystatus.status(svc)
    assert report.wrapped_by_version.get(old, 0) == 0 and report.wrapped_by_version[new] == report.user_keys
    assert "unused: `cipherfeed keys retire" in keystatus.format_report(report)
    retired = promoted.retire(old)
    for process in (svc, other):
        process.keys.use_ring(retired)
    await every_post_opens(app, world)
    for browser in (reader, *load.newcomers):
        assert (await browser.get("/")).status_code == 200


async def test_email_indexes_move_with_the_root_key(app: Any, restore: None) -> None:
    """The email index is keyed from the root key ring: an address stays taken through a rotation (under the old
    version, the new one, and the server secret of rows from before), ``rewrap_user_keys`` moves every index under
    the primary, and a version is retired only once no index is keyed from it."""
    svc = app.state.services
    start = svc.keys.ring
    addresses = {"ida": "ida@example.com", "jo": "jo@example.com", "kit": "kit@example.com"}
    people = {name: await accounts.register(svc, name, "correct horse battery staple", email)
              for name, email in addresses.items()}  # fmt: skip
    before = blind_index(svc.secrets.secret_index_key, addresses["kit"])
    async with svc.db.begin() as session:  # kit's row as it was before the index moved to the root key ring
        kit = users.update().where(users.c.id == people["kit"].id)
        await session.execute(kit.values(email_index=before, email_index_version=None))

    async def indexes() -> dict[str, tuple[bytes, int | None]]:
        found = await rows(app, sa.select(users.c.username, users.c.email_index, users.c.email_index_version))
        return {r.username: (r.email_index, r.email_index_version) for r in found if r.email_index is not None}

    assert (await indexes())["ida"] == (start.blind_index("email", addresses["ida"]), start.primary)
    assert start.blind_index("email", addresses["ida"]) != blind_index(svc.secrets.secret_index_key, addresses["ida"])

    async def taken_by_newcomers() -> None:
        for n, address in enumerate(addresses.values()):
            with pytest.raises(Conflict):
                await accounts.register(svc, f"copycat{n}", "correct horse battery staple", f" {address.upper()} ")

    await taken_by_newcomers()  # kit's under the server secret too
    promoted, _ = rotation.next_ring(start, one_step=True)
    svc.keys.use_ring(promoted)
    await taken_by_newcomers()  # keyed from the old version, found
    assert await rotation.root_version_use(svc, start.primary) >= 2 + len(addresses)  # user keys and two indexes
    assert await rotation.not_under(svc, promoted.primary) >= 3 + len(addresses)

    run = await job(app, "rewrap_user_keys")
    assert run.changed["email_indexes_recomputed"] == len(addresses)
    expected = {name: (promoted.blind_index("email", a), promoted.primary) for name, a in addresses.items()}
    assert await indexes() == expected
    assert await rotation.root_version_use(svc, start.primary) == 0
    assert (await job(app, "reindex_emails")).changed == {}
    svc.keys.use_ring(promoted.retire(start.primary))
    await taken_by_newcomers()
    fresh = await accounts.register(svc, "lee", "correct horse battery staple", "lee@example.com")
    assert (await indexes())["lee"] == (promoted.blind_index("email", "lee@example.com"), promoted.primary)
    assert await accounts.email_of(svc, fresh) == "lee@example.com"


async def test_reindex_emails_moves_rows_from_before_the_root_key_index(app: Any, restore: None) -> None:
    svc = app.state.services
    ring = svc.keys.ring
    names = [f"old{n}" for n in range(2 * rotation.batch.CHUNK + 1)]
    for name in names:
        await accounts.register(svc, name, "correct horse battery staple", f"{name}@example.com")
    async with svc.db.begin() as session:
        for name in names:
            await session.execute(users.update().where(users.c.username == name).values(
                email_index=blind_index(svc.secrets.secret_index_key, f"{name}@example.com"),
                email_index_version=None))  # fmt: skip
    # Two rows nothing can fix, which must not hold the version for ever: an address saved twice (once under
    # another server secret, before 0008) and one whose key is gone.
    async with svc.db.begin() as session:  # old0's index as keyed by an earlier server secret
        await session.execute(users.update().where(users.c.username == "old0").values(email_index=b"\1" * 32))
    twice = await accounts.register(svc, "twice", "correct horse battery staple", "old0@example.com")
    gone = await accounts.register(svc, "gone", "correct horse battery staple", "gone@example.com")
    async with svc.db.begin() as session:
        await session.execute(users.update().where(users.c.id == twice.id).values(
            email_index=b"\2" * 32, email_index_version=None))  # fmt: skip
        await session.execute(users.update().where(users.c.id == gone.id).values(
            email_sealed=b"not a sealed blob", email_index_version=None))  # fmt: skip
    dry = await job(app, "reindex_emails", dry_run=True)
    assert dry.changed == {"email_indexes_recomputed": len(names) + 1, "email_indexes_dropped": 1}
    assert dry.total == len(names) + 2
    run = await job(app, "reindex_emails")
    assert run.changed == {"email_indexes_recomputed": len(names), "email_indexes_dropped": 2}
    found = await rows(app, sa.select(users.c.username, users.c.email_index, users.c.email_index_version))
    assert {r.username: (r.email_index, r.email_index_version) for r in found} == {
        name: (ring.blind_index("email", f"{name}@example.com"), ring.primary) for name in names
    } | {"twice": (None, None), "gone": (None, None)}
    assert await rotation.not_under(svc, ring.primary) == 0
    assert (await job(app, "reindex_emails")).changed == {}
    assert await accounts.email_of(svc, twice) == "old0@example.com"  # the address stays, taken by old0


# -- user key rotation


async def test_user_key_rotation_while_serving(app: Any, api: Any, make_browser: Any, restore: None) -> None:
    """Every user gets a new key while their posts are read, edited and written: no request fails, no edit is lost,
    every post ends under its author's new key, and the old keys are destroyed once nothing uses them."""
    world = await seed(api)
    svc = app.state.services
    mailer = await make_browser("mailer", email="mailer@example.com")
    reader = await make_browser("reader")
    before = {r.id: r.key_version for r in await rows(app, sa.select(users.c.id, users.c.key_version))}

    load = Load(world)
    run = await serving(
        load,
        lambda: job(app, "rotate_user_keys"),
        *(lambda stop, n=n: load.reader(n, stop) for n in NAMES),
        lambda stop: load.page_reader(reader, stop),
        lambda stop: load.editor("alice", stop),
        lambda stop: load.composer("bob", stop),
        lambda stop: load.newcomer(make_browser, "dora", stop),
    )
    assert not load.failures, load.failures[:10]
    assert load.during > 0, "no request was served while the job ran"
    assert run.changed["user_keys_created"] >= len(before)  # and dora, if she came before the rotation started
    assert run.changed["posts_rewrapped"] >= len(world.seeded) - PER_USER  # alice's edits may re-seal hers first

    # An edit that read its author before the rotation may have sealed under the old key after the last pass.
    await job(app, "rewrap_posts")
    assert (await job(app, "rewrap_posts")).changed == {}
    after = {r.id: r.key_version for r in await rows(app, sa.select(users.c.id, users.c.key_version))}
    assert all(after[uid] == version + 1 for uid, version in before.items())
    use = await rotation.post_key_use(svc)
    assert use.behind == 0 and use.superseded == run.changed["user_keys_created"]

    # The superseded keys are destroyed only after the grace period; made 0 here.
    prune = Run(svc, "prune")
    await rotation.prune_user_keys(svc, prune, grace=timedelta(0))
    assert prune.changed["user_keys_destroyed"] == run.changed["user_keys_created"]
    left = await rows(app, sa.select(user_keys.c.user_id, user_keys.c.version))
    assert all(after.get(uid, version) == version for uid, version in left)
    assert (await rotation.post_key_use(svc)).superseded == 0

    await every_post_opens(app, world)
    settings = await mailer.get("/settings")
    assert settings.status_code == 200 and 'value="mailer@example.com"' in settings.text


async def test_an_edit_between_read_and_write_wins(app: Any, api: Any, restore: None, monkeypatch: Any) -> None:
    """The compare-and-set: a post edited after the job read it is skipped, not overwritten. The edit, by a request
    that read its author before the rotation, is sealed under the new key all the same (the write reads the key
    version in its own transaction), so no pass has to rewrap it."""
    world = await seed(api)
    svc = app.state.services
    alice = await accounts.get_user(svc, world.ids["alice"])  # read before the rotation: key version 1
    target = min(p for p, who in world.author.items() if who == "alice")
    write = rotation.rewrap._write_posts
    edited = []

    async def edit_first(svc_: Any, run: Run, writes: Any, what: str) -> None:
        if not edited and any(row.id == target for row, _ in writes):
            await post_service.edit(svc, alice, target, "edited meanwhile")
            edited.append(target)
            world.record(target, "alice", "edited meanwhile")
        await write(svc_, run, writes, what)

    monkeypatch.setattr(rotation.rewrap, "_write_posts", edit_first)
    run = await run_maintenance(svc, rotation.user_rotation(alice.id, 1))
    assert edited and run.changed["skipped_changed_meanwhile"] == 1
    assert run.changed["posts_rewrapped"] == PER_USER - 1  # the edited one was sealed under the new key
    row = (await rows(app, sa.select(posts.c.revision, posts.c.key_version).where(posts.c.id == target)))[0]
    assert (row.revision, row.key_version) == (2, 2)
    await every_post_opens(app, world)


# -- crashes, dry runs, second runs


def crash_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch, part: str = "") -> None:
    advance = Run.advance

    async def advance_then_die(self: Run, cursor: int, part_: str = "") -> None:
        await advance(self, cursor, part_)
        if part_ == part:
            monkeypatch.setattr(Run, "advance", advance)
            raise Crash

    monkeypatch.setattr(Run, "advance", advance_then_die)


async def test_root_rewrap_resumes_after_a_crash(app: Any, api: Any, restore: None, monkeypatch: Any) -> None:
    world = await seed(api)
    for n in range(7):
        await api(f"extra{n}")
    svc = app.state.services
    promoted, _ = rotation.next_ring(svc.keys.ring, one_step=True)
    svc.keys.use_ring(promoted)
    total = len(NAMES) + 7

    crash_after_first_checkpoint(monkeypatch)
    with pytest.raises(Crash):
        await job(app, "rewrap_user_keys")
    checkpoint = (await rows(app, sa.select(job_cursors.c.name, job_cursors.c.cursor)))[0]
    assert checkpoint.name == "rewrap_user_keys"
    assert await rotation.root_version_use(svc, promoted.primary) == rotation.batch.CHUNK
    status = await rows(app, sa.text("SELECT state, error FROM job_runs"))
    assert [(s.state, s.error) for s in status] == [("failed", "Crash")]

    starts: list[int | None] = []
    chunk = rotation.root._user_keys_chunk

    async def spy(svc_: Any, primary: int, after: int | None) -> Any:
        starts.append(after)
        return await chunk(svc_, primary, after)

    monkeypatch.setattr(rotation.root, "_user_keys_chunk", spy)
    run = await job(app, "rewrap_user_keys")
    assert starts[0] == checkpoint.cursor  # went on from the checkpoint
    assert run.changed["user_keys_rewrapped"] == total - rotation.batch.CHUNK
    assert run.total == total - rotation.batch.CHUNK and run.done == total - rotation.batch.CHUNK
    assert await rotation.root_version_use(svc, promoted.primary) == total
    assert await rows(app, sa.select(job_cursors)) == []
    svc.keys.use_ring(promoted.retire(1))
    await every_post_opens(app, world)


async def test_user_rotation_resumes_after_a_crash(app: Any, api: Any, restore: None, monkeypatch: Any) -> None:
    """Stopped after the first chunk of posts: the rerun rotates nobody again and rewraps the rest."""
    world = await seed(api)
    crash_after_first_checkpoint(monkeypatch, "posts")
    with pytest.raises(Crash):
        await job(app, "rotate_user_keys")
    use = await rotation.post_key_use(app.state.services)
    assert use.behind == len(world.seeded) - rotation.batch.CHUNK
    run = await job(app, "rotate_user_keys")
    assert "user_keys_created" not in run.changed  # the same rotation, gone on with
    assert run.changed["posts_rewrapped"] == len(world.seeded) - rotation.batch.CHUNK
    keys = await rows(app, sa.select(user_keys.c.user_id, sa.func.count()).group_by(user_keys.c.user_id))
    assert sorted(n for _, n in keys) == [2] * len(NAMES)
    # Only the rotation's start is kept: running again finds every key newer than it.
    assert [r.name for r in await rows(app, sa.select(job_cursors))] == ["rotate_user_keys:since"]
    assert (await job(app, "rotate_user_keys")).changed == {}
    await every_post_opens(app, world)


def without_runs(tables: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: rows for name, rows in tables.items() if name != "job_runs"}


async def test_dry_runs_change_nothing_and_second_runs_find_nothing(app: Any, api: Any, restore: None) -> None:
    world = await seed(api)
    svc = app.state.services
    promoted, _ = rotation.next_ring(svc.keys.ring, one_step=True)
    svc.keys.use_ring(promoted)
    alice = world.ids["alice"]
    jobs = [*(MAINTENANCE[name] for name in ("rewrap_user_keys", "rotate_user_keys", "rewrap_posts"))]
    jobs.append(rotation.user_rotation(alice, 2))  # alice again, after everyone's rotation

    for maintenance in jobs:
        before = without_runs(await snapshot(app))
        dry = await run_maintenance(svc, maintenance, dry_run=True)
        assert without_runs(await snapshot(app)) == before, maintenance.name
        real = await run_maintenance(svc, maintenance)
        again = await run_maintenance(svc, maintenance)
        assert dry.changed == real.changed, maintenance.name
        assert again.changed == {}, (maintenance.name, again.changed)
    expected = {
        "rewrap_user_keys": {"user_keys_rewrapped": len(NAMES)},
        "rotate_user_keys": {"user_keys_created": len(NAMES), "posts_rewrapped": len(world.seeded)},
        "rewrap_posts": {},
        "rotate_user_key": {"user_keys_created": 1, "posts_rewrapped": PER_USER},
    }
    runs = await rows(app, sa.text("SELECT name, dry_run, changed FROM job_runs ORDER BY id"))
    assert [(r.name, bool(r.dry_run)) for r in runs] == [(j.name, d) for j in jobs for d in (True, False, False)]
    for r in runs[::3]:
        assert r.changed == ", ".join(f"{k}={v}" for k, v in sorted(expected[r.name].items()))
    await every_post_opens(app, world)


# -- re-encryption to a newer format


async def test_reencrypt_finds_nothing_with_one_format(app: Any, api: Any, restore: None) -> None:
    await seed(api)
    before = without_runs(await snapshot(app))
    run = await job(app, "reencrypt_posts")
    assert run.changed == {} and run.total == 0 and run.summary() == ""
    assert without_runs(await snapshot(app)) == before
    report = await keystatus.status(app.state.services)
    assert report.posts.fields_by_format == {1: len(NAMES) * (PER_USER + PER_USER // 2)}
    assert "in an older format: 0" in keystatus.format_report(report)


async def test_reencrypt_to_a_newer_format(app: Any, api: Any, restore: None, monkeypatch: Any) -> None:
    """A release that writes format 2 (here format 1's layout under a new number) and still reads 1."""
    world = await seed(api)
    monkeypatch.setattr(sealed_format, "FORMAT_VERSION", 2)
    monkeypatch.setattr(sealed_format, "READABLE_FORMAT_VERSIONS", frozenset({1, 2}))
    fields = len(NAMES) * (PER_USER + PER_USER // 2)
    dry = await job(app, "reencrypt_posts", dry_run=True)
    assert dry.changed == {"posts_reencrypted": len(world.seeded)}
    crash_after_first_checkpoint(monkeypatch)
    with pytest.raises(Crash):
        await job(app, "reencrypt_posts")
    run = await job(app, "reencrypt_posts")
    assert run.changed == {"posts_reencrypted": len(world.seeded) - rotation.batch.CHUNK}
    assert (await job(app, "reencrypt_posts")).changed == {}
    report = await keystatus.status(app.state.services)
    assert report.posts.fields_by_format == {2: fields} and report.format_version == 2
    await every_post_opens(app, world)


# -- the queued per-user job


async def test_the_queued_user_rotation(app: Any, api: Any, restore: None) -> None:
    world = await seed(api)
    svc = app.state.services
    bob = world.ids["bob"]
    assert await svc.queue.enqueue("rotate_user_key", bob, 1, key=f"rotate_user_key:{bob}")
    await settle(app)
    done = sa.text("SELECT changed FROM job_runs WHERE name = 'rotate_user_key' AND state = 'done'")
    for _ in range(1000):  # the worker beside the app may still be at it
        if finished := await rows(app, done):
            break
        await anyio.sleep(0.01)
    assert finished[0].changed == f"posts_rewrapped={PER_USER}, user_keys_created=1"
    kinds = await rows(app, sa.select(posts.c.author_id, posts.c.key_version).distinct())
    assert {(a, v) for a, v in kinds} == {(world.ids[n], 2 if n == "bob" else 1) for n in NAMES}
    await every_post_opens(app, world)
