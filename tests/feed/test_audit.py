"""``cipherfeed audit`` (issue 12): a deployment that was used (posts, replies, likes, edits, deletes, a profile,
an email address) audits clean; plaintext planted in turn in a database column, a new table, Redis values of each
type, a queued job and a log file, in several encodings, is found with its place named, and once removed the audit
is clean again. Without canaries, planted sentences are still flagged."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from PIL import Image

from crypto import RootKeyRing
from feed.audit.report import Progress
from feed.cache import USERS, redis_key, shown
from feed.records import UserRecord
from feed.services import accounts, media
from tests.conftest import BACKEND, REDIS_URL, forget_cached
from tests.feed.processes import Cluster, process_env
from tests.feed.sse import open_stream
from tests.feed.test_cli import cipherfeed, cipherfeed_process
from tests.feed.test_media import settled

pytestmark = pytest.mark.anyio

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
SENTENCE = "meet me at the old station at noon and bring the documents with you"


async def run_audit(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    """A real process, as an auditor runs it: reading SQLite's files from this one would drop the locks the app's
    connections hold on them (POSIX locks belong to a process and go with any of its descriptors of the file)."""
    done = await asyncio.to_thread(cipherfeed_process, env, "audit", "--json", *args)  # this process answers too
    assert done.returncode in (0, 1, 2), done.stderr
    return done.returncode, json.loads(done.stdout)


async def use(app: Any, make_browser: Any, canary: str) -> None:
    """A little of everything a deployment holds, the canary in every text."""
    alice = await make_browser("alice", email=f"{canary}@example.org")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    first = await alice.compose(f"{canary} first", spoiler_text=f"cw {canary}")
    reply = await bob.compose(f"@alice {canary} reply", in_reply_to_id=str(first))
    await bob.post(f"/posts/{first}/like")
    await bob.post(f"/posts/{first}/bookmark")
    await bob.post(f"/posts/{first}/boost")  # the author is told (a notification), and bob's followers' feeds take it
    carol = await make_browser("carol")
    await carol.post("/@bob/follow")
    await carol.post("/@alice/mute")
    await carol.post("/@bob/block")
    await alice.post("/settings", {"display_name": "", "bio": "", "email": f"{canary}@example.org", "locked": "on"})
    await carol.post("/@alice/follow")  # a follow request, and its notification
    await alice.post(f"/posts/{first}/edit", {"status": f"{canary} edited", "spoiler_text": ""})
    gone = await alice.compose(f"{canary} to delete")
    await alice.post(f"/posts/{gone}/delete", {"confirm": "yes"})
    await alice.post("/settings", {"display_name": "Alice", "bio": "I like trains", "email": f"{canary}@example.net"})
    svc = app.state.services
    owner = await accounts.find_user(svc, "alice")
    photo = await media.upload(svc, owner, jpeg_with_canary(canary), description=f"{canary} alt text")
    await settled(svc, photo.id, owner)
    pictured = await alice.compose(f"{canary} pictured", media_0=str(photo.id), alt_0=f"{canary} described")
    loose = await media.upload(svc, owner, jpeg_with_canary(canary), description=f"{canary} not posted")
    await settled(svc, loose.id, owner)
    pages = ("/", "/public", "/@alice", f"/posts/{first}", f"/posts/{reply}", f"/posts/{pictured}", "/notifications",
             "/bookmarks")  # fmt: skip
    for reader in (alice, bob):
        for url in pages:  # each post's record, with its images' alt text and blurhash, and its frame: cached
            assert (await reader.get(url)).status_code == 200
    for url in (f"/media/{photo.id}/small", f"/media/{loose.id}/large"):
        assert (await alice.http.get(url)).status_code == 200


def jpeg_with_canary(canary: str) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = canary  # the camera's make
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(out, "JPEG", exif=exif)
    return out.getvalue()


def where_found(report: dict[str, Any]) -> str:
    return "\n".join(f"[{f['place']}] {f['where']}: {f['what']} ({f['detail']})" for f in report["findings"])


async def test_a_used_deployment_audits_clean(app: Any, make_browser: Any, env: dict[str, str]) -> None:
    canary = f"canary-{secrets.token_hex(6)}-Zürich"
    await use(app, make_browser, canary)
    code, report = await run_audit(env, "--canary", canary)
    assert code == 0, where_found(report)
    assert report["verdict"] == "clean" and report["findings"] == []
    assert report["scanned"]["database"]["items"] > 10 and report["scanned"]["database"]["bytes"] > 1000
    if REDIS_URL != "none":
        assert report["scanned"]["redis"]["items"] > 5
    assert report["scanned"]["media"]["items"] >= 6  # the pictures' variants, sealed


async def test_pictures_or_text_in_clear_in_the_media_store_are_found(app: Any, env: dict[str, str]) -> None:
    canary = f"canary-{secrets.token_hex(6)}"
    store = app.state.services.media
    planted = {"1/small": jpeg_with_canary(canary), "2/medium": f"{canary} as it is".encode(), "notes.txt": b"x" * 80}
    for name, data in planted.items():
        await store.put(name, data)
    try:
        code, report = await run_audit(env, "--canary", canary, "--only", "media")
        found = {(f["where"].split(" ")[0], f["what"]) for f in report["findings"]}
        assert code == 1
        assert {("1/small", "not sealed"), ("1/small", "image data in clear"), ("1/small", "canary")} <= found
        assert {("2/medium", "not sealed"), ("2/medium", "canary"), ("notes.txt", "unexpected file")} <= found
    finally:
        for name in planted:
            await store.delete(name)
    code, report = await run_audit(env, "--canary", canary, "--only", "media")
    assert code == 0, where_found(report)


async def test_plaintext_planted_in_the_database_is_found(app: Any, make_browser: Any, env: dict[str, str]) -> None:
    canary = f"canary-{secrets.token_hex(6)}-Köln"
    await use(app, make_browser, f"other-{secrets.token_hex(4)}")
    engine = app.state.engine
    plants = {
        "job_runs.error": (sa.text("UPDATE job_runs SET error = :v"), canary),
        "job_cursors": (
            sa.text("INSERT INTO job_cursors (name, cursor, updated_at) VALUES (:v, 0, :t)"),
            base64.b64encode(f"xx{canary}".encode()).decode(),
        ),
        "throttle.bucket": (sa.text("INSERT INTO throttle (bucket, count, window_ends) VALUES (:v, 1, :t)"),
                            quote(canary)),
        "users.email_sealed": (sa.text("UPDATE users SET email_sealed = :v WHERE username = 'bob'"),
                               canary.encode("utf-16-le")),
    }  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(sa.text("INSERT INTO job_runs (id, name, args, dry_run, state, started_at, done, total, "
                                   "changed) VALUES (1, 'x', '', false, 'done', :t, 0, 0, '{}')"),
                           {"t": WHEN})  # fmt: skip
    for place, (statement, value) in plants.items():
        async with engine.begin() as conn:
            await conn.execute(statement, {"v": value, "t": WHEN})
        code, report = await run_audit(env, "--canary", canary, "--only", "database")
        assert code == 1, place
        table = place.split(".")[0]
        assert any(f["what"] == "canary" and f["where"].startswith(table) for f in report["findings"]), (
            place,
            where_found(report),
        )
        await _undo(engine, place)
        code, report = await run_audit(env, "--canary", canary, "--only", "database")
        assert code == 0, (place, where_found(report))
    # A table nobody declared is a finding in itself, and its values are searched.
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT)"))
        await conn.execute(sa.text("INSERT INTO notes VALUES (1, :v)"), {"v": SENTENCE})
    try:
        code, report = await run_audit(env, "--only", "database")  # no canary: the sentence reads as text
        whats = {(f["where"].split()[0], f["what"]) for f in report["findings"]}
        assert code == 1 and ("notes", "unknown table") in whats and ("notes", "looks like text") in whats, whats
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP TABLE notes"))


async def _undo(engine: Any, place: str) -> None:
    undo = {
        "job_runs.error": "DELETE FROM job_runs",
        "job_cursors": "DELETE FROM job_cursors",
        "throttle.bucket": "DELETE FROM throttle",
        "users.email_sealed": "UPDATE users SET email_sealed = NULL WHERE username = 'bob'",
    }
    async with engine.begin() as conn:
        await conn.execute(sa.text(undo[place]))
    if engine.dialect.name == "sqlite":  # the old pages stay in the write-ahead log until a checkpoint
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.skipif(REDIS_URL == "none", reason="needs Redis")
async def test_plaintext_planted_in_redis_is_found(app: Any, make_browser: Any, env: dict[str, str]) -> None:
    canary = f"canary-{secrets.token_hex(6)}-Genève"
    await use(app, make_browser, f"other-{secrets.token_hex(4)}")
    client = app.state.cache.link.client
    plants = [
        ("string", lambda: client.set("planted:s", canary.encode("utf-16-be"))),
        ("hash", lambda: client.hset("planted:h", "f", json.dumps(canary))),
        ("list", lambda: client.rpush("planted:l", b"x", canary.encode().hex().encode())),
        ("stream", lambda: client.xadd("planted:x", {"e": base64.urlsafe_b64encode(b"ab" + canary.encode())})),
        # A job whose argument is text (our queue refuses one: only ids go to jobs), deferred so no worker takes it.
        ("arq job", lambda: app.state.services.queue.pool.enqueue_job("fan_out", canary, _defer_by=3600)),
    ]
    pool = app.state.services.queue.pool
    for name, plant in plants:
        planted = await plant()
        code, report = await run_audit(env, "--canary", canary, "--only", "redis")
        assert code == 1 and any(f["what"] == "canary" for f in report["findings"]), (name, where_found(report))
        for key in [k async for k in client.scan_iter(match="planted:*")]:
            await client.delete(key)
        if name == "arq job":
            await client.delete(f"arq:job:{planted.job_id}")
            await client.zrem(pool.default_queue_name, planted.job_id)
        code, report = await run_audit(env, "--canary", canary, "--only", "redis")
        assert code == 0, (name, where_found(report))
    await client.set("planted:sentence", SENTENCE)
    code, report = await run_audit(env, "--only", "redis")
    assert code == 1 and any("planted:sentence" in f["where"] for f in report["findings"]), where_found(report)
    await client.delete("planted:sentence")
    await forget_cached(app)


@pytest.mark.skipif(REDIS_URL == "none", reason="needs Redis")
async def test_plaintext_in_a_running_process_l1_is_found(app: Any, make_browser: Any, env: dict[str, str]) -> None:
    canary = f"canary-{secrets.token_hex(6)}-Wien"
    await use(app, make_browser, f"other-{secrets.token_hex(4)}")
    code, report = await run_audit(env, "--canary", canary, "--only", "l1")
    assert code == 0, where_found(report)
    assert report["scanned"]["l1"]["items"] > 0 and "answered" in report["scanned"]["l1"]["note"], report
    cache = app.state.cache
    planted = UserRecord(999_999, "planted", "Planted", canary, 1, WHEN)
    cache._keep(USERS, redis_key(USERS, 999_999), planted, 0)  # in this process's L1 only
    code, report = await run_audit(env, "--canary", canary, "--only", "l1")
    assert code == 1 and any(f["place"] == "l1" and "cf:{u:999999}" in f["where"] for f in report["findings"]), (
        where_found(report)
    )
    cache.drop([redis_key(USERS, 999_999)])
    assert (await run_audit(env, "--canary", canary, "--only", "l1"))[0] == 0


async def test_logs_and_settings(app: Any, env: dict[str, str], tmp_path: Path) -> None:
    canary = f"canary-{secrets.token_hex(6)}-Montréal"
    log = tmp_path / "server.log"
    log.write_text(
        "2026-12-02 10:00:00,000 INFO feed.relay: outbox relay started\n"
        'INFO:     127.0.0.0/24 - "GET /posts/1 HTTP/1.1" 200\n'
        f"2026-12-02 10:00:01,000 DEBUG feed.web: a request for {quote(canary)}\n"
    )
    code, report = await run_audit(env, "--canary", canary, "--only", "logs", "--log-file", str(log))
    assert code == 1 and any(f["what"] == "canary" and "server.log" in f["where"] for f in report["findings"])
    # Without canaries: a sentence where our lines hold ids and names, in each of our shapes, is flagged; the
    # lines our processes write are not.
    clean = [
        "cipherfeed: worker started",
        "INFO:     Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)",
        'INFO:     127.0.0.0/24 - "POST /posts HTTP/1.1" 303 See Other',
        "2026-12-02 10:00:02,000 WARNING feed.services.rotation.root: user key 12 v3 does not unwrap; left as it is",
        "cipherfeed: error: --workers above 1 needs CIPHERFEED_REDIS_URL (the processes share invalidations there)",
        "Traceback (most recent call last):",
        "The above exception was the direct cause of the following exception:",
        '  File "feed/web/app.py", line 12, in handler: the source line of a frame, which reads like text',
    ]
    planted = [
        SENTENCE,  # a line of no shape of ours
        f"2026-12-02 10:00:02,000 WARNING feed.services.rotation.root: user key {SENTENCE} v3 does not unwrap; left "
        "as it is",  # filled into a template
        f"2026-12-02 10:00:03,000 ERROR feed.web: {SENTENCE}",  # a message of no template
        f'INFO:     127.0.0.0/24 - "GET /tags/{quote(SENTENCE)} HTTP/1.1" 404 Not Found',  # URL-encoded, in a path
        f"cipherfeed: {SENTENCE}",
        f"ValueError: {SENTENCE}",  # an exception's message
    ]
    lines = log.read_text().replace(quote(canary), "x").splitlines() + clean + planted
    log.write_text("\n".join(lines) + "\n")
    code, report = await run_audit(env, "--only", "logs", "--log-file", str(log))
    flagged = [int(f["where"].rsplit(" ", 1)[-1]) for f in report["findings"]]
    assert code == 1 and flagged == list(range(len(lines) - len(planted) + 1, len(lines) + 1)), where_found(report)
    log.write_text("\n".join(lines[: -len(planted)]) + "\n")
    assert (await run_audit(env, "--only", "logs", "--log-file", str(log)))[0] == 0
    missing = await run_audit(env, "--only", "logs", "--log-file", str(tmp_path / "nope.log"))
    assert missing[0] in (0, 2)
    bad = cipherfeed(env, "audit", "--only", "nowhere")
    assert bad.returncode == 1 and "unknown place" in bad.stderr


@pytest.mark.skipif(BACKEND != "postgresql", reason="real processes, once, in the PostgreSQL pass")
async def test_a_used_scaled_deployment_audits_clean_in_every_place(
    cluster: Cluster, env: dict[str, str], processes_database_url: str, processes_engine: Any
) -> None:
    """Two web processes and a worker after posts, replies, likes, bookmarks, a boost, a mute, notifications, edits,
    deletes, live streams, a root key rotation (with its rolling restarts), a user key rotation and an erasure: the
    database, Redis, the three processes' caches, their logs and settings are clean."""
    canary = f"canary-{secrets.token_hex(6)}-Zürich"
    alice, bob, carol = [await cluster.account(name) for name in ("alice", "bob", "carol")]
    await alice.post("a", "/settings", {"display_name": "Alice", "bio": "", "email": f"{canary}@example.net"})
    await bob.post("a", "/@alice/follow")
    stream = await open_stream(bob.on["b"], "/events?timeline=home&since=0")
    try:
        first = await alice.compose("a", f"{canary} first", spoiler_text=f"cw {canary}")
        await bob.compose("b", f"@alice {canary} reply", in_reply_to_id=str(first))
        await carol.compose("b", f"{canary} carol was here")
        await bob.post("b", f"/posts/{first}/like")
        await bob.post("a", f"/posts/{first}/bookmark")
        await carol.post("a", "/@bob/follow")
        await bob.post("b", f"/posts/{first}/boost")  # into carol's feed (the worker's fan-out); alice is told
        await carol.post("b", "/@alice/mute")
        await alice.post("a", f"/posts/{first}/edit", {"status": f"{canary} edited", "spoiler_text": ""})
        gone = await alice.compose("b", f"{canary} to delete")
        await alice.post("a", f"/posts/{gone}/delete", {"confirm": "yes"})
        await stream.next("post", timeout=10)
    finally:
        await stream.close()

    async def pages() -> None:
        for where in ("a", "b"):
            for url in ("/", "/public", "/@alice", f"/posts/{first}"):
                assert (await alice.on[where].get(url)).status_code == 200
                assert canary in (await bob.on[where].get(url)).text
            for url in ("/notifications", "/bookmarks"):
                assert (await alice.on[where].get(url)).status_code == 200
                assert canary in (await bob.on[where].get("/bookmarks")).text
            app = await cluster.api(where, "bob")  # the apps' timelines and their blobs (spaces v and y)
            for url in ("/api/v1/timelines/home", "/api/v1/timelines/public"):
                assert canary in (await app.get(url)).text

    await pages()
    settings = process_env(env | {"CIPHERFEED_DATABASE_URL": processes_database_url}, cluster.redis.url)

    async def cli(*args: str) -> str:
        done = await asyncio.to_thread(cipherfeed_process, settings, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # The root key: add a version and roll it out; promote it (user keys and email indexes rewrapped) and roll that
    # out; retire the old version and roll that out. With the ring in the environment each step prints the new one.
    for step in (("keys", "rotate"), ("keys", "rotate"), ("keys", "retire", "1")):
        settings["CIPHERFEED_ROOT_KEY"] = await cli(*step)
        await asyncio.to_thread(cluster.restart, settings)
    assert RootKeyRing.from_json(settings["CIPHERFEED_ROOT_KEY"]).versions == (2,)
    await pages()
    await bob.compose("a", f"{canary} after the root key rotation")
    await cli("keys", "rotate-user", "--all")
    await cli("users", "delete", "carol", "--yes")
    await pages()
    async with aioredis.Redis.from_url(cluster.redis.url) as redis:  # the shown log (edits, deletes) is audited too
        assert await redis.exists(shown.KEY)
    logs = [str(proc.log) for proc in cluster.every_process(stopped=True)]
    code, report = await run_audit(settings, "--canary", canary, *(a for log in logs for a in ("--log-file", log)))
    assert code == 0, where_found(report) + json.dumps(report["unchecked"])
    assert report["scanned"]["l1"]["note"].startswith("3 process"), report["scanned"]["l1"]
    assert {"database", "redis", "l1", "logs", "config"} <= set(report["scanned"])
    async with processes_engine.connect() as conn:  # nothing is keyed from the retired version any more
        assert await conn.scalar(sa.text("SELECT count(*) FROM user_keys WHERE root_version <> 2")) == 0
        assert await conn.scalar(sa.text("SELECT email_index_version FROM users WHERE username = 'alice'")) == 2


def test_progress_is_a_bar_in_a_terminal_and_lines_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = Terminal()
    Progress(shown).update("database posts", 10_000, 40_000, force=True)
    assert "[#######.......................]  25% 10,000 of 40,000" in shown.getvalue()
    assert shown.getvalue().startswith("\r"), "redrawn in place"
    logged = io.StringIO()
    progress = Progress(logged)
    progress.update("database posts", 10, 40)  # a few rows: not worth a line
    progress.update("database posts", 40, 40, force=True)
    assert logged.getvalue() == "  database posts: 40 of 40\n"
