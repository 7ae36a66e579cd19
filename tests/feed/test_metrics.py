"""Our registry on prometheus-client: names that cannot carry user data, callback gauges, one view of several
processes; and the text every real process serves, read back by prometheus-client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feed.metrics import Registry
from feed.runtime import open_runtime
from feed.services import accounts
from feed.settings import load_settings
from tests.conftest import BACKEND, empty_tables
from tests.feed.processes import AppProcess, RedisServer, free_port, process_env, within

Series = tuple[str, frozenset[tuple[str, str]]]


def parse(text: bytes | str) -> dict[Series, float]:
    """Every sample as {(name, labels): value}, parsed by prometheus-client (strict about the format)."""
    raw = text.decode() if isinstance(text, bytes) else text
    samples: dict[Series, float] = {}
    for family in text_string_to_metric_families(raw):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def series(name: str, **labels: str) -> Series:
    return name, frozenset(labels.items())


def families(text: bytes | str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family: {(sample name, labels): value}}, parsed by prometheus-client (strict about the format)."""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    raw = text.decode() if isinstance(text, bytes) else text
    for family in text_string_to_metric_families(raw):
        out[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return out


def test_names_must_be_ours_and_labels_plain() -> None:
    registry = Registry()
    registry.counter("cipherfeed_events_total", "Events.")
    with pytest.raises(ValueError):
        registry.counter("cipherfeed_events_total", "Again.")
    for name in ("app_events", "cipherfeed-events", "cipherfeed_Events", "cipherfeed_a b", ""):
        with pytest.raises(ValueError, match="invalid metric name"):
            registry.gauge(name, "Bad.")
    for label in ("le", "__reserved", "a-b", "Tier"):
        with pytest.raises(ValueError, match="invalid label name"):
            registry.gauge("cipherfeed_bad_label", "Bad.", (label,))


def test_counters_histograms_and_callback_gauges_render() -> None:
    registry = Registry()
    registry.counter("cipherfeed_things_total", "Things.", ("tier",)).labels("l1").inc(3)
    registry.histogram("cipherfeed_wait_seconds", "Wait.", buckets=(0.1, 1)).observe(0.5)
    size = {"bytes": 10.0}
    registry.gauge_callback("cipherfeed_l1_bytes", "Bytes.", lambda: size["bytes"])
    shown = {("a",): 2.0, ("b",): 5.0}
    registry.gauge_callback("cipherfeed_open", "Open, by kind.", lambda: dict(shown), ("kind",))
    size["bytes"] = 42
    parsed = families(registry.render())
    assert parsed["cipherfeed_things"][("cipherfeed_things_total", (("tier", "l1"),))] == 3
    assert parsed["cipherfeed_wait_seconds"][("cipherfeed_wait_seconds_bucket", (("le", "1.0"),))] == 1
    assert parsed["cipherfeed_l1_bytes"][("cipherfeed_l1_bytes", ())] == 42, "read when rendered"
    assert parsed["cipherfeed_open"][("cipherfeed_open", (("kind", "b"),))] == 5
    del shown[("b",)]
    assert families(registry.render())["cipherfeed_open"][("cipherfeed_open", (("kind", "b"),))] == 0
    assert not any(name.endswith("_created") for family in parsed.values() for name, _ in family)


_CHILD = """
import sys
from pathlib import Path
from feed.metrics import Registry, use_directory
use_directory(None)
import os
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import values
values.ValueClass = values.get_value_class()
registry = Registry()
registry.counter("cipherfeed_work_total", "Work.").inc(int(sys.argv[2]))
registry.gauge_callback("cipherfeed_held_bytes", "Held.", lambda: float(sys.argv[2]))
registry.gauge("cipherfeed_depth", "Depth.").set(7)
registry.refresh()
"""


def test_several_processes_add_up_in_one_view(tmp_path: Path) -> None:
    """What ``serve --workers N`` relies on: counters and live gauges of every process sum in any one's view."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    for amount in ("3", "4"):
        subprocess.run([sys.executable, "-c", _CHILD, str(shared), amount], check=True, env=env, timeout=60)
    code = (
        "import os, sys; os.environ['PROMETHEUS_MULTIPROC_DIR'] = sys.argv[1]\n"
        "from feed.metrics import Registry; sys.stdout.write(Registry().render())"
    )
    text = subprocess.run([sys.executable, "-c", code, str(shared)], check=True, env=env, capture_output=True,
                          text=True, timeout=60).stdout  # fmt: skip
    parsed = families(text)
    assert parsed["cipherfeed_work"][("cipherfeed_work_total", ())] == 7
    assert parsed["cipherfeed_depth"][("cipherfeed_depth", ())] == 7, "the most recent value, not a sum"


@pytest.mark.skipif(BACKEND != "postgresql", reason="real processes, once, in the PostgreSQL pass")
@pytest.mark.anyio
async def test_serve_with_two_workers_and_the_worker_show_their_families(
    env: dict[str, str], tmp_path: Path, processes_database_url: str, processes_engine: Any
) -> None:
    await empty_tables(processes_engine)
    redis = RedisServer(tmp_path)
    redis.start()
    worker_port = free_port()
    deployment = process_env(env, redis.url) | {
        "CIPHERFEED_DATABASE_URL": processes_database_url,
        "CIPHERFEED_WORKER_METRICS": f"127.0.0.1:{worker_port}",
    }
    port = free_port()
    web = AppProcess("web", deployment, tmp_path, ["serve", "--workers", "2", "--port", str(port), "--no-access-log"])
    web.port, web.url = port, f"http://127.0.0.1:{port}"
    worker = AppProcess("worker", deployment, tmp_path, ["worker"])
    try:
        web.wait_ready(60)
        worker.wait_ready(60)
        async with httpx.AsyncClient(base_url=web.url) as http:
            for _ in range(120):  # each on a new connection: the two processes share them out
                async with httpx.AsyncClient(base_url=web.url) as fresh:
                    assert (await fresh.get("/healthz")).status_code == 200
            seen = [parse((await http.get("/metrics")).text) for _ in range(6)]
        counts = {s.get(series("cipherfeed_http_requests_total", method="GET", route="/healthz", status="200"))
                  for s in seen}  # fmt: skip
        # wait_ready asked too: one more. Every scrape, whichever process answers, counts the requests of both.
        assert len(counts) == 1 and counts.pop() in (121.0, 122.0, 123.0), counts
        names = {name for name, _ in seen[0]}
        for family in ("cipherfeed_http_request_duration_seconds_bucket", "cipherfeed_cache_l1_bytes",
                       "cipherfeed_streams_open", "cipherfeed_outbox_depth", "cipherfeed_jobs_waiting"):  # fmt: skip
            assert family in names, family
        async with open_runtime(load_settings(deployment), "cli") as runtime:
            await accounts.register(runtime.services, "metered", "correct horse battery staple")
            token = await accounts.create_token(runtime.services, "metered")
        async with httpx.AsyncClient(base_url=web.url, headers={"Authorization": f"Bearer {token}"}) as http:
            assert (await http.post("/api/v1/statuses", json={"status": "counted"})).status_code == 200

            async def fanned_out() -> bool:
                text = (await http.get(f"http://127.0.0.1:{worker_port}/metrics")).text
                return series("cipherfeed_job_seconds_count", job="fan_out") in parse(text)

            assert await within(10, fanned_out) is not None, "the worker's endpoint shows the fan-out it ran"
            text = (await http.get(f"http://127.0.0.1:{worker_port}/metrics")).text
        worker_names = {name for name, _ in parse(text)}
        for family in ("cipherfeed_jobs_waiting", "cipherfeed_job_seconds_bucket", "cipherfeed_fanout_seconds_count",
                       "cipherfeed_outbox_relay_seconds_count", "cipherfeed_cache_l1_bytes"):  # fmt: skip
            assert family in worker_names, family
    finally:
        web.stop()
        worker.stop()
        redis.kill()
    assert "Traceback" not in web.output() + worker.output()
