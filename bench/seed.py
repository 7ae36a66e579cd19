"""A reproducible data set, written straight into a fresh PostgreSQL database with the real crypto API.

Fixed seed: the same accounts, follow graph and post texts every run (keys and nonces are random, as they must be).
``users`` accounts plus one, ``star``, whom every other account follows; everyone else follows a number of accounts
drawn from a log-normal, chosen with Zipf-skewed popularity; posts of 100 to 500 characters from a fixed word list,
sealed exactly as ``feed.services.posts`` seals them. The bench viewer, ``bench``, has a browser session and an API
token, stored as the server stores them (keyed hashes under the secret the servers are given).
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import itertools
import random
import secrets
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.config import Config
from crypto import RootKeyRing, UserKey, seal_fields
from feed import db
from feed.keyfile import derive
from feed.services.accounts import new_session_token
from feed.storage.tables import api_tokens, follows, likes, posts, sessions, user_keys, users

BENCH_PASSWORD = "bench-password-not-secret"  # noqa: S105 - a throwaway account in a throwaway database
STAR = "star"
VIEWER = "bench"
_NODE = 0  # the node bits of seeded ids (feed.ids layout: ms << 16 | node << 10 | counter)
WORDS = (
    "the quiet river carried small boats past old stone houses while children waved from the bridge and a dog "
    "barked at gulls circling over the market where vendors sold bread cheese apples honey and bright flowers "
    "to people who had walked in from the hills before sunrise morning coffee tastes better after a long walk "
    "in cold air someone should write down how the light changes across the water in late autumn because it "
    "never looks the same twice i finished the book last night and still think about the ending the garden "
    "needs rain tomorrow maybe we will see the first snow on the mountain trains were late again but the "
    "conductor told jokes so nobody minded much new release notes are out with faster startup fewer bugs and "
    "a cleaner interface thanks to everyone who tested the beta"
).split()


@dataclass(frozen=True, slots=True)
class Dataset:
    """What the run needs to know about the seeded data; the secrets go to the servers' environment only."""

    db_url: str = field(repr=False)
    root_key_json: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str = field(repr=False)
    api_token: str = field(repr=False)
    viewer_id: int
    star_id: int
    counts: dict[str, int]
    seconds: float


def make_id(ms: int, counter: int) -> int:
    return (ms << 16) | (_NODE << 10) | (counter & 0x3FF)


def _psql(admin_url: str, sql: str) -> None:
    subprocess.run(  # noqa: S603 - fixed argv, no shell
        ["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-qc", sql],  # noqa: S607 - psql from PATH
        check=True,
        capture_output=True,
    )


def create_database(admin_url: str, name: str) -> str:
    """(Re)create database ``name``; its URL."""
    drop_database(admin_url, name)
    _psql(admin_url, f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    _psql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def text_of(rng: random.Random) -> str:
    """A post of 100 to 500 characters (inclusive)."""
    target = rng.randint(100, 500)
    words: list[str] = []
    length = -1
    while length < target:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    text = " ".join(words)[:target]
    if text.endswith(" "):
        text = text[:-1] + "."
    return text[0].upper() + text[1:]


class _Zipf:
    """Draws account indexes whose popularity falls off as rank ** -s (ranks shuffled over the accounts)."""

    def __init__(self, rng: random.Random, n: int, s: float) -> None:
        self.rng = rng
        self.order = list(range(n))
        rng.shuffle(self.order)
        self.cum = list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, n + 1)))

    def distinct(self, k: int, exclude: int) -> set[int]:
        k = min(k, len(self.order) - 1)
        chosen: set[int] = set()
        total = self.cum[-1]
        while len(chosen) < k:
            index = self.order[bisect.bisect_left(self.cum, self.rng.random() * total)]
            if index != exclude:
                chosen.add(index)
        return chosen


def _chunks(rows: Iterable[dict[str, Any]], size: int = 5_000) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


async def _insert(conn: AsyncConnection, table: sa.Table, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    for chunk in _chunks(rows):
        await conn.execute(table.insert(), chunk)
        count += len(chunk)
    return count


async def seed(config: Config, db_url: str) -> Dataset:
    started = time.perf_counter()
    rng = random.Random(config.seed)
    ring = RootKeyRing.generate()
    secret_key = secrets.token_urlsafe(32)
    engine = db.make_engine(_async_url(db_url))
    try:
        await db.upgrade(engine)
        async with engine.begin() as conn:
            dataset = await _fill(conn, config, rng, ring, secret_key, db_url)
    finally:
        await engine.dispose()
    return replace(dataset, seconds=round(time.perf_counter() - started, 2))


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _fill(
    conn: AsyncConnection, config: Config, rng: random.Random, ring: RootKeyRing, secret_key: str, db_url: str
) -> Dataset:
    now = datetime.now(UTC).replace(microsecond=0)
    now_ms = int(now.timestamp() * 1000)
    n = config.users + 1  # index 0 is the star, index 1 the bench viewer
    password_hash = PasswordHasher().hash(BENCH_PASSWORD)  # once: only the bench viewer ever logs in
    user_ms = now_ms - 90 * 86_400_000
    ids = [make_id(user_ms + i, 0) for i in range(n)]
    names = [STAR, VIEWER, *(f"user{i:05d}" for i in range(2, n))]
    keys = [UserKey.generate(ids[i], 1) for i in range(n)]

    def user_rows() -> Iterator[dict[str, Any]]:
        for i in range(n):
            created = datetime.fromtimestamp((user_ms + i) / 1000, UTC)
            yield {
                "id": ids[i],
                "username": names[i],
                "username_lower": names[i].lower(),
                "display_name": names[i].capitalize() if i % 3 else "",
                "bio": "",
                "password_hash": password_hash,
                "email_index": None,
                "email_sealed": None,
                "key_version": 1,
                "created_at": created,
                "updated_at": created,
            }

    counts = {"users": await _insert(conn, users, user_rows())}
    counts["user_keys"] = await _insert(
        conn,
        user_keys,
        (
            {
                "user_id": k.user_id,
                "version": 1,
                "root_version": ring.primary,
                "wrapped": ring.wrap_user_key(k),
                "created_at": now,
            }
            for k in keys
        ),
    )

    zipf = _Zipf(rng, n, config.zipf_s)
    followees: list[set[int]] = [set() for _ in range(n)]
    for i in range(1, n):
        degree = config.viewer_followees if i == 1 else max(1, int(rng.lognormvariate(3.2, 0.8)))
        followees[i] = zipf.distinct(degree, exclude=i) | {0}
        followees[i].discard(i)
    counts["follows"] = await _insert(
        conn,
        follows,
        ({"follower_id": ids[i], "followee_id": ids[j], "created_at": now} for i in range(1, n) for j in followees[i]),
    )
    counts["star_followers"] = n - 1

    # Posts: each account a random share (the star posts more), spread over the last 30 days, oldest first.
    authors = [0] * 50 + [i for i in range(1, n) for _ in range(rng.randint(0, 2 * config.posts_per_user))]
    span_ms = 30 * 86_400_000
    stamps = sorted(rng.randrange(now_ms - span_ms, now_ms - 60_000) for _ in authors)
    rng.shuffle(authors)
    post_ids: list[int] = []

    def post_rows() -> Iterator[dict[str, Any]]:
        last_ms, counter = -1, 0
        for ms, author in zip(stamps, authors, strict=True):
            counter = counter + 1 if ms == last_ms else 0
            last_ms = ms
            post_id = make_id(ms, counter)
            post_ids.append(post_id)
            text = text_of(rng)
            cw = "spoilers ahead" if rng.random() < 0.1 else None
            fields = {"body": text} | ({"cw": cw} if cw else {})
            sealed = seal_fields(keys[author], fields, object_id=post_id, owner_id=ids[author], revision=1)
            roll = rng.random()
            yield {
                "id": post_id,
                "author_id": ids[author],
                "visibility": "public" if roll < 0.85 else "unlisted" if roll < 0.95 else "followers",
                "in_reply_to_id": None,
                "in_reply_to_author_id": None,
                "revision": 1,
                "key_version": 1,
                "body": sealed["body"].data,
                "cw": sealed["cw"].data if cw else None,
                "likes_count": rng.randint(0, 5),
                "replies_count": 0,
                "created_at": datetime.fromtimestamp(ms / 1000, UTC),
                "edited_at": None,
            }

    counts["posts"] = await _insert(conn, posts, post_rows())
    liked = rng.sample(post_ids, min(300, len(post_ids)))
    counts["likes"] = await _insert(conn, likes, ({"post_id": p, "user_id": ids[1], "created_at": now} for p in liked))

    token_key = derive(secret_key.encode(), "token")
    session_token = new_session_token(ids[1])  # as the server makes them: naming its user
    api_token = secrets.token_urlsafe(32)
    await conn.execute(
        sessions.insert().values(
            id_hash=hmac.new(token_key, session_token.encode(), hashlib.sha256).digest(),
            user_id=ids[1],
            created_at=now,
            expires_at=now + timedelta(days=30),
        )
    )
    await conn.execute(
        api_tokens.insert().values(
            token_hash=hmac.new(token_key, api_token.encode(), hashlib.sha256).digest(),
            user_id=ids[1],
            name="bench",
            created_at=now,
            expires_at=None,
        )
    )
    await conn.execute(sa.text("ANALYZE"))
    return Dataset(
        db_url=db_url,
        root_key_json=ring.to_json(),
        secret_key=secret_key,
        session_token=session_token,
        api_token=api_token,
        viewer_id=ids[1],
        star_id=ids[0],
        counts=counts,
        seconds=0.0,
    )
