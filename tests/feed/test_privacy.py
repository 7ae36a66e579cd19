"""No plaintext at rest: a canary written through every path appears in no row, database file, dump or log line,
while the authorised reader still sees it."""

from __future__ import annotations

import html
import logging
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from feed.services import accounts
from feed.storage.tables import metadata
from tests.conftest import client_for

pytestmark = pytest.mark.anyio


def canaries() -> list[str]:
    tag = secrets.token_hex(6)
    return [
        f"CANARYplain{tag}",
        f"<b>CANARY&html\"'{tag}</b>",
        f"Kanárek-ünïcødé-{tag}-🐦",
    ]


def needles(texts: list[str]) -> list[bytes]:
    """Every byte form a leak could take: UTF-8, HTML-escaped, and the distinctive core of each canary."""
    out: set[bytes] = set()
    for text in texts:
        for form in (text, text.lower(), html.escape(text), html.escape(text, quote=False)):
            out.add(form.encode())
        out.add(text.encode("utf-16-le"))
    return sorted(out)


def find_leaks(blob: bytes, texts: list[str]) -> list[str]:
    return [n.decode(errors="replace") for n in needles(texts) if n in blob]


async def dump_rows(engine: Any) -> bytes:
    parts: list[bytes] = []
    async with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in (await conn.execute(sa.select(table))).all():
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        parts.append(bytes(value))
                    else:
                        parts.append(str(value).encode())
    return b"\n".join(parts)


def raw_database(database_url: str) -> bytes:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        main = Path(url.database or "")
        files = [str(f) for f in (main, main.with_name(main.name + "-wal")) if f.exists()]
        # Read by another process: closing a file SQLite has open in this process would drop this process's
        # locks on it (POSIX advisory locks are per process), and a later writer could corrupt the database.
        return subprocess.run(["cat", *files], check=True, capture_output=True).stdout
    if shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is needed to check PostgreSQL at rest")
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(["pg_dump", "--data-only", plain], check=True, capture_output=True).stdout


async def test_canary_is_nowhere_at_rest_but_readable_by_its_readers(
    make_browser: Any, api: Any, app: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # every SQL statement and its parameters
    texts = canaries()
    alice = await make_browser("alice", email=f"alice+{texts[0]}@example.org")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    ids = []
    for text in texts:
        ids.append(await alice.compose(f"{text} public", spoiler_text=f"cw {text}"))
        ids.append(await alice.compose(f"{text} followers", visibility="followers"))
        ids.append(await alice.compose(f"@bob {text} direct", visibility="direct"))
    await bob.compose(f"@alice reply {texts[1]}", in_reply_to_id=str(ids[0]))
    edited = await alice.post(f"/posts/{ids[1]}/edit", {"status": f"edited {texts[2]}", "spoiler_text": texts[0]})
    assert edited.status_code == 303
    client = await api("carol")
    created = await client.post("/api/v1/statuses", json={"status": f"api {texts[2]}", "spoiler_text": texts[1]})
    assert created.status_code == 200
    await alice.post("/settings", {"display_name": "Alice", "bio": "hi", "email": f"new-{texts[0]}@example.org"})

    # The readers see every text.
    home = (await bob.get("/")).text
    for text in texts:
        assert html.escape(text, quote=False) in home or html.escape(text) in home
    assert texts[2] in (await client.get(f"/api/v1/statuses/{created.json()['id']}")).json()["content"]
    assert f"new-{texts[0]}@example.org".lower() in (await alice.get("/settings")).text

    # Nothing readable at rest: table rows, the raw database files (SQLite + WAL) or a pg_dump, the logs.
    assert find_leaks(await dump_rows(app.state.engine), texts) == []
    assert find_leaks(raw_database(database_url), texts) == []
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode()
    assert len(caplog.records) > 20, "the SQL log should have been captured"
    assert find_leaks(logged, texts) == []


async def test_the_check_finds_a_planted_plaintext(make_browser: Any, app: Any, database_url: str) -> None:
    """The detector itself works: plaintext written into a row is found in the rows and in the raw files."""
    texts = canaries()
    alice = await make_browser("alice")
    async with app.state.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE users SET bio = :bio"), {"bio": texts[2]})
    assert alice.username == "alice"
    assert find_leaks(await dump_rows(app.state.engine), texts)
    assert find_leaks(raw_database(database_url), texts)


async def test_canary_is_in_no_redis_key_value_bus_message_or_l1_value(make_redis_browser: Any, redis_app: Any) -> None:
    from feed.bus import CHANNEL
    from feed.records import SealedPage, encode
    from feed.streams import POSTS_STREAM, PUSH_CHANNEL

    texts = canaries()
    client = redis_app.state.cache.link.client
    listener = client.pubsub()
    await listener.subscribe(CHANNEL, PUSH_CHANNEL)
    alice = await make_redis_browser("alice", email=f"{texts[0]}@example.org")
    bob = await make_redis_browser("bob")
    await bob.post("/@alice/follow")
    ids = [await alice.compose(f"{text} public", spoiler_text=f"cw {text}") for text in texts]
    ids.append(await alice.compose(f"@bob {texts[1]} direct", visibility="direct"))
    await bob.post(f"/posts/{ids[0]}/like")
    await alice.post(f"/posts/{ids[1]}/edit", {"status": f"edited {texts[2]}", "spoiler_text": texts[0]})
    await alice.post("/settings", {"display_name": "Alice", "bio": "hi", "email": f"new-{texts[1]}@example.org"})
    for reader in (alice, bob):  # fill every cache with what the readers see
        for url in ("/", "/public", "/@alice", *(f"/posts/{i}" for i in ids)):
            page = await reader.get(url)
            assert page.status_code == 200
    assert html.escape(texts[2], quote=False) in (await bob.get(f"/posts/{ids[1]}")).text
    for name in ("alice", "bob"):  # and what their apps see (statuses' JSON frames, account counts)
        token = await accounts.create_token(redis_app.state.services, name)
        async with client_for(redis_app, headers={"Authorization": f"Bearer {token}"}) as app_client:
            alice_id = (await app_client.get("/api/v1/accounts/lookup?acct=alice")).json()["id"]
            for url in ("/api/v1/timelines/home", "/api/v1/timelines/public", f"/api/v1/accounts/{alice_id}/statuses"):
                answer = await app_client.get(url)
                assert answer.status_code == 200 and answer.json()
            history = await app_client.get(f"/api/v1/statuses/{ids[1]}/history")
            assert texts[2] in history.text, "the history opens every revision for its reader"

    keys = [key async for key in client.scan_iter(count=500)]
    assert len(keys) > 10, "the caches should hold something"
    assert any(key.startswith(b"cf:{r:") for key in keys), "sealed post frames are among them"
    assert any(key.startswith(b"cf:{j:") for key in keys), "so are the API's sealed status frames"
    assert any(key.startswith(b"cf:{c:") for key in keys), "and account counts"
    assert any(key.startswith(b"cf:{w:") for key in keys), "and the viewers' sealed home pages"
    assert POSTS_STREAM.encode() in keys, "the live events' stream is among them"
    stored = b"\n".join([*keys, *[await client.dump(key) or b"" for key in keys]])
    assert find_leaks(stored, texts) == []
    l1 = redis_app.state.cache.l1_values()
    assert l1 and find_leaks(b"\n".join(encode(v) for v in l1), texts) == []
    # What a page blob's last check keeps beside it in this process (counts, ages, accounts): no text either.
    checked = [b"".join(v.checked.values) for v in l1 if isinstance(v, SealedPage) and v.checked is not None]
    assert len(checked) >= 4 and find_leaks(b"\n".join(checked), texts) == []  # pages and apps' timelines
    assert any(name.startswith("cf:{v:") for name, _ in redis_app.state.cache.l1_items())
    assert any(name.startswith("cf:{q:") for name, _ in redis_app.state.cache.l1_items()), "and public pages"
    messages = []
    for _ in range(200):  # drain; a None is also what the subscribe confirmation gives
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.01)
        if message is not None:
            messages.append(message["data"])
    await listener.aclose()
    assert messages, "writes published invalidations"
    assert any(m.startswith(b'{"c":') for m in messages), "and count updates on the push channel"
    assert find_leaks(b"\n".join(messages), texts) == []


async def test_erasure_receipts_and_job_runs_hold_no_text(make_browser: Any, app: Any) -> None:
    """An erasure's receipt, and the records of the cleanup runs after it, are hashes, key versions, ids and
    counts: no canary, no name, not even the erased user's id in the clear."""
    import re

    from feed.services import erasure
    from feed.services.jobs import run_maintenance
    from feed.storage.tables import erasure_receipts, job_runs
    from jobs.registry import MAINTENANCE

    texts = canaries()
    svc = app.state.services
    alice = await make_browser("alice", email=f"{texts[0]}@example.org")
    bob = await make_browser("bob")
    await bob.post("/@alice/follow")
    first = await alice.compose(texts[1], spoiler_text=texts[2])
    await bob.compose(f"@alice {texts[2]}", in_reply_to_id=str(first))
    await bob.post(f"/posts/{first}/like")
    receipt = await erasure.erase_user(svc, "alice")
    cleanups = ("purge_erased", "expire_sessions", "reconcile_counts")
    for name in cleanups:
        for dry_run in (True, False):
            await run_maintenance(svc, MAINTENANCE[name], dry_run=dry_run)

    async with app.state.engine.connect() as conn:
        receipts = (await conn.execute(sa.select(erasure_receipts))).all()
        runs = (await conn.execute(sa.select(job_runs))).all()
    assert [(len(r.subject), r.key_ids) for r in receipts] == [(32, "v1@root1")]
    assert len([run for run in runs if run.name in cleanups]) == 6
    for run in runs:
        assert re.fullmatch(r"([a-z_]+=\d+(, [a-z_]+=\d+)*)?", run.changed), run.changed
        assert re.fullmatch(r"[\d,]*", run.args) and (run.error or "").isascii()
    rows = "\n".join(repr(tuple(row)) for row in [*receipts, *runs]).encode()
    assert find_leaks(rows, [*texts, "alice", str(receipt.user_id)]) == []
    assert find_leaks(await dump_rows(app.state.engine), texts) == []
