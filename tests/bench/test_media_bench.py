"""The media benchmark runs end to end on a small photo, so it cannot rot; it reports figures, it asserts none."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BACKEND, REPO


def test_the_media_benchmark_reports_both_rates_and_their_ratio(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.media", "--megapixels", "0.2", "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "photos to all variants per second" in done.stdout
    result = json.loads((tmp_path / "media.json").read_text())
    rates = result["images_per_second"]
    assert set(rates) == {"ours", "peer"} and all(math.isfinite(r) and r > 0 for r in rates.values())
    assert result["ratio"] > 0 and result["target"] == 0.8
    assert (tmp_path / "media.md").read_text().startswith("| metric |")
    bad = subprocess.run([*argv[:3], "--repeats", "0"], cwd=REPO, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--repeats" in bad.stderr


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
@pytest.mark.skipif(BACKEND != "sqlite", reason="one run is enough: it starts its own embedded server")
def test_the_timeline_with_images_benchmark_compares_the_two_pages(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.media_pages", "--seconds", "1", "--rounds", "1", "--out", str(tmp_path)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "media_pages.json").read_text())
    rates = result["pages_per_second"]
    assert set(rates) == {"with images", "without images"} and all(r > 0 for r in rates.values())
    assert result["page_bytes"]["with images"] > result["page_bytes"]["without images"]  # the images' markup
    assert result["ratio"] > 0 and result["target"] == 0.8
