"""One run: a fresh database and Redis, the servers, the phases in order, the report; everything torn down after."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import http
from bench.config import Config
from bench.fanout import fanout
from bench.load import WrkFailed
from bench.push import push
from bench.report import Row, markdown, write
from bench.scenarios import Bench, Load, count_posts
from bench.seed import Dataset, create_database, drop_database, seed
from bench.servers import Cores, Processes, StartFailed, wait_ready

PAGE_POSTS = 20


async def run(config: Config) -> tuple[list[Row], dict[str, Any]]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.perf_counter()
    cores = Cores.split()
    os.sched_setaffinity(0, cores.client)  # this process is a load generator too
    workdir = Path(tempfile.mkdtemp(prefix="cipherfeed-bench-"))
    db_url = ""
    base_db = f"{config.db_name}_baseline"
    try:
        db_url = create_database(config.pg_admin_url, config.db_name)
        dataset = await seed(config, db_url)
        print(f"seeded {dataset.counts} in {dataset.seconds:.1f} s", file=sys.stderr)
        baseline = None
        if config.baseline is not None:
            baseline = await asyncio.to_thread(seed_baseline, config, create_database(config.pg_admin_url, base_db))
            print(f"seeded the baseline's database in {baseline.seconds:.1f} s", file=sys.stderr)
        with Processes(workdir, cores) as procs:
            rows, notes = await _measure(config, dataset, procs, cores, baseline)
    finally:
        if db_url and not config.keep_db:
            drop_database(config.pg_admin_url, config.db_name)
            if config.baseline is not None:
                drop_database(config.pg_admin_url, base_db)
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    meta = {
        "mode": config.mode,
        "summary": {
            "seconds": round(elapsed, 1),
            "users": dataset.counts["users"],
            "posts": dataset.counts["posts"],
            "follows": dataset.counts["follows"],
            "seed seconds": dataset.seconds,
            "cpus": len(cores.everything),
            "server cpus": list(cores.server) if cores.pinned else "not pinned",
            "load cpus": list(cores.client) if cores.pinned else "not pinned",
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "seed": {**dataset.counts, "seconds": dataset.seconds},
        **notes,
    }
    return rows, meta


_SEED_BASELINE = """
import asyncio, json, sys
from dataclasses import asdict, replace
from bench.config import MODES
from bench.seed import seed
users, per_user, rng_seed, db_url = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = replace(MODES["quick"], users=users, posts_per_user=per_user, seed=rng_seed)
print(json.dumps(asdict(asyncio.run(seed(config, db_url)))))
"""


def seed_baseline(config: Config, db_url: str) -> Dataset:
    """The baseline's database, made by the baseline's own code (its migrations, its seeding), from the same seed."""
    assert config.baseline is not None
    argv = [sys.executable, "-c", _SEED_BASELINE, str(config.users), str(config.posts_per_user), str(config.seed),
            db_url]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    done = subprocess.run(  # noqa: S603 - our own argv
        argv, cwd=config.baseline, env=env | {"PYTHONPATH": str(config.baseline)}, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise StartFailed(f"the baseline at {config.baseline} could not seed: {done.stderr.decode()[-500:]}")
    return Dataset(**json.loads(done.stdout.decode().strip().splitlines()[-1]))


def _env(ds: Dataset, data_dir: Path) -> dict[str, str]:
    return {
        "CIPHERFEED_DATABASE_URL": ds.db_url,
        "CIPHERFEED_ROOT_KEY": ds.root_key_json,
        "CIPHERFEED_SECRET_KEY": ds.secret_key,
        "CIPHERFEED_DATA_DIR": str(data_dir),
    }


async def _measure(
    config: Config, ds: Dataset, procs: Processes, cores: Cores, baseline: Dataset | None = None
) -> tuple[list[Row], dict[str, Any]]:
    print("starting servers", file=sys.stderr)
    env = _env(ds, procs.workdir / "data")
    redis_main, redis_cold = procs.redis("redis-main"), procs.redis("redis-l1-cold")
    cf = procs.uvicorn(
        "cipherfeed",
        "feed.app:asgi_factory",
        env | {"CIPHERFEED_REDIS_URL": f"redis://{http.HOST}:{redis_main.port}/0"},
    )
    cold = procs.uvicorn(
        "cipherfeed-l1-cold",
        "bench.l1cold:asgi_factory",
        env | {"CIPHERFEED_REDIS_URL": f"redis://{http.HOST}:{redis_cold.port}/0"},
    )
    naive = procs.uvicorn("naive", "bench.naive:asgi_factory", env)
    await asyncio.gather(wait_ready(cf), wait_ready(cold), wait_ready(naive))
    base_env: dict[str, str] = {}
    if baseline is not None and config.baseline is not None:
        redis_base = procs.redis("redis-baseline")
        base_env = _env(baseline, procs.workdir / "data-baseline")
        base_env["CIPHERFEED_REDIS_URL"] = f"redis://{http.HOST}:{redis_base.port}/0"
        base = procs.uvicorn("baseline", "feed.app:asgi_factory", base_env, code=config.baseline)
        await wait_ready(base)

    cookie = {"Cookie": f"cf_session={ds.session_token}"}
    page = await _page(cf.port, cookie, "cipherfeed")
    page_file = procs.workdir / "page.html"
    page_file.write_bytes(page.body)
    api_headers = {"Authorization": f"Bearer {ds.api_token}"}
    statuses = await http.get(cf.port, "/api/v1/timelines/home", api_headers)
    if statuses.status != 200 or statuses.body.count(b'"favourites_count"') < PAGE_POSTS:
        raise StartFailed(f"the API's home timeline answered {statuses.status} without {PAGE_POSTS} statuses")
    api_file = procs.workdir / "statuses.json"
    api_file.write_bytes(statuses.body)
    page_env = {"BENCH_PAGE_FILE": str(page_file), "BENCH_PAGE_TYPE": page.headers["content-type"],
                "BENCH_API_FILE": str(api_file)}  # fmt: skip
    bare = procs.uvicorn("bare", "bench.peers:asgi_factory", page_env)
    await wait_ready(bare)
    naive_page = await _page(naive.port, cookie, "naive")
    loads = [
        Load("home", cf, "/", cookie),
        Load("bare", bare, "/", cookie),
        Load("naive", naive, "/", cookie),
        Load("l1cold", cold, "/", cookie),
        Load("public", cf, "/public", cookie),
        Load("api", cf, "/api/v1/timelines/home", api_headers),
        Load("bare_api", bare, "/api/v1/timelines/home", api_headers),
        Load("api_public", cf, "/api/v1/timelines/public", api_headers),
    ]
    if baseline is not None:
        loads.append(Load("baseline", base, "/", {"Cookie": f"cf_session={baseline.session_token}"}))
    for load in loads:
        answer = await http.get(load.proc.port, load.path, load.headers)
        if answer.status != 200:
            raise StartFailed(f"{load.name} answered {answer.status} for {load.path}")
    bench = Bench(config, cores, loads, {"home": redis_main.port, "public": redis_main.port, "l1cold": redis_cold.port})
    bench.notes["page_bytes"] = {"cipherfeed": len(page.body), "naive": len(naive_page.body),
                                 "api": len(statuses.body)}  # fmt: skip

    print("warming up", file=sys.stderr)
    # Workers build the viewer's home feeds (queued by the first pages) while the servers warm up, then stop, so
    # that their polling is not in the Redis command counts.
    worker_argv = [sys.executable, "-m", "feed", "worker"]
    workers = [
        procs.start(
            f"worker-{port}",
            worker_argv,
            env=env | {"CIPHERFEED_REDIS_URL": f"redis://{http.HOST}:{port}/0"},
            port=0,
            cpus=cores.client,
        )
        for port in (redis_main.port, redis_cold.port)
    ]
    if base_env and config.baseline is not None:
        workers.append(procs.start("worker-baseline", worker_argv, env=dict(os.environ) | base_env
                                   | {"PYTHONPATH": str(config.baseline)}, port=0, cpus=cores.client,
                                   cwd=config.baseline))  # fmt: skip
    await bench.warm()
    await asyncio.sleep(2)
    await bench.warm()
    for worker in workers:
        worker.popen.terminate()
        worker.popen.wait(timeout=15)
    print("throughput (wrk)", file=sys.stderr)
    await bench.throughput()
    print("latency at 80% (open loop)", file=sys.stderr)
    await bench.latency_at_80()
    redis_warm = await bench.redis_per_page("home")
    await bench.page_blobs("home")
    counted: dict[str, Any] = {}

    async def while_idle() -> None:
        print("micro benchmarks, Redis round trips with L1 cold", file=sys.stderr)
        counted["cold"] = await bench.redis_per_page("l1cold")
        await bench.micro()

    print("hot key expiry", file=sys.stderr)
    await bench.expiry(while_idle)
    bench.summarize(counted["cold"], redis_warm)
    if config.profile:
        print("profiling the home page (py-spy)", file=sys.stderr)
        config.out.mkdir(parents=True, exist_ok=True)
        bench.notes["profile_table"] = await bench.profile(config.out)
    # The servers share one database but not one Redis: each relays the outbox into its own, so only the server a
    # scenario writes through may run (writes of scenario 8 go through cipherfeed, those of 7 through this process).
    cold.stop()
    if baseline is not None:
        base.stop()
    print("live push", file=sys.stderr)
    bench.rows.extend(await push(config.push_clients, config.idle_streams, config.repeats, procs, cf, ds.api_token))
    cf.stop()
    print("fan-out", file=sys.stderr)
    bench.rows.extend(await fanout(config.repeats, procs, env, ds.star_id))
    return bench.rows, {"notes": bench.notes, "samples": bench.raw()}


async def _page(port: int, headers: dict[str, str], who: str) -> http.Response:
    """The home page as the bench viewer sees it, checked to be the logged-in page with a full timeline."""
    found = await http.get(port, "/", headers)
    posts = count_posts(found.body)
    if found.status != 200 or posts != PAGE_POSTS:
        raise StartFailed(f"{who}: the home page answered {found.status} with {posts} posts, not {PAGE_POSTS}")
    return found


def main(config: Config) -> int:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            rows, meta = runner.run(run(config))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("python -m bench: interrupted; its servers are stopped and its database dropped", file=sys.stderr)
        return 130
    except (StartFailed, WrkFailed) as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 1
    table = markdown(rows)
    print(table)
    if "profile_table" in meta["notes"]:
        print("\nWhere the cipherfeed server spends its time on the home page (py-spy):\n")
        print(meta["notes"]["profile_table"])
    json_path, md_path = write(config.out, rows, meta)
    print(f"\n{meta['summary']['seconds']:.0f} s; wrote {json_path} and {md_path}")
    return 0
