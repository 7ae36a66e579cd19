"""The ``cipherfeed`` command against this run's database: ``cli.main()`` run in this process (each command in a
thread of its own, since it runs its own event loop), and as a real process where the process is what is tested.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from crypto import RootKeyRing
from feed.cli import main
from tests.conftest import PASSWORD, empty_tables, forget_cached

pytestmark = pytest.mark.anyio


def cipherfeed(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``cipherfeed ARGS`` with settings from ``env``: its exit code, standard output and error."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _stdin(stdin):
            try:
                return main(list(args), env=env)
            except SystemExit as exc:  # argparse's way of refusing a command line
                return exc.code if isinstance(exc.code, int) else 1

    with ThreadPoolExecutor(1) as pool:
        code = pool.submit(run).result(timeout=60)
    return subprocess.CompletedProcess(["cipherfeed", *args], code, out.getvalue(), err.getvalue())


def cipherfeed_process(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m feed ARGS`` as a real process (no CIPHERFEED_* setting from the outer environment)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")} | env
    return subprocess.run(
        [sys.executable, "-m", "feed", *args], input=stdin, env=full_env, capture_output=True, text=True, timeout=60
    )


@contextlib.contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


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
    # The same, as the real command: its exit status and its one line on stderr.
    assert "password" in one_line_error(cipherfeed_process(env, "users", "create", "erin", stdin="short\n")).lower()
    usage = cipherfeed_process(env)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_keys_status_and_generate(env: dict[str, str], tmp_path: Path) -> None:
    cipherfeed(env, "users", "create", "frank", "--password-stdin", stdin=PASSWORD + "\n")
    status = cipherfeed(env, "keys", "status")
    assert status.returncode == 0, status.stderr
    assert "root key versions: 1 (primary: 1)" in status.stdout
    assert re.search(r"v1: [1-9]\d* user keys wrapped, 0 email indexes keyed \(primary\)", status.stdout), status.stdout
    out = tmp_path / "root.key"
    generated = cipherfeed(env, "keys", "generate", "--out", str(out))
    assert generated.returncode == 0, generated.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "exists" in one_line_error(cipherfeed(env, "keys", "generate", "--out", str(out)))


def test_db_upgrade_reports_up_to_date(env: dict[str, str]) -> None:
    result = cipherfeed(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


async def test_users_delete_erases_the_account_and_refuses_in_one_line(
    env: dict[str, str], app: Any, clean: None
) -> None:
    created = cipherfeed(env, "users", "create", "gail", "--password-stdin", stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    deleted = cipherfeed(env, "users", "delete", "@Gail")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith("cipherfeed: erased @gail: 1 key(s) destroyed, 0 session(s) and 0 token(s)")
    assert "erased already" in one_line_error(cipherfeed(env, "users", "delete", "gail"))
    assert "no user named 'nobody-here'" in one_line_error(cipherfeed(env, "users", "delete", "nobody-here"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        assert (await http.get("/@gail")).status_code == 404
    purged = cipherfeed(env, "jobs", "run", "purge_erased")
    assert purged.returncode == 0, purged.stderr
    assert "purge_erased changed: users=1" in purged.stdout


# -- key rotation


@pytest.fixture
async def key_file_env(env: dict[str, str], tmp_path: Path, app: Any, clean: None) -> AsyncIterator[dict[str, str]]:
    """This run's environment with the session's root key ring in a key file instead of CIPHERFEED_ROOT_KEY. The
    tables are emptied afterwards: what was wrapped under a new version opens only with the rotated ring."""
    from feed.keyfile import write_new

    path = tmp_path / "root.key"
    write_new(path, env["CIPHERFEED_ROOT_KEY"])
    yield {k: v for k, v in env.items() if k != "CIPHERFEED_ROOT_KEY"} | {"CIPHERFEED_ROOT_KEY_FILE": str(path)}
    await empty_tables(app.state.engine)
    await forget_cached(app)


def ring_in(key_env: dict[str, str]) -> RootKeyRing:
    path = Path(key_env["CIPHERFEED_ROOT_KEY_FILE"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return RootKeyRing.from_json(path.read_text())


def succeeds(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_keys_rotate_and_retire_with_a_key_file(env: dict[str, str], key_file_env: dict[str, str]) -> None:
    """Add (then restart), promote and rewrap, retire: the old version is refused while a process that was not
    restarted still wraps new keys under it (here a process with the old ring, from the environment)."""
    succeeds(cipherfeed(key_file_env, "users", "create", "gina", "--email", "gina@example.com", "--password-stdin",
                        stdin=PASSWORD + "\n"))  # fmt: skip
    assert "would add root key version 2" in succeeds(cipherfeed(key_file_env, "keys", "rotate", "--dry-run"))
    assert ring_in(key_file_env).versions == (1,)
    assert "restart every cipherfeed process" in succeeds(cipherfeed(key_file_env, "keys", "rotate"))
    assert (ring_in(key_file_env).versions, ring_in(key_file_env).primary) == ((1, 2), 1)
    promoted = succeeds(cipherfeed(key_file_env, "keys", "rotate"))
    assert "root key version 2 is the primary" in promoted
    assert "email_indexes_recomputed=1, user_keys_rewrapped=1" in promoted
    assert (ring_in(key_file_env).versions, ring_in(key_file_env).primary) == ((1, 2), 2)

    succeeds(cipherfeed(env, "users", "create", "hugo", "--email", "hugo@example.com", "--password-stdin",
                        stdin=PASSWORD + "\n"))  # by a process with the old ring  # fmt: skip
    refused = one_line_error(cipherfeed(key_file_env, "keys", "retire", "1"))
    assert "still wraps or keys 2 user keys and email indexes" in refused
    assert "finish the last rotation first" in one_line_error(cipherfeed(key_file_env, "keys", "rotate"))
    assert ring_in(key_file_env).versions == (1, 2)
    rewrapped = succeeds(cipherfeed(key_file_env, "jobs", "run", "rewrap_user_keys"))
    assert "email_indexes_recomputed=1, user_keys_rewrapped=1" in rewrapped
    assert "retired root key version 1" in succeeds(cipherfeed(key_file_env, "keys", "retire", "1"))
    assert (ring_in(key_file_env).versions, ring_in(key_file_env).primary) == ((2,), 2)
    status = succeeds(cipherfeed(key_file_env, "keys", "status"))
    assert "root key versions: 2 (primary: 2)" in status
    assert "v2: 2 user keys wrapped, 2 email indexes keyed (primary)" in status


async def test_keys_rotate_with_the_ring_in_the_environment(env: dict[str, str], key_file_env: dict[str, str]) -> None:
    """With CIPHERFEED_ROOT_KEY, each step prints the ring to put there (and nothing else on standard output)."""
    succeeds(cipherfeed(env, "users", "create", "ivy", "--password-stdin", stdin=PASSWORD + "\n"))
    added = cipherfeed(env, "keys", "rotate")
    ring = RootKeyRing.from_json(succeeds(added))
    assert (ring.versions, ring.primary) == ((1, 2), 1) and "CIPHERFEED_ROOT_KEY" in added.stderr
    promoted = cipherfeed(env | {"CIPHERFEED_ROOT_KEY": added.stdout}, "keys", "rotate", "--one-step")
    ring = RootKeyRing.from_json(succeeds(promoted))  # the pending version is promoted, not another one added
    assert (ring.versions, ring.primary) == ((1, 2), 2) and "user_keys_rewrapped=1" in promoted.stderr
    status = succeeds(cipherfeed(env | {"CIPHERFEED_ROOT_KEY": promoted.stdout}, "keys", "status"))
    assert "v1: 0 user keys wrapped, 0 email indexes keyed (decrypt-only, unused" in status


async def test_keys_rotate_user(key_file_env: dict[str, str]) -> None:
    for name in ("jay", "kim"):
        created = cipherfeed(key_file_env, "users", "create", name, "--email", f"{name}@example.com",
                             "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
        succeeds(created)
    assert "rotate_user_key changed: user_keys_created=1" in succeeds(
        cipherfeed(key_file_env, "keys", "rotate-user", "JAY")
    )
    dry = succeeds(cipherfeed(key_file_env, "keys", "rotate-user", "--all", "--dry-run"))
    assert "rotate_user_keys would change: user_keys_created=2" in dry
    status = succeeds(cipherfeed(key_file_env, "keys", "status"))
    assert "by user key version: v1: 2, v2: 1" in status
    assert "superseded by a newer version of their user's key: 1" in status


async def test_keys_commands_give_one_line_errors(key_file_env: dict[str, str]) -> None:
    def keys(*args: str) -> str:
        return one_line_error(cipherfeed(key_file_env, "keys", *args))

    assert "VERSION must be a root key version number" in keys("retire", "x")
    assert "not in the key ring (versions: 1)" in keys("retire", "9")
    assert "is the primary" in keys("retire", "1")
    assert "no user named 'nobody-here'" in keys("rotate-user", "nobody-here")
    assert "name one user, or give --all" in keys("rotate-user")
    os.chmod(key_file_env["CIPHERFEED_ROOT_KEY_FILE"], 0o644)
    assert "chmod 600" in keys("rotate")
