"""The scaling benchmark runs end to end at its smallest (one and two web processes, one Redis and a three-node
cluster, 200 accounts), so it cannot rot; it reports figures, it asserts none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BACKEND, REPO


@pytest.mark.skipif(BACKEND != "postgresql", reason="the scaled mode's benchmark: once, in the PostgreSQL pass")
def test_the_scaling_benchmark_reports_each_configuration_next_to_one_process_on_one_redis(tmp_path: Path) -> None:
    small = ["--users", "200", "--accounts", "20", "--clients", "8", "--seconds", "1", "--rounds", "1"]
    argv = [sys.executable, "-m", "bench.scaling", *small, "--procs", "1,2", "--fanout-repeats", "1", "--out",
            str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert set(result["throughput"]) == {f"{n} web x {t}" for n in (1, 2) for t in ("1 Redis", "3-node cluster")}
    assert all(value > 0 for value in result["throughput"].values())
    assert all(count == 0 for count in result["failed"].values()), result["failed"]
    kinds = {kind for runs in result["samples"].values() for run in runs for kind in run["done"]}
    assert kinds == {"home", "like", "post"}
    fan = result["fanout"]
    assert fan["followers"] == 200 and set(fan["seconds"]) == {"1 Redis", "3-node cluster"}
    assert fan["costs"]["feed_bytes"] > fan["costs"]["feed_entries"] * 8  # at least an id's bytes per entry
    assert "vs one process on one Redis" in (tmp_path / "scaling.md").read_text()
    bad = subprocess.run([*argv[:3], "--procs", "one"], cwd=REPO, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--procs" in bad.stderr
