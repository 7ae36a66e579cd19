"""A plain (non-editable) install carries everything the installed command needs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_wheel_ships_templates_static_and_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cipherfeed-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "feed/_resources/templates/base.html",
        "feed/_resources/templates/_partials/post.html",
        "feed/_resources/static/vendor/htmx-2.0.11.min.js",
        "feed/_resources/static/vendor/htmx-LICENSE.txt",
        "feed/_resources/alembic/env.py",
        "feed/_resources/alembic/versions/0001_initial.py",
        "crypto/sealing.py",
        "feed/cli.py",
    ):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cipherfeed = feed.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
