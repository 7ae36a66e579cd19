"""Redis as an optional accelerator: every call goes through :class:`RedisLink`, which turns an outage into
"no answer" instead of an error, logs it once, probes in the background and runs the recovery steps when Redis
answers again."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

log = logging.getLogger(__name__)
T = TypeVar("T")

FAILURES = (RedisError, RedisClusterException, OSError)  # what a Redis call may raise when Redis is not there
TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}  # a slow Redis must not hold a page


class BadRedisUrl(ValueError):
    """``CIPHERFEED_REDIS_URL`` (or another Redis address) that does not say where Redis is."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: one server (``redis://``), a Redis Cluster (``redis+cluster://``: any of its nodes, comma
    separated) or a primary that Sentinels watch (``redis+sentinel://``: the sentinels, comma separated, then
    ``/service-name``); ``rediss`` for TLS. Credentials are Redis's (``user:password@``), for every node."""

    kind: str  # single, cluster or sentinel
    nodes: tuple[tuple[str, int], ...]
    url: str  # as given
    db: int = 0
    service: str = ""
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def __repr__(self) -> str:  # the URL may hold a password
        return f"RedisTarget({self.kind}, {len(self.nodes)} nodes)"


def parse_redis_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    base, _, topology = scheme.partition("+")
    if base not in ("redis", "rediss") or topology not in ("", "cluster", "sentinel"):
        raise BadRedisUrl("a Redis URL starts with redis://, rediss://, redis+cluster:// or redis+sentinel://")
    hosts = parts.netloc.rpartition("@")[2]
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        host = host.strip("[]") or "127.0.0.1"
        if port and not port.isdigit():
            raise BadRedisUrl(f"the port of {part.strip()!r} is not a number")
        nodes.append((host, int(port) if port else (26379 if topology == "sentinel" else 6379)))
    if topology == "" and len(nodes) > 1:
        raise BadRedisUrl("several hosts need redis+cluster:// or redis+sentinel://")
    path = parts.path.strip("/")
    db, service = 0, ""
    if topology == "sentinel":
        service, _, db_part = path.partition("/")
        if not service:
            raise BadRedisUrl("a redis+sentinel:// URL names its primary: redis+sentinel://host:26379/mymaster")
        path = db_part or parse_qs(parts.query).get("db", ["0"])[0]
    if path:
        if not path.isdigit():
            raise BadRedisUrl("the database of a Redis URL is a number")
        db = int(path)
    if topology == "cluster" and db:
        raise BadRedisUrl("a Redis Cluster has database 0 only")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    kind = topology or "single"
    return RedisTarget(kind, tuple(nodes), url, db, service, user, password, base == "rediss")


def make_client(url: str, *, timeout: float = TIMEOUTS["socket_timeout"]) -> Any:
    """A client for ``url`` (see :class:`RedisTarget`): ``Redis`` for one server or a Sentinel-watched primary
    (which follows a failover by itself), ``RedisCluster`` for a cluster. ``timeout``: of each call, short so that
    a slow Redis never holds a page (the page falls back to the database); longer for blocking reads."""
    target = parse_redis_url(url)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": TIMEOUTS["socket_connect_timeout"],
                               "username": target.username, "password": target.password}  # fmt: skip
    if target.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        return RedisCluster(startup_nodes=nodes, ssl=target.tls, health_check_interval=15, **options)
    if target.kind == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs={**TIMEOUTS}, ssl=target.tls, **options
        )
        return sentinel.master_for(target.service, db=target.db, retry_on_timeout=False, health_check_interval=15)
    client: Redis = Redis.from_url(
        url, retry_on_timeout=False, health_check_interval=15, socket_timeout=timeout,
        socket_connect_timeout=TIMEOUTS["socket_connect_timeout"],
    )  # fmt: skip
    return client


def reseed(client: Any, url: str | None) -> None:
    """On a cluster client, the nodes to start from again: redis-py forgets a node as a starting point each time a
    call to it fails to connect, so once every node has failed it knows none to start from and never reconnects.
    Gives it back the URL's nodes and every node it has seen."""
    if not is_cluster(client):
        return
    manager = client.nodes_manager
    known = [(node.host, node.port) for node in manager.nodes_cache.values()]
    for host, port in [*(parse_redis_url(url).nodes if url else ()), *known]:
        name = f"{host}:{port}"
        if name not in manager.startup_nodes:
            manager.startup_nodes[name] = ClusterNode(host, port, **manager.connection_kwargs)


async def reset_connections(client: Any) -> None:
    """Drop every pooled connection (after an outage they may look open and be dead)."""
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():
            await node.disconnect()
        return
    await client.connection_pool.disconnect()


class RedisLink:
    def __init__(self, client: Any, *, probe_every: float = 0.5, metrics: Any = None, url: str | None = None) -> None:
        self.client = client
        self.url = url  # where the client goes (for another client to the same Redis, see ``client_like``)
        self._pubsub_turn = 0
        self.up = True
        self._probe_every = probe_every
        self._probe: asyncio.Task[None] | None = None
        self._recovery: list[Callable[[], Awaitable[None]]] = []
        self._errors = (
            metrics.counter("cipherfeed_redis_errors_total", "Redis calls that failed (then served without it)")
            if metrics is not None
            else None
        )
        self.nodes: dict[str, bool] = {}  # each server's (a cluster's primaries') answer to the last ping
        if metrics is not None:
            metrics.gauge_callback("cipherfeed_redis_node_up", "1 while a Redis server (each cluster primary) answers",
                                   lambda: {(name,): float(up) for name, up in self.nodes.items()}, ("node",),
                                   mode="livemin")  # fmt: skip

    @classmethod
    def connect(cls, url: str, **options: Any) -> RedisLink:
        return cls(make_client(url), url=url, **options)

    def client_like(self, *, timeout: float) -> Any:
        """Another client to the same Redis, with its own connections and call ``timeout`` (a blocking read)."""
        if self.url is not None:
            return make_client(self.url, timeout=timeout)
        kwargs = dict(self.client.connection_pool.connection_kwargs)
        kwargs.update(socket_timeout=timeout, socket_connect_timeout=TIMEOUTS["socket_connect_timeout"])
        return Redis(**kwargs)

    def pubsub(self, near: str | None = None, **options: Any) -> Any:
        """A pub/sub connection: the client's own on one Redis (a Sentinel-watched primary follows a failover by
        itself). On a cluster, one node's: a message published on any node reaches every node, once the cluster's
        links between nodes are up. ``near`` names a key whose node to use, for messages published there (by a
        script on that key): they then never depend on those links. Otherwise each call takes the next node, so a
        listener that lost its node resubscribes on another."""
        if not is_cluster(self.client):
            return self.client.pubsub(**options)
        target = parse_redis_url(self.url) if self.url else None
        nodes = [(node.host, node.port) for node in self.client.get_nodes()] or list(target.nodes if target else ())
        host, port = nodes[self._pubsub_turn % len(nodes)]
        self._pubsub_turn += 1
        if near is not None:
            with contextlib.suppress(Exception):  # the slot's owner is not known yet: any node will do meanwhile
                home = self.client.get_node_from_key(near)
                host, port = home.host, home.port
        plain = Redis(host=host, port=port, ssl=bool(target and target.tls),
                      username=target.username if target else None, password=target.password if target else None,
                      socket_connect_timeout=TIMEOUTS["socket_connect_timeout"])  # fmt: skip
        return plain.pubsub(**options)

    async def publish(self, client: Any, channel: str, message: str | bytes) -> Any:
        """PUBLISH, on a cluster through any node (it reaches every node)."""
        if is_cluster(client):
            return await client.execute_command("PUBLISH", channel, message)
        return await client.publish(channel, message)

    async def watch_nodes(self, every: float = 5.0) -> None:
        """Ping each server every ``every`` seconds (until cancelled): ``nodes``, for /readyz and the metrics."""
        while True:
            self.nodes = await self.ping_nodes()
            await asyncio.sleep(every)

    async def ping_nodes(self) -> dict[str, bool]:
        client = self.client
        if not is_cluster(client):
            target = parse_redis_url(self.url) if self.url else None
            name = "redis"
            if target is not None:
                where = ",".join(f"{host}:{port}" for host, port in target.nodes)
                name = f"{target.service} via {where}" if target.kind == "sentinel" else where
            try:
                return {name: bool(await client.ping())}
            except FAILURES:
                return {name: False}
        try:
            reseed(client, self.url)
            await client.initialize()
        except FAILURES:
            return dict.fromkeys(self.nodes, False)

        async def ping(node: Any) -> bool:
            try:  # the node's own connection: a failure here must not make the client drop its state
                return bool(await node.execute_command("PING"))
            except FAILURES:
                return False

        primaries = client.get_primaries()
        answers = await asyncio.gather(*(ping(node) for node in primaries))
        return {node.name: up for node, up in zip(primaries, answers, strict=True)}

    def on_recovery(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` (in registration order) each time Redis answers again after an outage."""
        self._recovery.append(step)

    async def run(self, operation: Callable[[Any], Awaitable[T]]) -> T | None:
        """``operation(client)``, or None while Redis is down or when this call fails.

        While down, only the recovery steps (run by the probe task) reach Redis.
        """
        if not self.up and (self._probe is None or asyncio.current_task() is not self._probe):
            return None
        try:
            return await operation(self.client)
        except FAILURES as exc:
            self.down(exc)
            return None

    def down(self, exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.inc()
        if not self.up:
            return
        self.up = False
        log.warning("Redis unavailable (%s); serving from memory and the database until it is back", type(exc).__name__)
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        # Pooled connections opened before the outage may look open but be dead; start afresh after it.
        with contextlib.suppress(Exception):
            await reset_connections(self.client)
        while True:
            await asyncio.sleep(self._probe_every)
            try:
                if not await self._serving():
                    continue
                for step in self._recovery:
                    await step()
                if not await self._serving():
                    continue
            except FAILURES:
                continue  # went away again during recovery: keep probing
            except Exception as exc:  # whatever it is, the probe must outlive it, or the link stays down for good
                log.warning("Redis recovery step failed (%s); trying again", type(exc).__name__)
                continue
            self.up = True
            self._probe = None
            log.warning("Redis is back; caches were flushed and missed invalidations replayed")
            return

    async def _serving(self) -> bool:
        """Whether Redis serves again: it answers PING; a cluster, once every primary says that every slot is served
        (a restarted node answers PING before the cluster has agreed that it is back, and refuses keys till then)."""
        try:
            if not is_cluster(self.client):
                return bool(await self.client.ping())
            reseed(self.client, self.url)
            answers = await on_each_node(self.client, "CLUSTER INFO")
        except FAILURES:
            return False
        return all(_cluster_ok(answer) for answer in answers)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await close_client(self.client)


async def close_client(client: Any) -> None:
    """Close a client and, for a Sentinel-watched primary, its connections to the Sentinels too."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


# -- calls that work on one Redis and on a Redis Cluster alike (where a command or script may touch one slot only)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


async def read_many(client: Any, names: list[str]) -> list[bytes | None]:
    """GET of many keys, in their order: one MGET, or on a cluster one per slot, sent to each node together."""
    if not names:
        return []
    if is_cluster(client):
        return list(await client.mget_nonatomic(names))
    return list(await client.mget(names))


async def delete_many(client: Any, names: list[str]) -> None:
    if not names:
        return
    if not is_cluster(client):
        await client.delete(*names)
        return
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.delete(name)
        await pipe.execute()


async def scan_keys(client: Any, *, match: str | None = None, count: int = 500) -> AsyncIterator[list[bytes]]:
    """Every key (matching ``match``), in batches by SCAN (never KEYS: Redis keeps serving meanwhile); on a cluster,
    each primary's in turn."""
    nodes = await _primaries(client) if is_cluster(client) else [None]
    for node in nodes:
        cursor: Any = 0
        while True:
            if node is None:
                cursor, keys = await client.scan(cursor, match=match, count=count)
            else:
                command = ["SCAN", cursor, *(("MATCH", match) if match else ()), "COUNT", count]
                cursor, keys = await client.execute_command(*command, target_nodes=node)
                cursor = cursor[node.name] if isinstance(cursor, dict) else cursor  # as the cluster's SCAN says it
            if keys:
                yield list(keys)
            if int(cursor) == 0:
                break


async def on_each_node(client: Any, *command: Any) -> list[Any]:
    """``command``'s answer from each primary (on one Redis: its one answer)."""
    if not is_cluster(client):
        return [await client.execute_command(*command)]
    nodes = await _primaries(client)
    return list(await asyncio.gather(*(client.execute_command(*command, target_nodes=node) for node in nodes)))


async def _primaries(client: Any) -> list[Any]:
    await client.initialize()  # the slot map (once; a no-op after)
    return list(client.get_primaries())


async def subscribers(client: Any, channel: str) -> int:
    """How many connections listen on ``channel`` (on a cluster, on every node together)."""
    if is_cluster(client):
        found = await client.execute_command("PUBSUB NUMSUB", channel, target_nodes=client.ALL_NODES)
    else:
        found = await client.pubsub_numsub(channel)
    return sum(int(n) for _, n in found)


def _cluster_ok(info: Any) -> bool:
    if isinstance(info, dict):  # as redis-py parses CLUSTER INFO
        return str(info.get("cluster_state")) == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


class Scripts:
    """Lua scripts over many keys, by name. On one Redis a script runs once over all its keys; on a cluster once per
    node that holds some of them, the nodes at the same time. There, Redis 7 lets a script flagged
    ``allow-cross-slot-keys`` touch keys of several slots of its own node, but only the keys it did not declare: it
    declares the first (which routes it) and gets them all as arguments. A script's source reads its keys from ``K``
    and its arguments from ``A``, which a prelude fills either way."""

    def __init__(self) -> None:
        self._scripts: dict[str, Any] = {}

    async def per_node(
        self,
        client: Any,
        name: str,
        source: str,
        names: list[str],
        shape: Callable[[list[str]], tuple[list[str], list[Any]]],
        *,
        again: bool = True,
    ) -> list[Any]:
        """The script over ``names``: ``shape(some names)`` gives its keys and arguments for those names (in their
        order), once on one Redis, once per node on a cluster. Returns each call's answer."""
        if not is_cluster(client):
            keys, args = shape(names)
            script = self._scripts.get(name)
            if script is None:  # redis-py loads it where it is missing
                script = self._scripts[name] = client.register_script(_ONE_REDIS + source)
            return [await script(keys=keys, args=args, client=client)]
        await client.initialize()  # the slot map (once; a no-op after)
        flagged = _CLUSTER + source
        sha = hashlib.sha1(flagged.encode(), usedforsecurity=False).hexdigest()
        groups: dict[str, tuple[Any, list[str]]] = {}
        for key in names:
            node = client.get_node_from_key(key)
            groups.setdefault(node.name, (node, []))[1].append(key)

        async def on(node: Any, group: list[str]) -> Any:
            keys, args = shape(group)
            command = ("EVALSHA", sha, 1, keys[0], len(keys), *keys, *args)
            try:
                return await client.execute_command(*command, target_nodes=node)
            except NoScriptError:
                await client.execute_command("SCRIPT LOAD", flagged, target_nodes=node)
                return await client.execute_command(*command, target_nodes=node)

        try:
            return list(await asyncio.gather(*(on(node, group) for node, group in groups.values())))
        except ResponseError as exc:
            if not again or not any(word in str(exc) for word in ("MOVED", "ASK", "slot")):
                raise
            # The slots moved (a resharding, a failover): learn where they are now, and try once more.
            await client.nodes_manager.initialize()
            return await self.per_node(client, name, source, names, shape, again=False)


_ONE_REDIS = "local K, A = KEYS, ARGV\n"
_CLUSTER = """#!lua flags=allow-cross-slot-keys
local n = tonumber(ARGV[1])
local K, A = {}, {}
for i = 1, n do K[i] = ARGV[1 + i] end
for i = n + 2, #ARGV do A[#A + 1] = ARGV[i] end
"""
