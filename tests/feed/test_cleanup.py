"""The database cleanup jobs: dry runs change nothing, a second run changes nothing more, a stopped run resumes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from feed.cache import POSTS, SESSIONS
from feed.services import accounts, cleanup, erasure, oauth
from feed.services.context import now
from feed.services.jobs import run_maintenance
from feed.storage.tables import api_tokens, job_cursors, job_runs, oauth_codes, posts, sessions, users
from jobs.registry import MAINTENANCE
from jobs.worker import WorkerSettings
from tests.conftest import PASSWORD, snapshot

pytestmark = pytest.mark.anyio

JOBS = ("purge_erased", "expire_sessions", "reconcile_counts")


async def execute(app: Any, statement: Any) -> None:
    async with app.state.engine.begin() as conn:
        await conn.execute(statement)


async def mess(app: Any, make_browser: Any) -> dict[str, int]:
    """Something for every job to do: an erased account with posts, likes, a boost, mentions and follows; an expired
    session and an expired token; drifted like and reply counts."""
    svc = app.state.services
    alice = await make_browser("alice")
    bob = await make_browser("bob")
    await alice.post("/@bob/follow")
    await bob.post("/@alice/follow")
    ids = {"bob_post": await bob.compose("bob words"), "alice_post": await alice.compose("@bob alice words")}
    ids["alice_reply"] = await alice.compose("alice replies", in_reply_to_id=str(ids["bob_post"]))
    await alice.post(f"/posts/{ids['bob_post']}/like")
    await bob.post(f"/posts/{ids['alice_post']}/like")
    await alice.post(f"/posts/{ids['bob_post']}/boost")
    ids["bob_other"] = await bob.compose("@alice more bob words")
    await erasure.erase_user(svc, "alice")

    carol = await make_browser("carol")
    ids["carol_post"] = await carol.compose("carol words")
    for name in ("expiring", "forever", "later"):
        await accounts.create_token(svc, "carol", name)
    past = now() - timedelta(minutes=1)
    await execute(app, sessions.update().where(sessions.c.user_id == (await accounts.find_user(svc, "carol")).id)
                  .values(expires_at=past))  # fmt: skip
    await execute(app, api_tokens.update().where(api_tokens.c.name == "expiring").values(expires_at=past))
    await execute(app, api_tokens.update().where(api_tokens.c.name == "later").values(expires_at=now() + timedelta(1)))
    await execute(app, posts.update().where(posts.c.id == ids["carol_post"]).values(likes_count=3, replies_count=2))
    return ids


def at_rest(tables: dict[str, list[str]]) -> dict[str, list[str]]:
    """The tables but ``job_runs``, where every run, dry or not, records itself (that is its report)."""
    return {name: rows for name, rows in tables.items() if name != "job_runs"}


async def redis_state(app: Any) -> dict[bytes, bytes | None]:
    """Every Redis key and its value but arq's own (its worker writes a health check now and then)."""
    link = app.state.cache.link
    if link is None:
        return {}
    keys = [key async for key in link.client.scan_iter(count=1000) if not key.startswith(b"arq:")]
    return {key: await link.client.dump(key) for key in sorted(keys)}


@pytest.mark.parametrize("name", JOBS)
async def test_a_dry_run_changes_nothing_and_a_second_run_nothing_more(name: str, make_browser: Any, app: Any) -> None:
    await mess(app, make_browser)
    svc, job = app.state.services, MAINTENANCE[name]
    before, cached = await snapshot(app), await redis_state(app)
    assert cached or app.state.cache.link is None, "the caches should hold something to keep"

    dry = await run_maintenance(svc, job, dry_run=True)
    assert dry.changed, "the job should have found something to do"
    assert at_rest(await snapshot(app)) == at_rest(before)
    assert await redis_state(app) == cached

    real = await run_maintenance(svc, job)
    assert real.changed == dry.changed
    after = await snapshot(app)
    assert at_rest(after) != at_rest(before)

    again = await run_maintenance(svc, job)
    assert again.changed == {}
    assert at_rest(await snapshot(app)) == at_rest(after)
    async with app.state.engine.connect() as conn:
        runs = (await conn.execute(sa.select(job_runs).where(job_runs.c.name == name).order_by(job_runs.c.id))).all()
        assert (await conn.execute(sa.select(job_cursors))).all() == []
    assert [(r.name, r.dry_run, r.state) for r in runs] == [(name, True, "done"), (name, False, "done"),
                                                            (name, False, "done")]  # fmt: skip
    assert runs[0].changed == runs[1].changed == real.summary() and runs[2].changed == ""


async def test_purge_what_it_changes(make_browser: Any, app: Any) -> None:
    ids = await mess(app, make_browser)
    run = await run_maintenance(app.state.services, MAINTENANCE["purge_erased"])
    # posts: alice's two; likes: bob's of hers and hers of bob's; mentions: of bob in hers, of her in bob's;
    # boosts: hers of bob's; follows: both ways; users: her row
    assert run.changed == {"posts": 2, "likes": 2, "boosts": 1, "mentions": 2, "follows": 2, "users": 1}
    async with app.state.engine.connect() as conn:
        bob_post = (await conn.execute(sa.select(posts).where(posts.c.id == ids["bob_post"]))).one()
        names = set((await conn.scalars(sa.select(users.c.username))).all())
    assert (bob_post.likes_count, bob_post.replies_count, bob_post.reblogs_count) == (0, 0, 0)
    assert names == {"bob", "carol"}


async def test_expire_sessions_removes_only_what_expired_and_drops_it_from_the_cache(
    make_browser: Any, app: Any
) -> None:
    svc = app.state.services
    dana = await make_browser("dana")
    away = await make_browser()
    await away.get("/login")
    await away.post("/login", {"username": "dana", "password": PASSWORD})
    assert (await away.get("/settings")).status_code == 200  # its session is cached now
    cookie = next(value for name, value in away.http.cookies.items() if name.endswith("cf_session"))
    id_hash = accounts.token_hash(svc, cookie)
    assert app.state.cache.cached(SESSIONS, id_hash.hex()) is not None
    await execute(app, sessions.update().where(sessions.c.id_hash == id_hash).values(expires_at=now()))
    forever = await accounts.create_token(svc, "dana", "forever")
    expiring = await accounts.create_token(svc, "dana", "expiring")
    await execute(app, api_tokens.update().where(api_tokens.c.name == "expiring").values(expires_at=now()))
    registered, _ = await oauth.register_app(svc, "an app", ["urn:ietf:wg:oauth:2.0:oob"], "read", None, "127.0.0.1")
    user = await accounts.find_user(svc, "dana")
    for code in ("stale-code", "fresh-code"):
        await oauth.save_code(svc, code, registered, user, "urn:ietf:wg:oauth:2.0:oob", ["read"], None, None)
    stale = accounts.token_hash(svc, "stale-code")
    await execute(app, oauth_codes.update().where(oauth_codes.c.code_hash == stale).values(expires_at=now()))

    run = await run_maintenance(svc, MAINTENANCE["expire_sessions"])
    assert run.changed == {"sessions": 1, "api_tokens": 1, "oauth_codes": 1}
    assert await oauth.redeem_code(svc, "fresh-code") is not None, "a code still in its ten minutes stays"
    assert app.state.cache.cached(SESSIONS, id_hash.hex()) is None
    assert (await away.get("/settings")).status_code == 303
    assert (await dana.get("/settings")).status_code == 200
    assert await accounts.token_user(svc, forever) is not None
    assert await accounts.token_user(svc, expiring) is None


async def test_reconcile_fixes_drifted_counts_and_the_cached_posts(make_browser: Any, api: Any, app: Any) -> None:
    bob = await make_browser("bob")
    carol = await make_browser("carol")
    post_id = await bob.compose("bob words")
    await carol.post(f"/posts/{post_id}/like")
    await carol.post(f"/posts/{post_id}/boost")
    await carol.compose("@bob a reply", in_reply_to_id=str(post_id))
    drift = {"likes_count": 9, "replies_count": 0, "reblogs_count": 4}
    await execute(app, posts.update().where(posts.c.id == post_id).values(**drift))
    client = await api()
    drifted = (await client.get(f"/api/v1/statuses/{post_id}")).json()  # cached with the wrong counts
    assert (drifted["favourites_count"], drifted["replies_count"], drifted["reblogs_count"]) == (9, 0, 4)

    run = await run_maintenance(app.state.services, MAINTENANCE["reconcile_counts"])
    assert run.changed == {"likes_count": 1, "replies_count": 1, "reblogs_count": 1}
    assert app.state.cache.cached(POSTS, post_id) is None
    fixed = (await client.get(f"/api/v1/statuses/{post_id}")).json()
    assert (fixed["favourites_count"], fixed["replies_count"], fixed["reblogs_count"]) == (1, 1, 1)


def stop_after(done: int) -> Any:
    """A progress callback that stops the run (as a crash would) once ``done`` rows are through."""

    def progress(at: int, total: int | None) -> None:
        if at >= done:
            raise RuntimeError("stopped")

    return progress


async def cursors(app: Any) -> dict[str, int]:
    async with app.state.engine.connect() as conn:
        return {row.name: row.cursor for row in await conn.execute(sa.select(job_cursors))}


async def test_a_purge_stopped_after_its_first_chunk_goes_on_from_its_checkpoint(
    make_browser: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "CHUNK", 2)
    svc = app.state.services
    alice = await make_browser("alice")
    written = [await alice.compose(f"alice words {i}") for i in range(5)]
    receipt = await erasure.erase_user(svc, "alice")

    with pytest.raises(RuntimeError, match="stopped"):
        await run_maintenance(svc, MAINTENANCE["purge_erased"], on_progress=stop_after(2))
    assert await cursors(app) == {f"purge_erased:posts:{receipt.user_id}": written[1]}
    dry = await run_maintenance(svc, MAINTENANCE["purge_erased"], dry_run=True)
    assert dry.changed == {"posts": 3, "users": 1}

    resumed = await run_maintenance(svc, MAINTENANCE["purge_erased"])
    assert resumed.changed == {"posts": 3, "users": 1}
    assert await cursors(app) == {}
    async with app.state.engine.connect() as conn:
        assert (await conn.execute(sa.select(posts))).all() == []
        states = [r.state for r in await conn.execute(sa.select(job_runs).order_by(job_runs.c.id))]
    assert states == ["failed", "done", "done"]


async def test_a_reconcile_stopped_half_way_resumes_from_its_checkpoint(
    make_browser: Any, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "CHUNK", 2)
    svc = app.state.services
    bob = await make_browser("bob")
    written = [await bob.compose(f"bob words {i}") for i in range(5)]
    await execute(app, posts.update().values(likes_count=7))

    with pytest.raises(RuntimeError, match="stopped"):
        await run_maintenance(svc, MAINTENANCE["reconcile_counts"], on_progress=stop_after(2))
    assert await cursors(app) == {"reconcile_counts": written[1]}
    # Drift behind the checkpoint: the resumed run goes on after it, the next run starts from the beginning.
    await execute(app, posts.update().where(posts.c.id == written[0]).values(likes_count=8))
    resumed = await run_maintenance(svc, MAINTENANCE["reconcile_counts"])
    assert resumed.changed == {"likes_count": 3}
    fresh = await run_maintenance(svc, MAINTENANCE["reconcile_counts"])
    assert fresh.changed == {"likes_count": 1}
    assert await cursors(app) == {}


def test_the_cleanup_jobs_run_on_a_schedule() -> None:
    scheduled = {job.name for job in WorkerSettings.cron_jobs}
    for name in JOBS:
        job = MAINTENANCE[name]
        assert job.minute and f"cron:{name}" in scheduled, name
