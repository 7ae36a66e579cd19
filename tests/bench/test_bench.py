"""The benchmark harness runs end to end in its smallest configuration, so it cannot rot.

It asserts that the run works and reports every scenario with numbers, never that a target is met: figures come
from ``python -m bench``, not from timed tests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import TITLES
from tests.conftest import BACKEND, PG_ADMIN_URL, REPO

pytestmark = [
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"),
    # The harness brings its own PostgreSQL database and Redis, whichever pass this is: once is enough.
    pytest.mark.skipif(BACKEND != "postgresql", reason="runs in the PostgreSQL pass of the suite"),
]


def test_smallest_run_reports_every_scenario(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
    argv = [sys.executable, "-m", "bench", "--smallest", "--out", str(tmp_path), "--pg-admin-url", PG_ADMIN_URL]
    with subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        try:
            stdout, stderr = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            run.terminate()  # the harness stops its servers and drops its database on SIGTERM
            run.communicate(timeout=60)
            raise
    assert run.returncode == 0, stderr[-4000:]
    assert "| scenario | metric |" in stdout
    report = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.md").read_text().startswith("# cipherfeed benchmark (smallest)")
    assert set(report["scenarios"]) == set(TITLES)
    for number, scenario in report["scenarios"].items():
        assert scenario["rows"], f"scenario {number} has no figures"
        for row in scenario["rows"]:
            figure = row["cipherfeed"]
            assert isinstance(figure, int | float) and math.isfinite(figure), (number, row)
            if row["peer"]:
                assert isinstance(row["ratio"], int | float) and math.isfinite(row["ratio"]), (number, row)
            if row["target"] is not None:
                assert isinstance(row["met"], bool), (number, row)
    assert report["seed"]["posts"] > 0
    assert report["seed"]["star_followers"] == report["seed"]["users"] - 1
    # Its database is gone (named after the harness's pid).
    left = subprocess.run(
        ["psql", PG_ADMIN_URL, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = 'cipherfeed_bench_{run.pid}'"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert left.stdout.strip() == ""
