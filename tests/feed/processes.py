"""Real processes for the cross-process cache tests: a Redis server the test owns (so it can crash it) and
`cipherfeed serve` web processes sharing one database, plus the HTTP helpers their tests share."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.servers import free_port
from tests.conftest import CSRF_RE, PASSWORD

LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=200)
LIKE_COUNT_RE = re.compile(r'class="like-button[^"]*"[^>]*>.*?<span class="count">(\d+)</span>', re.S)
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on its own port, without persistence: a SIGKILL loses everything, as a crash would."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--dir", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + 10
        while not _answers_ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.02)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown, and (no persistence) every key lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


class RedisClusterNodes:
    """A real Redis Cluster of ``size`` primaries (no replicas), each a ``redis-server`` with ``cluster-enabled``,
    joined by ``redis-cli --cluster create``. Each node keeps an append-only file synced on every write, so a node
    killed and started again comes back with what it acknowledged (and its slots)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise AssertionError("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.cli, self.workdir = binary, cli, workdir
        self.ports = [free_port(also=10000) for _ in range(size)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        nodes = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.url = f"redis+cluster://{nodes}"

    def _dir(self, port: int) -> Path:
        path = self.workdir / f"redis-{port}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start_node(self, port: int) -> None:
        assert port not in self.procs or self.procs[port].poll() is not None, "already running"
        where = self._dir(port)
        command = [
            self.binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(where),
        ]  # fmt: skip
        with (where / "redis.log").open("ab") as log:
            self.procs[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=where)
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start: {(where / 'redis.log').read_text()}")
            time.sleep(0.02)

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        made = subprocess.run([self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        self.wait_ok()

    def state(self, port: int) -> str:
        info = subprocess.run([self.cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True,
                              timeout=5, check=False).stdout  # fmt: skip
        found = re.search(r"cluster_state:(\w+)", info)
        return found.group(1) if found else "down"

    def wait_ok(self, within: float = 30.0) -> None:
        """Until every node says the cluster is ok (all slots served)."""
        deadline = time.monotonic() + within
        while any(self.state(port) != "ok" for port in self.ports):
            assert time.monotonic() < deadline, {port: self.state(port) for port in self.ports}
            time.sleep(0.1)

    def client(self) -> Any:
        """A (synchronous) cluster client, for a test to look at the keys."""
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.ports])

    def port_of(self, key: str) -> int:
        """The port of the node that holds ``key``'s slot."""
        client = self.client()
        try:
            return int(client.get_node_from_key(key).port)
        finally:
            client.close()

    def kill_node(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for port in self.ports:
            self.kill_node(port)


class ClusterRedis:
    """A Redis Cluster in place of a :class:`RedisServer` (the same ``url``, ``start`` and ``kill``: every node at
    once), with the job queue on a server of its own (``queue_url``: arq cannot run on a cluster)."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = RedisClusterNodes(workdir / "cluster")
        self.queue = RedisServer(workdir)
        self.url = self.nodes.url
        self.queue_url = self.queue.url
        self.made = False

    def start(self) -> None:
        if not self.made:
            self.queue.start()
            self.nodes.start()
            self.made = True
            return
        for port in self.nodes.ports:
            self.nodes.start_node(port)
        self.nodes.wait_ok()

    def kill(self) -> None:
        self.nodes.stop()

    def stop(self) -> None:
        self.nodes.stop()
        self.queue.kill()


class RedisSentinels:
    """A primary ``redis-server``, one replica of it, and three Sentinels watching it as ``service`` (two must agree
    that it is down; it is down after 1 s without an answer)."""

    def __init__(self, workdir: Path, service: str = "cipherfeed") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.workdir, self.service = binary, workdir, service
        self.primary, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.url = f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinels)}/{service}"

    def _run(self, port: int, *args: str) -> None:
        where = self.workdir / f"redis-{port}"
        where.mkdir(parents=True, exist_ok=True)
        with (where / "redis.log").open("ab") as log:
            self.procs[port] = subprocess.Popen([self.binary, *args], stdout=log, stderr=subprocess.STDOUT, cwd=where)
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis did not start: {(where / 'redis.log').read_text()}")
            time.sleep(0.02)

    def start_server(self, port: int, replica_of: int | None = None) -> None:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._run(port, *args)

    def start(self) -> None:
        self.start_server(self.primary)
        self.start_server(self.replica, replica_of=self.primary)
        for port in self.sentinels:
            config = self.workdir / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\nsentinel monitor {self.service} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\nsentinel parallel-syncs {self.service} 1\n"
            )
            self._run(port, str(config), "--sentinel")

    def primary_now(self) -> int:
        """The port of the primary the Sentinels name now."""
        cli = shutil.which("redis-cli") or "redis-cli"
        answer = subprocess.run([cli, "-p", str(self.sentinels[0]), "sentinel", "get-master-addr-by-name",
                                 self.service], capture_output=True, text=True, timeout=5, check=False)  # fmt: skip
        return int(answer.stdout.split()[1])

    def kill(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


class AppProcess:
    """One ``python -m feed serve`` web process (or, with ``command``, another ``cipherfeed`` command such as
    ``worker``); its stdout and stderr go to ``log``."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, command: list[str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        self.env = env
        argv = command or ["serve", "--port", str(self.port), "--no-access-log"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "feed", *argv],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        if self.url and "serve" not in self.proc.args:
            while "worker started" not in self.output() and time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"process {self.name} exited: {self.output()}")
                time.sleep(0.05)
            return
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"process {self.name} exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"process {self.name} did not start: {self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def process_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    """This run's settings and the test's own Redis; no CIPHERFEED_* setting from the outer environment."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    return inherited | env | {"CIPHERFEED_REDIS_URL": redis_url}


def like_count(html: str, post_id: int) -> int:
    """The like count shown on the post's own article in a page."""
    article = re.search(rf'<article[^>]*id="post-{post_id}".*?</article>', html, re.S)
    assert article, f"post {post_id} is not on the page"
    found = LIKE_COUNT_RE.search(article.group(0))
    assert found, "no like count on the post"
    return int(found.group(1))


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        found = SAMPLE_RE.match(line)
        if not found or found.group(1) != name:
            continue
        have = dict(LABEL_RE.findall(found.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found.group(3))
    return total


async def within(seconds: float, check: Callable[[], Awaitable[bool]], every: float = 0.02) -> float | None:
    """Poll ``check`` until it is true (seconds it took) or ``seconds`` have passed (None)."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            return None
        await anyio.sleep(every)


@dataclass
class Account:
    """A user registered through process A, with a client on each process carrying the same session cookie."""

    name: str
    on: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    csrf: str = ""

    async def post(self, where: str, url: str, data: dict[str, str] | None = None) -> httpx.Response:
        return await self.on[where].post(url, data={"csrf_token": self.csrf, **(data or {})})

    async def compose(self, where: str, text: str, **fields: str) -> int:
        response = await self.post(where, "/posts", {"status": text, **fields})
        assert response.status_code == 303, response.text
        location = response.headers["location"]
        return int(location.split("#post-")[-1] if "#post-" in location else location.rsplit("/", 1)[-1])


async def register(urls: dict[str, str], name: str, clients: list[httpx.AsyncClient]) -> Account:
    """Register ``name`` on the first process of ``urls``; every client shares the session cookie."""
    first, *others = urls
    http = httpx.AsyncClient(base_url=urls[first], limits=LIMITS, timeout=30)
    clients.append(http)
    csrf = CSRF_RE.search((await http.get("/register")).text)
    assert csrf
    data = {"csrf_token": csrf.group(1), "username": name, "password": PASSWORD, "password_confirm": PASSWORD}
    response = await http.post("/register", data=data)
    assert response.status_code == 303, response.text
    account = Account(name, {first: http})
    for where in others:
        other = httpx.AsyncClient(base_url=urls[where], cookies=http.cookies, limits=LIMITS, timeout=30)
        clients.append(other)
        account.on[where] = other
    csrf = CSRF_RE.search((await http.get("/")).text)
    assert csrf
    account.csrf = csrf.group(1)
    return account


class PostgresServer:
    """A PostgreSQL cluster of the test's own (``initdb`` in a temporary directory, run as the ``postgres`` user on
    its own port), so that the test can stop it, kill it and start it again. fsync is off: a test's data. With
    ``replica_of``, a streaming replica of that (running) server, made with ``pg_basebackup``; the primary needs
    ``full_page_writes`` on for that."""

    def __init__(self, replica_of: PostgresServer | None = None) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise AssertionError("PostgreSQL's initdb is not installed (apt-get install postgresql)")
        self.bin = found[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="cipherfeed-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log = self.dir / "postgres.log"
        # Server settings for ``start`` (a test's data: no fsync).
        self.settings = {"fsync": "off", "full_page_writes": "off", "listen_addresses": "127.0.0.1"}
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        if replica_of is None:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        else:  # a streaming replica: a base backup of the running primary, set to follow it (-R)
            self._run("pg_basebackup", "-D", str(self.data), "-h", "127.0.0.1", "-p", str(replica_of.port), "-U",
                      "postgres", "-R", "-X", "stream", "--no-sync")  # fmt: skip

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"{tool} failed: {done.stdout}{done.stderr}")
        return done

    def start(self) -> None:
        options = " ".join([f"-p {self.port} -k {self.dir}", *(f"-c {k}={v}" for k, v in self.settings.items())])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """A clean, fast shutdown: open connections are ended."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def kill(self) -> None:
        """A crash: the postmaster and every process of it SIGKILLed at once; the next start recovers from the
        write-ahead log."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        family = [pid, *_children(pid)]
        for member in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{member}").exists() for member in family):
            time.sleep(0.02)

    def remove(self) -> None:
        with contextlib.suppress(AssertionError, FileNotFoundError, ValueError, ProcessLookupError):
            if (self.data / "postmaster.pid").exists():
                self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


MISSES = "cipherfeed_cache_misses_total"
HITS = "cipherfeed_cache_hits_total"


@dataclass
class Cluster:
    redis: RedisServer | RedisClusterNodes | ClusterRedis
    procs: dict[str, AppProcess]
    workers: list[AppProcess] = field(default_factory=list)
    stopped: list[AppProcess] = field(default_factory=list)  # replaced by a restart
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    anonymous: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    @property
    def urls(self) -> dict[str, str]:
        return {name: proc.url for name, proc in self.procs.items()}

    def every_process(self, *, stopped: bool = False) -> list[AppProcess]:
        """The running processes (with ``stopped``, those a restart replaced too)."""
        return [*(self.stopped if stopped else ()), *self.procs.values(), *self.workers]

    def restart(self, env: dict[str, str]) -> None:
        """A rolling restart with ``env`` (a new root key ring, say): each process stopped and started again (its log
        in a new file); the clients follow the web processes to their new ports."""
        for name, old in list(self.procs.items()):
            old.stop()
            self.stopped.append(old)
            self.procs[name] = new = AppProcess(f"{name}.{len(self.stopped)}", env, old.log.parent)
            new.wait_ready()
            for http in self.clients:
                if str(http.base_url).rstrip("/") == old.url:
                    http.base_url = httpx.URL(new.url)
        for n, old in enumerate(self.workers):
            old.stop()
            self.stopped.append(old)
            self.workers[n] = new = AppProcess(
                f"{old.name.split('.')[0]}.{len(self.stopped)}", env, old.log.parent, ["worker"]
            )
            new.wait_ready()

    async def account(self, name: str) -> Account:
        return await register(self.urls, name, self.clients)

    async def api(self, where: str, name: str) -> httpx.AsyncClient:
        """An API client on process ``where`` with a new token of ``name`` (made with the CLI)."""
        argv = [sys.executable, "-m", "feed", "users", "token", name]
        env = self.procs["a"].env
        made = await anyio.to_thread.run_sync(
            lambda: subprocess.run(argv, env=env, text=True, capture_output=True, check=True, timeout=60)
        )
        token = made.stdout.strip()
        client = httpx.AsyncClient(base_url=self.urls[where], headers={"Authorization": f"Bearer {token}"},
                                   limits=LIMITS, timeout=30)  # fmt: skip
        self.clients.append(client)
        return client

    async def metrics(self, where: str) -> str:
        response = await self.anonymous[where].get("/metrics")
        assert response.status_code == 200
        return response.text

    async def served_from_l1(self, client: httpx.AsyncClient, where: str, url: str) -> httpx.Response:
        """GET ``url`` and check that no post record came from Redis or the database for it."""
        before = await self.metrics(where)
        response = await client.get(url)
        after = await self.metrics(where)
        for name, labels in ((MISSES, {"space": "p"}), (HITS, {"tier": "l2", "space": "p"})):
            assert metric(after, name, **labels) == metric(before, name, **labels), f"{url} was not an L1 hit"
        return response
