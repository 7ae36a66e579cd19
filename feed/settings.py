"""Settings, read once from the environment (``CIPHERFEED_*``) by the entry points and passed down as values.

Unset means the embedded default: SQLite and a generated root key under the data dir, no Redis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from feed.media.config import StoreConfig
from feed.redis_link import BadRedisUrl, parse_redis_url


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable, never a secret value."""


def _redis_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        parse_redis_url(raw)
    except BadRedisUrl as exc:
        raise ConfigError(f"CIPHERFEED_REDIS_URL: {exc}") from None
    return raw


def _queue_redis_url(env: Mapping[str, str]) -> str | None:
    """arq needs transactions over several keys, which a Redis Cluster refuses: its Redis is one server or a
    Sentinel-watched primary, the main one unless that is a cluster."""
    main = _redis_url(env.get("CIPHERFEED_REDIS_URL") or None)
    raw = env.get("CIPHERFEED_QUEUE_REDIS_URL") or None
    if raw is None and main is not None and parse_redis_url(main).kind == "cluster":
        raise ConfigError(
            "CIPHERFEED_QUEUE_REDIS_URL is needed with a Redis Cluster: the job queue (arq) runs on one Redis or a "
            "Sentinel-watched primary"
        )
    if raw is not None and main is None:
        raise ConfigError(
            "CIPHERFEED_QUEUE_REDIS_URL needs CIPHERFEED_REDIS_URL (the embedded mode runs its jobs itself)"
        )
    url = _redis_url(raw) if raw is not None else main
    if url is not None and parse_redis_url(url).kind == "cluster":
        raise ConfigError("CIPHERFEED_QUEUE_REDIS_URL: the job queue (arq) cannot run on a Redis Cluster")
    return url


class Secret:
    """A string that does not show itself in repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    # URLs may hold passwords: kept out of the repr like the secrets.
    database_url: str = field(repr=False)
    redis_url: str | None = field(default=None, repr=False)
    # The job queue's Redis (arq): CIPHERFEED_QUEUE_REDIS_URL, else CIPHERFEED_REDIS_URL (one server or Sentinel).
    queue_redis_url: str | None = field(default=None, repr=False)
    # PostgreSQL streaming replicas for reads that tolerate a short lag (CIPHERFEED_DATABASE_REPLICA_URLS), and
    # how far behind one may be and still be read (CIPHERFEED_REPLICA_MAX_LAG_SECONDS).
    replica_urls: tuple[str, ...] = field(default=(), repr=False)
    replica_max_lag_seconds: float = 5.0
    root_key_file: Path | None = None
    root_key: Secret | None = field(default=None)
    secret_key: Secret | None = field(default=None)
    max_body_bytes: int = 64 * 1024
    cache_l1_bytes: int = 64 * 1024 * 1024
    cache_pages_bytes: int = 32 * 1024 * 1024  # viewers' page blobs, in an L1 of their own (0: none kept)
    session_days: int = 30
    login_attempts_per_account: int = 5
    login_attempts_per_ip: int = 20
    login_attempts_per_account_unknown: int = 20
    login_window_seconds: int = 15 * 60
    apps_per_ip: int = 20  # app registrations from one client address per login window before slowing down
    # Trusted front proxies whose X-Forwarded-For/-Proto we believe (uvicorn's --forwarded-allow-ips).
    forwarded_allow_ips: str = "127.0.0.1"
    # Connections one serve process holds at most (live streams count); past it, a 503. Below the fd limit.
    max_connections: int = 10_000
    # An idle keep-alive connection is closed after this long: longer than the 5 s clients poll at (Mastodon.py's
    # wait for an upload), so a poll never races the server's close of the connection it reuses.
    keepalive_seconds: int = 20
    # Where ``cipherfeed worker`` serves its /metrics (host:port), or None: nowhere.
    worker_metrics: tuple[str, int] | None = ("127.0.0.1", 9102)
    head_timeout_seconds: int = 10  # a request head must arrive within this (feed.web.protocol)
    body_timeout_seconds: int = 30  # a request body must arrive within this of its head
    log_level: str = "info"
    # Authors with more followers than this are not fanned out on write: their posts join home timelines when read.
    fanout_max_followers: int = 10_000
    # Home feeds of users away this long are dropped by a cleanup job, and rebuilt when they come back.
    feed_inactive_days: int = 30
    fanout_batch: int = 1000  # home feeds written per Redis round trip by a fan-out
    job_timeout: int = 300  # seconds a queued job may run; a killed worker's jobs are retried after it (+10 s)
    # The embedded mode runs the maintenance schedule itself (the scaled mode's workers do it there).
    embedded_cron: bool = True
    # Messages a live stream may have waiting before its reader counts as one that stopped reading (and is dropped).
    stream_queue: int = 256
    # Live streams one user may hold open on one web process.
    streams_per_user: int = 8
    # A fault point for tests: the process kills itself (SIGKILL) right after its next write commits.
    crash_after_commit: bool = False
    # A fault point for tests: each queued job waits this many seconds before it starts (a window to kill it in).
    job_pause: int = 0
    # Where media files go (``feed.media.store``): file:///dir or s3://bucket/prefix; "" is media/ in the data dir.
    media_store_url: str = ""
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: Secret | None = field(default=None)
    media_max_bytes: int = 16 * 1024 * 1024  # the largest image file one may upload

    @property
    def media_store(self) -> StoreConfig:
        url = self.media_store_url or f"file://{self.data_dir / 'media'}"
        return StoreConfig(url, self.s3_endpoint, self.s3_region, self.s3_access_key_id, self.s3_secret_access_key)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def resolved_root_key_file(self) -> Path:
        return self.root_key_file or self.data_dir / "root.key"

    @property
    def secret_key_file(self) -> Path:
        return self.data_dir / "secret.key"


def _address(env: Mapping[str, str], name: str, default: tuple[str, int]) -> tuple[str, int] | None:
    """``host:port``, or ``off``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() == "off":
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name} must be HOST:PORT or off, got {raw!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def seconds_setting(env: Mapping[str, str], name: str, default: int) -> float:
    """A timeout in whole seconds from ``env`` (at least 1); ConfigError if it is not one."""
    return float(_int(env, name, default))


def _connection_cap() -> int:
    """10,000, or fewer when the process may not open that many files (each connection is one)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 10_000 if soft == resource.RLIM_INFINITY else max(16, min(10_000, soft - 100))


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


def _replica_urls(env: Mapping[str, str], database_url: str) -> tuple[str, ...]:
    raw = [part.strip() for part in (env.get("CIPHERFEED_DATABASE_REPLICA_URLS") or "").split(",") if part.strip()]
    if raw and not database_url.startswith("postgresql"):
        raise ConfigError("CIPHERFEED_DATABASE_REPLICA_URLS needs a PostgreSQL CIPHERFEED_DATABASE_URL")
    urls = tuple(_database_url(url, "CIPHERFEED_DATABASE_REPLICA_URLS") for url in raw)
    if any(not url.startswith("postgresql") for url in urls):
        raise ConfigError("CIPHERFEED_DATABASE_REPLICA_URLS: each replica is a postgresql:// URL")
    return urls


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds") from None
    if not 0 < value <= 3600:
        raise ConfigError(f"{name} must be more than 0 and at most 3600")
    return value


def _database_url(raw: str, name: str = "CIPHERFEED_DATABASE_URL") -> str:
    """Accept the usual spellings and pin the async drivers we ship."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(f"{name} is not a database URL") from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    else:
        raise ConfigError(f"{name} must be a postgresql:// or sqlite:// URL")
    return url.render_as_string(hide_password=False)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    data_dir = Path(env.get("CIPHERFEED_DATA_DIR") or "cipherfeed-data").expanduser().absolute()
    raw_db = env.get("CIPHERFEED_DATABASE_URL")
    database_url = _database_url(raw_db) if raw_db else f"sqlite+aiosqlite:///{data_dir / 'cipherfeed.db'}"
    key_file = env.get("CIPHERFEED_ROOT_KEY_FILE")
    root_key = env.get("CIPHERFEED_ROOT_KEY")
    if key_file and root_key:
        raise ConfigError("set CIPHERFEED_ROOT_KEY_FILE or CIPHERFEED_ROOT_KEY, not both")
    secret = env.get("CIPHERFEED_SECRET_KEY")
    if secret is not None and len(secret) < 32:
        raise ConfigError("CIPHERFEED_SECRET_KEY must be at least 32 characters")
    log_level = (env.get("CIPHERFEED_LOG_LEVEL") or "info").lower()
    if log_level not in {"debug", "info", "warning", "error"}:
        raise ConfigError("CIPHERFEED_LOG_LEVEL must be debug, info, warning or error")
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=_redis_url(env.get("CIPHERFEED_REDIS_URL") or None),
        queue_redis_url=_queue_redis_url(env),
        replica_urls=_replica_urls(env, database_url),
        replica_max_lag_seconds=_seconds(env, "CIPHERFEED_REPLICA_MAX_LAG_SECONDS", 5.0),
        root_key_file=Path(key_file).expanduser().absolute() if key_file else None,
        root_key=Secret(root_key) if root_key else None,
        secret_key=Secret(secret) if secret else None,
        max_body_bytes=_int(env, "CIPHERFEED_MAX_BODY_BYTES", 64 * 1024, minimum=1024),
        cache_l1_bytes=_int(env, "CIPHERFEED_CACHE_L1_BYTES", 64 * 1024 * 1024, minimum=0),
        cache_pages_bytes=_int(env, "CIPHERFEED_CACHE_PAGES_BYTES", 32 * 1024 * 1024, minimum=0),
        session_days=_int(env, "CIPHERFEED_SESSION_DAYS", 30),
        login_attempts_per_account=_int(env, "CIPHERFEED_LOGIN_ATTEMPTS_PER_ACCOUNT", 5),
        login_attempts_per_ip=_int(env, "CIPHERFEED_LOGIN_ATTEMPTS_PER_IP", 20),
        login_attempts_per_account_unknown=_int(env, "CIPHERFEED_LOGIN_ATTEMPTS_PER_ACCOUNT_UNKNOWN", 20),
        login_window_seconds=_int(env, "CIPHERFEED_LOGIN_WINDOW_SECONDS", 15 * 60),
        apps_per_ip=_int(env, "CIPHERFEED_APPS_PER_IP", 20),
        forwarded_allow_ips=env.get("CIPHERFEED_FORWARDED_ALLOW_IPS") or "127.0.0.1",
        max_connections=_int(env, "CIPHERFEED_MAX_CONNECTIONS", _connection_cap(), minimum=16),
        keepalive_seconds=_int(env, "CIPHERFEED_KEEPALIVE_SECONDS", 20),
        worker_metrics=_address(env, "CIPHERFEED_WORKER_METRICS", ("127.0.0.1", 9102)),
        head_timeout_seconds=_int(env, "CIPHERFEED_HEAD_TIMEOUT_SECONDS", 10),
        body_timeout_seconds=_int(env, "CIPHERFEED_BODY_TIMEOUT_SECONDS", 30),
        log_level=log_level,
        fanout_max_followers=_int(env, "CIPHERFEED_FANOUT_MAX_FOLLOWERS", 10_000),
        feed_inactive_days=_int(env, "CIPHERFEED_FEED_INACTIVE_DAYS", 30),
        fanout_batch=_int(env, "CIPHERFEED_FANOUT_BATCH", 1000),
        job_timeout=_int(env, "CIPHERFEED_JOB_TIMEOUT", 300),
        embedded_cron=(env.get("CIPHERFEED_EMBEDDED_CRON") or "on").lower() not in ("off", "0", "false", "no"),
        stream_queue=_int(env, "CIPHERFEED_STREAM_QUEUE", 256, minimum=4),
        streams_per_user=_int(env, "CIPHERFEED_STREAMS_PER_USER", 8),
        crash_after_commit=env.get("CIPHERFEED_TEST_CRASH_AFTER_COMMIT") == "1",
        job_pause=_int(env, "CIPHERFEED_TEST_JOB_PAUSE", 0, minimum=0),
        media_store_url=_media_store_url(env.get("CIPHERFEED_MEDIA_STORE") or ""),
        s3_endpoint=env.get("CIPHERFEED_S3_ENDPOINT") or None,
        s3_region=env.get("CIPHERFEED_S3_REGION") or None,
        s3_access_key_id=env.get("CIPHERFEED_S3_ACCESS_KEY_ID") or None,
        s3_secret_access_key=Secret(v) if (v := env.get("CIPHERFEED_S3_SECRET_ACCESS_KEY")) else None,
        media_max_bytes=_int(env, "CIPHERFEED_MEDIA_MAX_BYTES", 16 * 1024 * 1024, minimum=1024),
    )


def _media_store_url(raw: str) -> str:
    if raw and not raw.startswith(("file:///", "s3://")):
        raise ConfigError("CIPHERFEED_MEDIA_STORE must be a file:/// or s3:// URL")
    return raw
