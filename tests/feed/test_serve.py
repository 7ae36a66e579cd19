"""`cipherfeed serve` as a newcomer runs it: a real uvicorn process, the embedded default (or this run's
PostgreSQL), and no plaintext in its logs or database files while it serves the post to its reader."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import BACKEND, CSRF_RE, PASSWORD
from tests.feed.processes import free_port


class Server:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.log = cwd / "server.log"
        self.cwd = cwd
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")} | env
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "feed", "serve", "--port", str(self.port)],
                cwd=cwd,
                env=clean_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture
def server(tmp_path: Path, env: dict[str, str]) -> Iterator[Server]:
    # SQLite runs: no settings at all, as in the README. PostgreSQL runs: this run's database and key.
    settings = {} if BACKEND == "sqlite" else env | {"CIPHERFEED_DATA_DIR": str(tmp_path / "pgdata")}
    srv = Server(settings, tmp_path)
    yield srv
    srv.stop()


def register(http: httpx.Client, username: str) -> None:
    csrf = CSRF_RE.search(http.get("/register").text)
    assert csrf
    data = {
        "csrf_token": csrf.group(1),
        "username": username,
        "password": PASSWORD,
        "password_confirm": PASSWORD,
    }
    assert http.post("/register", data=data).status_code == 303


def test_serve_embedded_default_keeps_no_plaintext(server: Server, tmp_path: Path) -> None:
    canary = f"serve-canary-{secrets.token_hex(8)}-ünï"
    name = f"u{secrets.token_hex(4)}"
    with httpx.Client(base_url=server.url, follow_redirects=False) as http:
        register(http, name)
        csrf = CSRF_RE.search(http.get("/").text)
        assert csrf
        posted = http.post("/posts", data={"csrf_token": csrf.group(1), "status": canary, "spoiler_text": canary})
        assert posted.status_code == 303
        page = http.get(posted.headers["location"])
        assert canary in page.text
        assert page.headers["cache-control"] == "no-store"
        searched = http.get("/api/v2/search", params={"q": canary, "type": "accounts"})
        assert searched.status_code == 200

    if BACKEND == "sqlite":
        data_dir = tmp_path / "cipherfeed-data"
        key = data_dir / "root.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        db_files = [data_dir / "cipherfeed.db", data_dir / "cipherfeed.db-wal", data_dir / "cipherfeed.db-shm"]
        assert db_files[1].exists(), "SQLite runs in WAL mode"
        for path in db_files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            assert canary.encode() not in path.read_bytes()
    server.stop()
    log = server.log.read_text()
    assert re.search(r"serving on http://127\.0\.0\.1:\d+", log)
    assert '127.0.0.0/24 - "POST /posts HTTP/1.1" 303' in log  # the access log: on, a network, not the host
    assert '"GET /api/v2/search HTTP/1.1" 200' in log, "a request is logged by its path, without its query"
    assert canary not in log and quote(canary) not in log
    assert not re.search(r'127\.0\.0\.1:\d+ - "', log), "no host address, no port"
