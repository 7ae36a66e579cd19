"""The measurements of issue 4, each next to its peer in the same run, alternating, with medians of the repeats."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import http, micro, openloop, profile
from bench.config import Config
from bench.load import WrkResult, run_wrk
from bench.openloop import LatencyResult
from bench.report import Row, Target
from bench.servers import Cores, Proc
from feed.cache import TIMELINES, redis_key

POST_RE = re.compile(rb'<article class="post')
MISSES_RE = re.compile(r'^cipherfeed_cache_misses_total\{space="(\w+)"\} (\S+)$', re.M)
# Commands our cache and bus run inside a Lua script or MULTI block as well as on their own: commandstats counts
# them either way, so they are left out of the round-trip estimate (and shown in the breakdown).
RedisCount = tuple[float, float, dict[str, float]]  # commands per page, round trips per page, per command
INNER = frozenset({"get", "set", "incr", "pexpire", "del", "publish", "multi"})
# What a web process sends whatever its pages do: the live hub's blocking stream reads (one every two seconds while
# idle) and the connections' health checks. Left out of the per-page counts.
BACKGROUND = frozenset({"xread", "ping"})


@dataclass(frozen=True, slots=True)
class Load:
    """Something to load: a server and a request."""

    name: str
    proc: Proc
    path: str
    headers: Mapping[str, str]

    @property
    def request(self) -> bytes:
        return http.build_request(self.path, self.headers)


@dataclass(slots=True)
class Samples:
    wrk: list[WrkResult] = field(default_factory=list)
    cpu_ms_per_request: list[float] = field(default_factory=list)
    peak_rss: int = 0
    latency: list[LatencyResult] = field(default_factory=list)

    def rps(self) -> float:
        return statistics.median(w.rps for w in self.wrk)

    def p99(self) -> float:
        return statistics.median(r.p99 for r in self.latency)


class Bench:
    def __init__(self, config: Config, cores: Cores, targets: list[Load], redis_ports: Mapping[str, int]) -> None:
        self.config = config
        self.cores = cores
        self.targets = {t.name: t for t in targets}
        self.samples = {t.name: Samples() for t in targets}
        self.redis_ports = redis_ports
        self.rows: list[Row] = []
        self.notes: dict[str, Any] = {}

    # -- helpers

    async def warm(self) -> None:
        for target in self.targets.values():
            await openloop.closed_loop(target.proc.port, target.request, seconds=self.config.warmup, connections=8)

    async def _wrk(self, name: str) -> None:
        target, samples = self.targets[name], self.samples[name]
        target.proc.reset_peak()
        cpu = target.proc.cpu_seconds()
        result = await run_wrk(
            target.proc.port,
            target.path,
            target.headers,
            seconds=round(self.config.duration),
            connections=self.config.connections,
            cpus=self.cores.client,
        )
        used = target.proc.cpu_seconds() - cpu
        samples.wrk.append(result)
        samples.cpu_ms_per_request.append(used * 1000 / max(1, result.requests))
        samples.peak_rss = max(samples.peak_rss, target.proc.peak_rss())
        if result.errors:
            self.notes.setdefault("errors", []).append(f"{name}: {result.errors} wrk errors")

    async def _open(self, name: str, rate: float) -> None:
        target = self.targets[name]
        result = await openloop.open_loop(
            target.proc.port,
            target.request,
            rate=rate,
            seconds=self.config.duration,
            connections=self.config.open_loop_connections,
        )
        self.samples[name].latency.append(result)
        if result.achieved_rate < 0.9 * rate:
            self.notes.setdefault("open_loop_behind", []).append(
                f"{name}: asked {rate:.0f}/s, answered {result.achieved_rate:.0f}/s"
            )

    # -- phases

    async def throughput(self) -> None:
        """wrk on every target, in rounds (A B C ... A B C ... A): scenarios 1, 2, 3 and 6."""
        for _ in range(self.config.repeats):
            for name in self.targets:
                await self._wrk(name)
        await self._wrk("home")

    async def latency_at_80(self) -> None:
        """Open loop at 80% of each one's measured maximum: scenarios 1 and 2."""
        rates = {name: 0.8 * self.samples[name].rps() for name in ("home", "bare", "naive")}
        for _ in range(self.config.repeats):
            for name, rate in rates.items():
                await self._open(name, rate)
        self.notes["open_loop_rates"] = {k: round(v) for k, v in rates.items()}

    async def redis_per_page(self, name: str) -> RedisCount:
        """(Redis commands per page, round trips per page (estimate), per-command breakdown) for ``name``'s
        server, counted by its private Redis's commandstats over sequential requests."""
        target = self.targets[name]
        client = redis.Redis(host=http.HOST, port=self.redis_ports[name])
        try:
            conn = await http.Connection.open(target.proc.port)
            await conn.send(target.request)
            before: Any = client.info("commandstats")
            n = self.config.redis_count_requests
            for _ in range(n):
                await conn.send(target.request)
            after: Any = client.info("commandstats")
            await conn.close()
        finally:
            client.close()
        delta = {
            key.removeprefix("cmdstat_"): (after[key]["calls"] - before.get(key, {"calls": 0})["calls"]) / n
            for key in after
        }
        delta = {k: v for k, v in delta.items() if v and k != "info" and k not in BACKGROUND}
        trips = sum(v for k, v in delta.items() if k not in INNER) + delta.get("multi", 0.0)
        return sum(delta.values()), trips, delta

    async def page_blobs(self, name: str) -> None:
        """Rows for the page blobs of the ``name`` server after its runs: the bytes each viewer who has one costs
        (its L1 of page blobs over the blobs in it), and the share of page reads one of them served."""
        text = (await http.get(self.targets[name].proc.port, "/metrics")).body.decode()

        def value(pattern: str) -> float:
            return sum(float(v) for v in re.findall(rf"^{pattern} (\S+)$", text, re.M))

        blobs = value("cipherfeed_page_blobs")
        viewers = value("cipherfeed_page_blob_viewers")
        hits = value(r'cipherfeed_cache_hits_total\{[^}]*space="w"[^}]*\}')  # from L1 or Redis
        misses = value(r'cipherfeed_cache_misses_total\{space="w"\}')
        per_viewer = value("cipherfeed_page_blobs_bytes") / viewers / 1024 if viewers else 0.0
        self.rows += [
            Row("1", "page blob memory per active viewer (L1)", "KiB", per_viewer,
                note=f"{viewers:.0f} viewers, {blobs:.0f} blobs"),
            Row("1", "page reads served by a blob", "share", hits / (hits + misses) if hits + misses else 0.0,
                note=f"{misses:.0f} drawn"),
        ]  # fmt: skip

    async def _misses(self, proc: Proc) -> dict[str, float]:
        text = (await http.get(proc.port, "/metrics")).body.decode()
        return {space: float(value) for space, value in MISSES_RE.findall(text)}

    async def expiry(self, during_idle: Any) -> None:
        """Scenario 5: bursts of concurrent requests for /public, steady (all warm) and right at the expiry of its
        hot key, the cached id list of the public timeline (L1 expired by waiting out its TTL with no reads, the
        L2 copy deleted as its TTL would). ``during_idle`` runs while the server is left alone."""
        target = self.targets["public"]
        n = self.config.burst
        steady = [await openloop.burst(target.proc.port, target.request, n)]
        at_expiry: list[LatencyResult] = []
        refills: list[float] = []
        client = redis.Redis(host=http.HOST, port=self.redis_ports["public"])
        try:
            for round_ in range(self.config.expiry_rounds):
                idle_until = time.monotonic() + TIMELINES.l1_ttl + 0.5
                if round_ == 0:
                    await during_idle()
                await asyncio.sleep(max(0.0, idle_until - time.monotonic()))
                client.delete(redis_key(TIMELINES, "public"))
                before = await self._misses(target.proc)
                at_expiry.append(await openloop.burst(target.proc.port, target.request, n))
                after = await self._misses(target.proc)
                refills.append(after.get(TIMELINES.name, 0.0) - before.get(TIMELINES.name, 0.0))
                self.notes.setdefault("expiry_misses_by_space", []).append(
                    {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
                )
                steady.append(await openloop.burst(target.proc.port, target.request, n))
        finally:
            client.close()
        errors = sum(r.errors for r in steady + at_expiry)
        p99_steady = statistics.median(r.p99 for r in steady)
        p99_expiry = statistics.median(r.p99 for r in at_expiry)
        self.rows += [
            Row(
                "5",
                "refills of the hot key per process",
                "count",
                max(refills),
                target=Target("<=", 1, "cipherfeed"),
                note=f"{n} concurrent requests, {len(refills)} expiries",
            ),
            Row(
                "5",
                f"p99 of {n} concurrent requests",
                "ms",
                p99_expiry,
                p99_steady,
                "steady state",
                Target("<=", 1.5),
                note=f"at expiry vs steady; {errors} errors" if errors else "at expiry vs steady",
            ),
        ]

    async def profile(self, out: Path) -> str:
        """py-spy on the cipherfeed server through one extra wrk run of the home page; where its time goes."""
        target = self.targets["home"]
        seconds = max(2, round(self.config.duration))
        collapsed = await profile.record(
            target.proc.pid, seconds, out / "profile-home.txt",
            lambda: run_wrk(target.proc.port, target.path, target.headers, seconds=seconds,
                            connections=self.config.connections, cpus=self.cores.client),
        )  # fmt: skip
        spots = profile.hotspots(collapsed)
        self.notes["profile_home"] = {
            "parts": {label: round(share, 3) for label, share in profile.by_part(collapsed).items()},
            "self": [{"function": h.function, "self": round(h.self_share, 3), "total": round(h.total_share, 3)}
                     for h in spots],
        }  # fmt: skip
        lines = ["| self time | part |", "| ---: | --- |"]
        lines += [f"| {v:.1%} | {k} |" for k, v in self.notes["profile_home"]["parts"].items()]
        lines += ["", "| self | total | function |", "| ---: | ---: | --- |"]
        lines += [f"| {h.self_share:.1%} | {h.total_share:.1%} | {h.function} |" for h in spots]
        return "\n".join(lines)

    async def micro(self) -> None:
        found = await micro.figures(self.config.micro_repeats)
        self.rows += [
            Row(
                "4",
                "Cache.get, warm L1 key",
                "ns/op",
                found["cache_get"],
                found["dict_get"],
                "dict.get",
                Target("<=", 3),
            ),
            Row(
                "4",
                "Cache.cached (synchronous L1 hit lookup, no coroutine), warm L1 key",
                "ns/op",
                found["cache_cached"],
                found["dict_get"],
                "dict.get",
            ),
            Row(
                "4",
                "decrypt one post (FieldContext + open_field)",
                "ns/op",
                found["open_post"],
                found["aesgcm_decrypt"],
                "AESGCM.decrypt",
                Target("<=", 2500, "cipherfeed"),
                note=f"{found['bytes']:.0f}-byte body",
            ),
        ]
        if "l1_lookup" in found:
            self.rows.append(
                Row(
                    "4",
                    "raw L1 store lookup (cachetools.Cache subclass, .get)",
                    "ns/op",
                    found["l1_lookup"],
                    found["dict_get"],
                    "dict.get",
                )
            )

    # -- rows of the wrk and open-loop phases

    def summarize(self, redis_cold: RedisCount, redis_warm: RedisCount) -> None:
        s = self.samples
        home, bare, naive, cold = s["home"], s["bare"], s["naive"], s["l1cold"]
        mib = 1 / (1024 * 1024)
        self.rows[:0] = [
            Row("1", "throughput", "req/s", home.rps(), bare.rps(), "bare", Target(">=", 0.40)),
            Row(
                "1",
                "p99 at 80% of max rate (open loop)",
                "ms",
                home.p99(),
                bare.p99(),
                "bare",
                Target("<=", 25, "cipherfeed"),
            ),
            Row(
                "1",
                "server CPU per request",
                "ms",
                statistics.median(home.cpu_ms_per_request),
                statistics.median(bare.cpu_ms_per_request),
                "bare",
            ),
            Row("1", "server peak RSS", "MiB", home.peak_rss * mib, bare.peak_rss * mib, "bare"),
            *self._baseline_rows(),
            Row("1", "Redis commands per page, warm L1", "count", redis_warm[0], note=_breakdown(redis_warm[2])),
            Row("2", "throughput", "req/s", home.rps(), naive.rps(), "naive", Target(">=", 6)),
            Row(
                "2",
                "p99 at 80% of each one's max rate (open loop)",
                "ms",
                home.p99(),
                naive.p99(),
                "naive",
                Target("<=", 0.2),
            ),
            Row(
                "2",
                "server CPU per request",
                "ms",
                statistics.median(home.cpu_ms_per_request),
                statistics.median(naive.cpu_ms_per_request),
                "naive",
            ),
            Row("2", "server peak RSS", "MiB", home.peak_rss * mib, naive.peak_rss * mib, "naive"),
            Row("3", "throughput, L1 cold", "req/s", cold.rps(), home.rps(), "scenario 1", Target(">=", 0.6)),
            Row(
                "3",
                "Redis round trips per page (estimate)",
                "count",
                redis_cold[1],
                target=Target("==", 1, "cipherfeed"),
                note=_breakdown(redis_cold[2]),
            ),
            Row("3", "Redis commands per page", "count", redis_cold[0]),
            Row(
                "3",
                "server CPU per request",
                "ms",
                statistics.median(cold.cpu_ms_per_request),
                statistics.median(home.cpu_ms_per_request),
                "scenario 1",
            ),
            Row("6", "public timeline page throughput", "req/s", s["public"].rps(), bare.rps(), "bare"),
            Row(
                "6",
                "API home timeline throughput, same bytes",
                "req/s",
                s["api"].rps(),
                s["bare_api"].rps(),
                "bare",
                Target(">=", 0.40),
            ),
            Row(
                "6",
                "API public timeline throughput (peer: the home timeline's JSON)",
                "req/s",
                s["api_public"].rps(),
                s["bare_api"].rps(),
                "bare",
            ),
            Row(
                "6",
                "API home timeline, server CPU per request",
                "ms",
                statistics.median(s["api"].cpu_ms_per_request),
                statistics.median(s["bare_api"].cpu_ms_per_request),
                "bare",
            ),
            Row(
                "6",
                "public page wrk p50",
                "ms",
                statistics.median(w.p50 for w in s["public"].wrk),
                statistics.median(w.p50 for w in bare.wrk),
                "bare",
            ),
            Row(
                "6",
                "API home timeline wrk p50",
                "ms",
                statistics.median(w.p50 for w in s["api"].wrk),
                statistics.median(w.p50 for w in s["bare_api"].wrk),
                "bare",
            ),
            # Issue 11: the same viewer's home timeline, as JSON and as the HTML page (20 posts each).
            Row("9", "API home timeline throughput", "req/s", s["api"].rps(), home.rps(), "HTML home", Target(">=", 1)),
            Row(
                "9",
                "API home timeline, server CPU per request",
                "ms",
                statistics.median(s["api"].cpu_ms_per_request),
                statistics.median(home.cpu_ms_per_request),
                "HTML home",
            ),
        ]

    def _baseline_rows(self) -> list[Row]:
        """The home page against the same page of an earlier commit (``--baseline``), if one was measured."""
        base = self.samples.get("baseline")
        if base is None or not base.wrk:
            return []
        home = self.samples["home"]
        return [
            Row("1", "throughput vs the baseline commit", "req/s", home.rps(), base.rps(), "baseline"),
            Row(
                "1",
                "server CPU per request vs the baseline commit",
                "ms",
                statistics.median(home.cpu_ms_per_request),
                statistics.median(base.cpu_ms_per_request),
                "baseline",
            ),
        ]

    def raw(self) -> dict[str, Any]:
        return {
            name: {
                "rps": [round(w.rps, 1) for w in smp.wrk],
                "wrk_p99_ms": [round(w.p99, 3) for w in smp.wrk],
                "cpu_ms_per_request": [round(c, 4) for c in smp.cpu_ms_per_request],
                "open_loop": [
                    {
                        "rate": round(r.rate),
                        "achieved": round(r.achieved_rate),
                        "p50_ms": r.p50,
                        "p99_ms": r.p99,
                        "max_ms": r.max,
                        "errors": r.errors,
                    }
                    for r in smp.latency
                ],
                "peak_rss_bytes": smp.peak_rss,
            }
            for name, smp in self.samples.items()
        }


def _breakdown(per_page: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_page.items())) or "none"


def count_posts(body: bytes) -> int:
    return len(POST_RE.findall(body))
