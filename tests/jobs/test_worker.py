"""The job plumbing: arq settings, ids-only arguments, retries and recorded failures, the jobs CLI."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from arq.worker import Worker

from feed.queue import LocalQueue, check_args
from feed.services import accounts, posts
from feed.services.jobs import status
from jobs.registry import MAINTENANCE, QUEUED
from jobs.runner import Tries
from jobs.worker import WorkerSettings
from tests.feed.test_cli import cipherfeed, one_line_error
from tests.worker import settle, start_worker, stop_worker

pytestmark = pytest.mark.anyio


def test_every_worker_setting_is_one_arq_knows() -> None:
    known = set(inspect.signature(Worker.__init__).parameters) - {"self"}
    settings = {name for name in vars(WorkerSettings) if not name.startswith("_")}
    assert settings and settings <= known, settings - known
    assert WorkerSettings.keep_result == 0 and WorkerSettings.log_results is False
    assert {f.name for f in WorkerSettings.functions} == set(QUEUED)
    scheduled = {job.name.removeprefix("cron:") for job in WorkerSettings.cron_jobs}
    assert scheduled == {job.name for job in MAINTENANCE.values() if job.minute is not None}


def test_job_arguments_are_ints_only() -> None:
    check_args("fan_out", (1, 2))
    for bad in ("some text", b"bytes", 1.5, True, None, [1]):
        with pytest.raises(TypeError):
            check_args("fan_out", (bad,))


async def test_arq_keys_hold_ids_only_while_jobs_wait(redis_clean: Any) -> None:
    """Every key arq keeps (the queue, the job payloads) while jobs are waiting: ids and names, no text."""
    app, svc = redis_clean, redis_clean.state.services
    client = app.state.cache.link.client
    author = await accounts.register(svc, "author", "correct horse battery staple")
    canary = "arq-canary-" + "q" * 12
    await stop_worker(app)
    try:
        for i in range(3):
            await posts.create(svc, author, f"{canary} {i}", cw=f"{canary} cw")
        keys = [key async for key in client.scan_iter(match="arq:*")]
        assert any(key.startswith(b"arq:job:") for key in keys), keys
        stored = b"".join([key + (await client.dump(key) or b"") for key in keys])
        assert canary.encode() not in stored
        assert b"fan_out" in stored
    finally:
        await start_worker(app)
    await settle(app)
    assert [key async for key in client.scan_iter(match="arq:job:*")] == []
    assert [key async for key in client.scan_iter(match="arq:result:*")] == [], "results are not kept"


async def test_a_failing_job_is_retried_then_recorded(app: Any, clean: None) -> None:
    calls: list[int] = []

    async def flaky(ctx: dict[str, Any], post_id: int) -> None:
        calls.append(ctx["job_try"])
        raise LookupError("always")

    queue = LocalQueue(["flaky"], Tries({"flaky": flaky}, max_tries=3, delay=lambda tries: 0.0))
    queue.ctx["services"] = app.state.services
    assert await queue.enqueue("flaky", 42, key="flaky:42")
    assert not await queue.enqueue("flaky", 42, key="flaky:42"), "one job per key while it waits"
    await queue.drain()
    assert calls == [1, 2, 3]
    report = await status(app.state.services, [])
    assert [(run.name, run.args, run.error) for run in report.failed] == [("flaky", "42", "LookupError")]


async def test_an_outage_does_not_use_up_a_jobs_tries(app: Any, clean: None) -> None:
    """A job that failed because the database did not answer is tried again past its tries, until it can run."""
    calls: list[int] = []

    async def patient(ctx: dict[str, Any], post_id: int) -> None:
        calls.append(ctx["job_try"])
        if len(calls) <= 4:
            raise ConnectionRefusedError("the database is restarting")

    tries = Tries({"patient": patient}, max_tries=2, delay=lambda tries: 0.0, outage=lambda tries: 0.0)
    queue = LocalQueue(["patient"], tries)
    queue.ctx["services"] = app.state.services
    assert await queue.enqueue("patient", 7)
    await queue.drain()
    assert calls == [1, 2, 3, 4, 5], "done at the fifth try, though it may fail for good only twice"
    assert (await status(app.state.services, [])).failed == []


async def test_jobs_cli_lists_runs_and_reports(env: dict[str, str], app: Any, clean: None) -> None:
    listed = cipherfeed(env, "jobs", "list")
    assert listed.returncode == 0, listed.stderr
    for name in (*MAINTENANCE, *QUEUED):
        assert name in listed.stdout
    dry = cipherfeed(env, "jobs", "run", "trim_feeds", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "trim_feeds would change" in dry.stdout
    assert "no job named 'nope'" in one_line_error(cipherfeed(env, "jobs", "run", "nope"))
    ran = cipherfeed(env, "jobs", "run", "vacuum_feeds")
    assert ran.returncode == 0, ran.stderr
    shown = cipherfeed(env, "jobs", "status")
    assert shown.returncode == 0, shown.stderr
    assert "running: 0" in shown.stdout
    assert "vacuum_feeds" in shown.stdout and " done " in shown.stdout
    if "CIPHERFEED_REDIS_URL" not in env:
        assert "CIPHERFEED_REDIS_URL" in one_line_error(cipherfeed(env, "worker"))


async def test_the_embedded_mode_runs_the_maintenance_schedule_itself(app: Any, clean: None) -> None:
    import anyio

    from feed.services.context import now
    from feed.services.jobs import Maintenance, Run, due, run_cron

    ran: list[str] = []

    async def work(svc: Any, job: Run) -> None:
        ran.append(job.name)
        job.count("things", 1)

    moment = now()
    this_minute = Maintenance("this_minute", "runs now", work, minute=frozenset({moment.minute}))
    other_hour = Maintenance(
        "other_hour", "not now", work, minute=frozenset({moment.minute}), hour=frozenset({(moment.hour + 1) % 24})
    )
    by_hand = Maintenance("by_hand", "never by cron", work)
    assert due(this_minute, moment) and not due(other_hour, moment) and not due(by_hand, moment)
    async with anyio.create_task_group() as group:
        group.start_soon(run_cron, app.state.services, [this_minute, other_hour, by_hand])
        with anyio.fail_after(5):
            while not ran:  # noqa: ASYNC110 - the cron loop has no event to wait on
                await anyio.sleep(0.01)
            while (await status(app.state.services, ["this_minute"])).last["this_minute"].state != "done":  # noqa: ASYNC110
                await anyio.sleep(0.01)  # the run is recorded as done before the loop is stopped
        group.cancel_scope.cancel()
    assert ran == ["this_minute"]
    last = (await status(app.state.services, ["this_minute"])).last["this_minute"]
    assert (last.state, last.changed) == ("done", "things=1")


async def test_a_maintenance_run_stopped_at_shutdown_is_recorded_as_cancelled(app: Any, clean: None) -> None:
    import anyio

    from feed.services.jobs import Maintenance, Run, run_maintenance

    started = anyio.Event()

    async def work(svc: Any, job: Run) -> None:
        job.count("things", 2)
        started.set()
        await anyio.sleep(60)

    job = Maintenance("long_one", "runs until stopped", work)
    async with anyio.create_task_group() as group:
        group.start_soon(run_maintenance, app.state.services, job)
        await started.wait()
        group.cancel_scope.cancel()
    last = (await status(app.state.services, ["long_one"])).last["long_one"]
    assert (last.state, last.changed) == ("cancelled", "things=2")
    assert (await status(app.state.services, [])).running == []
