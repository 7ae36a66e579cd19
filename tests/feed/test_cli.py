"""The ``cipherfeed`` command, run as a real process against this run's database."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.anyio


def cipherfeed(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")} | env
    return subprocess.run(
        [sys.executable, "-m", "feed", *args],
        input=stdin,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def test_users_create_and_token_work_with_the_api(env: dict[str, str], app: Any, clean: None) -> None:
    created = cipherfeed(env, "users", "create", "dana", "--password-stdin", stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    assert "created @dana" in created.stdout
    token = cipherfeed(env, "users", "token", "dana")
    assert token.returncode == 0, token.stderr
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        me = await http.get(
            "/api/v1/accounts/verify_credentials", headers={"Authorization": f"Bearer {token.stdout.strip()}"}
        )
    assert me.status_code == 200 and me.json()["username"] == "dana"
    # the password works for a browser login too
    again = cipherfeed(env, "users", "create", "DANA", "--password-stdin", stdin=PASSWORD + "\n")
    assert "taken" in one_line_error(again)


def test_bad_input_is_one_line_and_non_zero(env: dict[str, str], tmp_path: Path) -> None:
    assert "password" in one_line_error(cipherfeed(env, "users", "create", "erin", stdin="short\n")).lower()
    assert "username" in one_line_error(cipherfeed(env, "users", "create", "no spaces!", stdin=PASSWORD + "\n")).lower()
    assert "no user" in one_line_error(cipherfeed(env, "users", "token", "nobody-here"))
    bad_url = cipherfeed(env | {"CIPHERFEED_DATABASE_URL": "mysql://localhost/x"}, "db", "upgrade")
    assert "CIPHERFEED_DATABASE_URL" in one_line_error(bad_url)
    bad_key = cipherfeed(env | {"CIPHERFEED_ROOT_KEY": "not a key"}, "keys", "status")
    assert "root key" in one_line_error(bad_key)
    assert "not a key" not in bad_key.stderr
    unreachable = cipherfeed(env | {"CIPHERFEED_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "db", "upgrade")
    assert "127.0.0.1" in one_line_error(unreachable)
    too_long = cipherfeed(env, "users", "token", "nobody-here", "--label", "x" * 101)
    assert "label" in one_line_error(too_long)
    no_redis = {k: v for k, v in env.items() if k != "CIPHERFEED_REDIS_URL"}
    assert "CIPHERFEED_REDIS_URL" in one_line_error(cipherfeed(no_redis, "serve", "--workers", "2"))
    usage = cipherfeed(env)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_keys_status_and_generate(env: dict[str, str], tmp_path: Path) -> None:
    cipherfeed(env, "users", "create", "frank", "--password-stdin", stdin=PASSWORD + "\n")
    status = cipherfeed(env, "keys", "status")
    assert status.returncode == 0, status.stderr
    assert "root key versions: 1 (primary: 1)" in status.stdout
    assert "v1:" in status.stdout and "user keys wrapped (primary)" in status.stdout
    out = tmp_path / "root.key"
    generated = cipherfeed(env, "keys", "generate", "--out", str(out))
    assert generated.returncode == 0, generated.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "exists" in one_line_error(cipherfeed(env, "keys", "generate", "--out", str(out)))


def test_db_upgrade_reports_up_to_date(env: dict[str, str]) -> None:
    result = cipherfeed(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
