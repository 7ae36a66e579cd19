"""Maximum throughput with ``wrk`` (closed loop: good for requests per second, not for tail latency)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.http import HOST

REPORT_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"


class WrkFailed(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # socket errors and non-2xx/3xx answers
    p50: float  # milliseconds
    p99: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def taskset(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """``argv`` run on ``cpus`` only, when there are cores to choose from and taskset exists."""
    tool = shutil.which("taskset")
    if not cpus or tool is None:
        return list(argv)
    return [tool, "-c", ",".join(str(c) for c in cpus), *argv]


async def run_wrk(
    port: int,
    path: str,
    headers: Mapping[str, str],
    *,
    seconds: int,
    connections: int,
    cpus: Sequence[int] | None,
) -> WrkResult:
    binary = wrk_path()
    if binary is None:
        raise WrkFailed("wrk is not installed (apt-get install wrk)")
    argv = [binary, "-t1", f"-c{connections}", f"-d{max(1, seconds)}s", "--timeout", "10s", "-s", str(REPORT_SCRIPT)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://{HOST}:{port}{path}")
    proc = await asyncio.create_subprocess_exec(
        *taskset(argv, cpus), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise WrkFailed(f"wrk failed ({proc.returncode}): {err.decode().strip() or out.decode().strip()}")
    figures = json.loads(lines[-1])
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        errors=errors,
        p50=figures["p50_us"] / 1000,
        p99=figures["p99_us"] / 1000,
    )
