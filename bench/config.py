"""The three sizes of a run and every knob they set, in one frozen value."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Config:
    mode: str
    seed: int = 20240604
    users: int = 10_000  # plus one account that all of them follow
    posts_per_user: int = 10  # on average
    viewer_followees: int = 100  # the bench viewer's own out-degree (besides the star)
    zipf_s: float = 1.1  # popularity of followees: weight of rank r is r ** -s
    duration: float = 10.0  # seconds per wrk or open-loop measurement
    warmup: float = 2.0  # seconds of wrk per target before the first measurement
    repeats: int = 3  # rounds of the A/B/... sequence (cipherfeed measured once more at the end)
    connections: int = 16  # wrk connections
    open_loop_connections: int = 64
    burst: int = 200  # concurrent requests at the expiry of a hot key (scenario 5)
    expiry_rounds: int = 3
    redis_count_requests: int = 300  # requests over which Redis commands per page are counted (scenario 3)
    micro_repeats: int = 7
    push_clients: int = 1_000  # SSE streams one post is delivered to (scenario 8)
    idle_streams: int = 10_000  # idle streams held to measure memory per stream (scenario 8)
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL
    db_name: str = ""
    keep_db: bool = False
    profile: bool = False  # py-spy on the cipherfeed server during one extra run of the home page
    out: Path = DEFAULT_OUT
    # A checkout of an earlier commit (``git worktree add DIR REF``): its home page is measured in the same run, on a
    # database seeded by its own code, so that a change's cost is a ratio of one run.
    baseline: Path | None = None


MODES: dict[str, Config] = {
    "full": Config(mode="full"),
    "quick": Config(
        mode="quick",
        users=2_000,
        posts_per_user=10,
        duration=3.0,
        warmup=1.0,
        repeats=2,
        expiry_rounds=1,
        redis_count_requests=200,
        micro_repeats=5,
    ),
    "smallest": Config(
        mode="smallest",
        users=200,
        posts_per_user=5,
        viewer_followees=30,
        duration=0.5,
        warmup=0.3,
        repeats=1,
        burst=50,
        expiry_rounds=1,
        redis_count_requests=30,
        micro_repeats=3,
        push_clients=50,
        idle_streams=200,
    ),
}


def parse(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    for name, what in (
        ("smallest", "seconds: the configuration the test runs"),
        ("quick", "about two minutes on two cores (the default)"),
        ("full", "10,000 users, longer and more repeats"),
    ):
        size.add_argument(f"--{name}", dest="mode", action="store_const", const=name, help=what)
    parser.add_argument("--users", type=int, help="accounts to seed (besides the one everyone follows)")
    parser.add_argument("--posts-per-user", type=int, help="average posts per account")
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, help="rounds of the alternating sequence")
    parser.add_argument("--seed", type=int, help="random seed of the data set")
    parser.add_argument("--out", type=Path, help=f"where latest.json and latest.md go (default {DEFAULT_OUT})")
    parser.add_argument("--pg-admin-url", help=f"PostgreSQL to create the bench database in ({DEFAULT_PG_ADMIN_URL})")
    parser.add_argument("--keep-db", action="store_true", help="leave the bench database behind (to inspect it)")
    parser.add_argument("--profile", action="store_true", help="also profile the home page with py-spy")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit whose home page to measure too")
    args = parser.parse_args(argv)
    config = MODES[args.mode or "quick"]
    overrides = {
        "users": args.users,
        "posts_per_user": args.posts_per_user,
        "duration": args.duration,
        "repeats": args.repeats,
        "seed": args.seed,
        "out": args.out,
        "pg_admin_url": args.pg_admin_url,
        "baseline": args.baseline.resolve() if args.baseline else None,
    }
    config = replace(
        config, **{k: v for k, v in overrides.items() if v is not None}, keep_db=args.keep_db, profile=args.profile
    )
    # One database per run, so that the test and a run by hand can overlap on one machine.
    return replace(config, db_name=f"cipherfeed_bench_{os.getpid()}")
