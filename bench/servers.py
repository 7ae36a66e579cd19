"""Child processes of a run (uvicorn servers, a private redis-server), their CPU time and peak memory, and the
guarantee that every one of them is stopped when the run ends, fails or is interrupted."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench import http
from bench.load import taskset

REPO = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


class StartFailed(RuntimeError):
    pass


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out to outgoing connections and to ``bind(0)``."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_FLOOR = _ephemeral_floor()
_handed_out: set[int] = set()
_ports = random.Random(os.getpid() ^ time.time_ns())


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((http.HOST, port))
        except OSError:
            return False
    return True


def free_port(also: int = 0) -> int:
    """A free port for a server the bench or a test starts, below the kernel's ephemeral range: a port from
    ``bind(0)`` can be taken by any outgoing connection between the pick and the server's start (or its restart
    after a kill). With ``also``, the port ``also`` above it is free and below that range too (a Redis Cluster
    node's bus port). No port is handed out twice by one process."""
    low, high = 10000, _EPHEMERAL_FLOOR - 1 - also
    if high - low < 1000:  # an ephemeral range that starts low: any unprivileged port
        low, high = 1024, 65535 - also
    for _ in range(500):
        port = _ports.randint(low, high)
        if port in _handed_out or (also and port + also in _handed_out):
            continue
        if _bindable(port) and (not also or _bindable(port + also)):
            _handed_out.update({port, port + also})
            return port
    raise StartFailed(f"no free port between {low} and {high}")


@dataclass(frozen=True, slots=True)
class Cores:
    """Which CPUs the servers run on and which the load generators (and this process) run on."""

    server: tuple[int, ...]
    client: tuple[int, ...]
    everything: tuple[int, ...]

    @property
    def pinned(self) -> bool:
        return self.server != self.everything

    @classmethod
    def split(cls) -> Cores:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            return cls(cpus, cpus, cpus)
        return cls(cpus[-1:], cpus[:-1], cpus)


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.port = port

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (``/proc/<pid>/stat`` utime and stime)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def peak_rss(self) -> int:
        """Peak resident set size in bytes (VmHWM) since start or the last :meth:`reset_peak`."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def reset_peak(self) -> None:
        """Start a new peak (Linux 4.0+); harmless where it is not allowed (then the peak is since start)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise StartFailed(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


class Processes:
    """Starts children and stops them all (newest first) on exit, whatever the exit."""

    def __init__(self, workdir: Path, cores: Cores) -> None:
        self.workdir = workdir
        self.cores = cores
        self.procs: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        port: int,
        cpus: Sequence[int],
        cwd: Path = REPO,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                taskset(argv, cpus), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT
            )
        proc = Proc(name, popen, log, port)
        self.procs.append(proc)
        return proc

    def uvicorn(
        self, name: str, factory: str, env: Mapping[str, str], *, code: Path = REPO, cpus: Sequence[int] | None = None
    ) -> Proc:
        """``factory`` served as users serve cipherfeed: uvloop, httptools, one worker, no access log; ``code``: the
        checkout it is imported from (another one for the baseline); ``cpus``: the server cores unless said."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            factory,
            "--factory",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--workers",
            "1",
            "--no-access-log",
            "--host",
            http.HOST,
            "--port",
            str(port),
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CIPHERFEED_", "BENCH_"))}
        return self.start(
            name,
            argv,
            env=base | {"PYTHONPATH": str(code)} | dict(env),
            port=port,
            cpus=cpus or self.cores.server,
            cwd=code,
        )

    def redis(self, name: str, *options: str, port: int | None = None) -> Proc:
        """A private redis-server without persistence: its command counts are this run's alone."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise StartFailed("redis-server is not installed (apt-get install redis-server)")
        port = port or free_port()
        where = self.workdir / name
        where.mkdir(exist_ok=True)
        argv = [binary, "--port", str(port), "--bind", http.HOST, "--save", "", "--appendonly", "no", "--dir",
                str(where), *options]  # fmt: skip
        proc = self.start(name, argv, env=os.environ, port=port, cpus=self.cores.everything)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc.check_alive()
            try:
                with socket.create_connection((http.HOST, port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return proc
            except OSError:
                time.sleep(0.05)
        raise StartFailed(f"{name} did not answer PING")


def redis_cluster(procs: Processes, name: str, size: int = 3) -> str:
    """``size`` redis-server primaries made into a Redis Cluster; its ``redis+cluster://`` URL."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StartFailed("redis-cli is not installed (apt-get install redis-tools)")
    nodes = [procs.redis(f"{name}-{n}", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         port=free_port(also=10000)) for n in range(size)]  # fmt: skip
    where = [f"{http.HOST}:{node.port}" for node in nodes]
    made = subprocess.run(  # noqa: S603 - our own argv
        [cli, "--cluster", "create", *where, "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        raise StartFailed(f"redis-cli --cluster create failed: {made.stdout[-300:]}{made.stderr[-300:]}")
    deadline = time.monotonic() + 30
    for node in nodes:
        ask = [cli, "-p", str(node.port), "cluster", "info"]
        while "cluster_state:ok" not in subprocess.run(ask, capture_output=True, text=True, check=False).stdout:  # noqa: S603
            if time.monotonic() > deadline:
                raise StartFailed("the Redis Cluster did not come up")
            time.sleep(0.1)
    return "redis+cluster://" + ",".join(where)


async def wait_ready(proc: Proc, path: str = "/healthz", within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            if (await http.get(proc.port, path)).status == 200:
                return
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            pass
        await asyncio.sleep(0.1)
    raise StartFailed(f"{proc.name} did not answer {path} within {within:.0f} s; see {proc.log}")
