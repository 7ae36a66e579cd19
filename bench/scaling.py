"""The scaling benchmark: how throughput grows with web processes and Redis nodes, and what a fan-out costs on one
Redis against a three-primary Redis Cluster, measured in one run on this machine.

``python -m bench.scaling [--users 10000] [--seconds 5] [--rounds 2] [--procs 1,2,4] [--out DIR]`` prints a
markdown table and writes ``scaling.json`` and ``scaling.md`` (to ``bench/results`` by default).

1. **Seeds** a database of its own (``bench.seed``): ``users`` accounts, each following the star.
2. **Mixed workload**, for each Redis (one server; a Redis Cluster of three primaries, with the job queue on a
   server of its own) and each count of web processes (``cipherfeed serve`` as uvicorn runs it, not pinned, and one
   worker): ``clients`` keep-alive connections spread over the processes, each sending, as one of ``accounts``
   accounts picked at random, 70% home timeline reads (``/api/v1/timelines/home``), 20% likes and 10% new posts
   (whose fan-outs the worker runs meanwhile), back to back for ``seconds``. The figure is answered requests a
   second; configurations alternate round by round and the median of the rounds is kept. Each row is set next to
   the figure of one process on one Redis in the same run.
3. **Fan-out**: a post by the star into the feeds of its ``users`` followers (every feed built first), the worker's
   own function (``feed.services.fanout.fan_out``) run in this process against one Redis and against the cluster,
   alternately; medians.
4. **Per-operation costs** for the projection in ``bench/README.md``: Redis's own ``MEMORY USAGE`` of a full home
   feed and of a user's event stream at its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import http
from bench.config import DEFAULT_PG_ADMIN_URL, Config
from bench.seed import Dataset, create_database, drop_database, seed
from bench.servers import Cores, Processes, redis_cluster, wait_ready
from feed import db
from feed.keyfile import derive
from feed.storage.tables import api_tokens, posts, users

RESULTS = Path(__file__).resolve().parent / "results"
MIX = (("home", 0.7), ("like", 0.2), ("post", 0.1))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="accounts, each a follower of the star")
    parser.add_argument("--accounts", type=int, default=200, help="accounts the mixed workload acts as")
    parser.add_argument("--clients", type=int, default=32, help="connections of the mixed workload")
    parser.add_argument("--seconds", type=float, default=5.0, help="of each mixed-workload measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fanout-repeats", type=int, default=3)
    parser.add_argument("--procs", default="1,2,4", help="web process counts, comma separated")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        args.procs = [int(n) for n in args.procs.split(",")]
    except ValueError:
        parser.error("--procs is a list of numbers: 1,2,4")
    if args.users < 10 or args.accounts < 1 or args.clients < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--users at least 10; --accounts, --clients, --seconds and --rounds positive")
    if not args.procs or min(args.procs) < 1 or args.fanout_repeats < 1:
        parser.error("--procs and --fanout-repeats must be positive")
    return args


async def _tokens(ds: Dataset, count: int) -> list[str]:
    """API tokens for ``count`` seeded accounts (not the star), stored as the server stores them."""
    token_key = derive(ds.secret_key.encode(), "token")
    engine = db.make_engine(ds.db_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    made = []
    try:
        async with engine.begin() as conn:
            found = (await conn.execute(sa.select(users.c.id).where(users.c.id != ds.star_id).order_by(users.c.id)
                                        .limit(count))).scalars().all()  # fmt: skip
            now = datetime.now(UTC)
            for user_id in found:
                token = os.urandom(24).hex()
                await conn.execute(api_tokens.insert().values(
                    token_hash=hmac.new(token_key, token.encode(), hashlib.sha256).digest(), user_id=user_id,
                    name="scaling", created_at=now, expires_at=None))  # fmt: skip
                made.append(token)
    finally:
        await engine.dispose()
    return made


async def _post_ids(ds: Dataset, count: int = 2000) -> list[int]:
    engine = db.make_engine(ds.db_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.connect() as conn:
            query = sa.select(posts.c.id).where(posts.c.visibility == "public").order_by(posts.c.id.desc())
            return list((await conn.execute(query.limit(count))).scalars().all())
    finally:
        await engine.dispose()


def _request(kind: str, token: str, rng: random.Random, post_ids: Sequence[int]) -> bytes:
    auth = {"Authorization": f"Bearer {token}"}
    if kind == "home":
        return http.build_request("/api/v1/timelines/home?limit=20", auth)
    if kind == "like":
        return http.build_request(f"/api/v1/statuses/{rng.choice(post_ids)}/favourite", auth, method="POST", form={})
    return http.build_request("/api/v1/statuses", auth, method="POST", form={"status": f"scaling {rng.random()}"})


async def mixed(ports: Sequence[int], tokens: Sequence[str], post_ids: Sequence[int], seconds: float, clients: int,
                seed: int) -> dict[str, Any]:  # fmt: skip
    """The mixed workload against ``ports`` for ``seconds``: answered requests by kind, failures, requests/s."""
    done: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    stop_at = time.monotonic() + seconds

    async def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        conn = await http.Connection.open(ports[n % len(ports)])
        try:
            while time.monotonic() < stop_at:
                kind = rng.choices(kinds, weights)[0]
                answer = await conn.send(_request(kind, rng.choice(tokens), rng, post_ids))
                (done if answer.status < 400 else failed)[kind] += 1
        finally:
            await conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.monotonic() - started
    return {"per_second": sum(done.values()) / elapsed, "done": dict(done), "failed": dict(failed)}


async def _fanout(env: Mapping[str, str], topologies: Mapping[str, dict[str, str]], star_id: int,
                  repeats: int) -> dict[str, Any]:  # fmt: skip
    """Seconds of one post's fan-out to all the star's followers, on each Redis, alternately."""
    import contextlib

    from feed.runtime import open_runtime
    from feed.services import accounts, fanout
    from feed.services import posts as post_service
    from feed.settings import load_settings
    from feed.storage import follows as follow_store

    seconds: dict[str, list[float]] = {name: [] for name in topologies}
    async with contextlib.AsyncExitStack() as stack:
        services = {}
        for name, extra in topologies.items():
            settings = load_settings({**env, **extra, "CIPHERFEED_FANOUT_MAX_FOLLOWERS": "10000000"})
            runtime = await stack.enter_async_context(open_runtime(settings, "worker"))
            services[name] = runtime.services
        first = next(iter(services.values()))
        async with first.db() as session:
            followers = await follow_store.followers_after(session, star_id, 0, 10_000_000)
        for svc in services.values():  # every follower's feed built (empty), so that the fan-out writes them all
            assert svc.feeds is not None
            for at in range(0, len(followers), 500):
                await asyncio.gather(*(svc.feeds.replace(uid, []) for uid in followers[at : at + 500]))
        star = await accounts.get_user(first, star_id)
        for round_ in range(repeats):
            for name, svc in services.items():
                post = await post_service.create(svc, star, f"fan-out {name} {round_}")
                started = time.perf_counter()
                written = await fanout.fan_out(svc, post.id)
                seconds[name].append(time.perf_counter() - started)
                if written < len(followers):
                    raise RuntimeError(f"the fan-out on {name} wrote {written} of {len(followers)} feeds")
        costs = await _costs(services[next(iter(services))])
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    return {"followers": len(followers), "seconds": medians, "samples": seconds, "costs": costs,
            "feeds_per_second": {name: len(followers) / s for name, s in medians.items()}}  # fmt: skip


async def _costs(svc: Any) -> dict[str, int]:
    """Redis's MEMORY USAGE of a full feed and of a user stream at its bound (fields as a fan-out writes them)."""
    from feed.events import HOME, Event
    from feed.home_feeds import feed_key
    from feed.ids import new_id
    from feed.streams import USER_KEPT, user_stream

    client = svc.feeds.link.client
    ids = [new_id() for _ in range(svc.feeds.size)]
    await svc.feeds.replace(-1, ids)
    feed_bytes = int(await client.memory_usage(feed_key(-1), samples=0))
    key = user_stream(-1)
    async with client.pipeline(transaction=False) as pipe:
        for post_id in (ids[n % len(ids)] for n in range(USER_KEPT)):
            pipe.xadd(key, Event(HOME, post_id, 117_000_000_000_000_000, "public", committed_ms=post_id >> 16).fields())
        await pipe.execute()
    stream_bytes = int(await client.memory_usage(key, samples=0))
    await client.delete(feed_key(-1))
    await client.delete(key)
    return {"feed_bytes": feed_bytes, "feed_entries": svc.feeds.size + 1, "stream_bytes": stream_bytes,
            "stream_entries": USER_KEPT}  # fmt: skip


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cipherfeed-scaling-"))
    name = f"cipherfeed_scaling_{os.getpid()}"
    db_url = ""
    cores = Cores.split()
    everything = cores.everything
    try:
        db_url = create_database(args.pg_admin_url, name)
        config = Config(mode="scaling", users=args.users, posts_per_user=3, viewer_followees=30)
        ds = await seed(config, db_url)
        print(f"seeded {ds.counts} in {ds.seconds:.1f} s", file=sys.stderr)
        tokens = await _tokens(ds, args.accounts)
        post_ids = await _post_ids(ds)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")} | {
            "CIPHERFEED_DATABASE_URL": ds.db_url, "CIPHERFEED_ROOT_KEY": ds.root_key_json,
            "CIPHERFEED_SECRET_KEY": ds.secret_key, "CIPHERFEED_DATA_DIR": str(workdir / "data"),
            "CIPHERFEED_WORKER_METRICS": "off", "CIPHERFEED_LOG_LEVEL": "warning",
        }  # fmt: skip
        with Processes(workdir, cores) as procs:
            single = procs.redis("redis-one")
            queue = procs.redis("redis-queue")
            cluster_url = redis_cluster(procs, "redis-cluster")
            topologies = {
                "1 Redis": {"CIPHERFEED_REDIS_URL": f"redis://{http.HOST}:{single.port}/0"},
                "3-node cluster": {"CIPHERFEED_REDIS_URL": cluster_url,
                                   "CIPHERFEED_QUEUE_REDIS_URL": f"redis://{http.HOST}:{queue.port}/0"},
            }  # fmt: skip
            runs: dict[str, list[dict[str, Any]]] = {}
            for round_ in range(args.rounds):
                for topology, extra in topologies.items():
                    for count in args.procs:
                        label = f"{count} web x {topology}"
                        print(f"round {round_ + 1}: {label}", file=sys.stderr)
                        result = await _one(procs, env | extra, count, tokens, post_ids, args, everything, round_)
                        runs.setdefault(label, []).append(result)
            fan = await _fanout(env, topologies, ds.star_id, args.fanout_repeats)
    finally:
        if db_url:
            drop_database(args.pg_admin_url, name)
        shutil.rmtree(workdir, ignore_errors=True)
    throughput = {label: statistics.median(r["per_second"] for r in results) for label, results in runs.items()}
    return {
        "users": args.users, "accounts": args.accounts, "clients": args.clients, "seconds": args.seconds,
        "rounds": args.rounds, "cpus": len(everything), "mix": dict(MIX),
        "throughput": throughput,
        "failed": {label: sum(sum(r["failed"].values()) for r in results) for label, results in runs.items()},
        "samples": runs,
        "fanout": fan,
    }  # fmt: skip


async def _one(procs: Processes, env: dict[str, str], count: int, tokens: Sequence[str], post_ids: Sequence[int],
               args: argparse.Namespace, cpus: Sequence[int], round_: int) -> dict[str, Any]:  # fmt: skip
    web = [procs.uvicorn(f"web-{n}", "feed.app:asgi_factory", env, cpus=cpus) for n in range(count)]
    worker = procs.start("worker", [sys.executable, "-m", "feed", "worker"], env=env, port=0, cpus=cpus)
    try:
        for proc in web:
            await wait_ready(proc)
        ports = [proc.port for proc in web]
        # Warm: every account's home feed built (the first read queues it) and each process's caches filled.
        await mixed(ports, tokens, post_ids, 1.0, args.clients, seed=1_000 + round_)
        await asyncio.sleep(1.0)
        return await mixed(ports, tokens, post_ids, args.seconds, args.clients, seed=round_)
    finally:
        for proc in [*web, worker]:
            proc.stop()
            procs.procs.remove(proc)


def table(result: dict[str, Any]) -> str:
    throughput: dict[str, float] = result["throughput"]
    base = throughput.get("1 web x 1 Redis")
    lines = ["| measurement | figure | vs one process on one Redis, same run |", "| --- | --- | --- |"]
    for label, value in throughput.items():
        ratio = f"{value / base:.2f}" if base else "n/a"
        lines.append(f"| mixed workload, {label} (requests/s) | {value:.0f} | {ratio} |")
    fan = result["fanout"]
    seconds = fan["seconds"]
    one = seconds.get("1 Redis")
    for topology, value in seconds.items():
        ratio = f"{one / value:.2f}" if one else "n/a"
        lines.append(f"| fan-out of one post to {fan['followers']} feeds, {topology} (s; speed ratio) | "
                     f"{value:.3f} | {ratio} |")  # fmt: skip
    costs = fan["costs"]
    lines.append(f"| Redis memory of a full home feed ({costs['feed_entries']} entries) | {costs['feed_bytes']} B | |")
    lines.append(f"| Redis memory of a user's event stream ({costs['stream_entries']} entries) | "
                 f"{costs['stream_bytes']} B | |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = asyncio.run(measure(args))
    text = table(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "scaling.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
