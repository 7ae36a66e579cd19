"""``--profile``: py-spy samples a server under load; where its CPU time goes, by function.

The profiled run is an extra one, not one of the measured samples (sampling slows the server a little).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


@dataclass(frozen=True, slots=True)
class Hotspot:
    function: str  # "name (path)"
    self_share: float  # of all samples, this function on top of the stack
    total_share: float  # this function anywhere on the stack


def py_spy() -> str | None:
    """py-spy beside this Python (a virtualenv's bin/ is often not on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _name(frame: str) -> str:
    found = _FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    path = found["file"]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.split("/work/main/", 1)[-1]
    return f"{found['func']} ({path})"


def hotspots(collapsed: str, top: int = 25) -> list[Hotspot]:
    """Functions by self time, from py-spy's collapsed stacks ("frame;frame;... count" per line)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            anywhere[name] += n
    if not total:
        return []
    return [Hotspot(name, n / total, anywhere[name] / total) for name, n in own.most_common(top)]


# Where a sample's innermost frame lies, by the text of that frame (py-spy shortens paths to a package-relative
# form, such as "asyncpg/connection.py" or "web/auth.py"). First match wins; the rest is "other".
PARTS = (
    ("asyncpg (driver)", ("asyncpg/",)),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("Jinja2 templates and runtime", (".html:", "jinja2/")),
    ("markupsafe (escaping)", ("markupsafe/",)),
    (
        "decryption (crypto, cryptography)",
        (
            "cryptography/",
            "(crypto/",
            "(sealing.py",
            "(sealed.py",
            "(keyring.py",
            "(_aes.py",
            "(context.py",
            "(_checks.py",
        ),
    ),
    ("post text to HTML (render_html)", ("(text.py",)),
    ("caches (feed.cache, records, cachetools)", ("cache/", "(records.py", "cachetools/", "(keys.py")),
    ("Starlette", ("starlette/",)),
    ("uvicorn, httptools", ("uvicorn/", "httptools/")),
    (
        "other feed code",
        ("(web/", "(timelines.py", "(lookup.py", "(models.py", "(accounts.py", "(posts.py", "(metrics.py"),
    ),
    ("asyncio and the rest of the standard library", ("asyncio/", "<frozen", "(re/", "(json/", "(datetime.py")),
)


def by_part(collapsed: str) -> dict[str, float]:
    """Share of samples per part of the stack, by innermost frame (self time): robust to the truncated stacks
    that coroutines and SQLAlchemy's greenlets leave py-spy."""
    counts: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        part = next((name for name, needles in PARTS if any(n in leaf for n in needles)), "other")
        counts[part] += int(count)
        total += int(count)
    return {name: counts[name] / total for name, _ in (*PARTS, ("other", ()))} if total else {}


async def record(pid: int, seconds: int, out: Path, load: Callable[[], Awaitable[object]]) -> str:
    """Sample ``pid`` with py-spy while ``load()`` runs; the collapsed stacks (also written to ``out``)."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    argv = [binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--nonblocking",
            "--format", "raw", "--output", str(out)]  # fmt: skip
    spy = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(0.3)  # attached before the load starts
    await load()
    _, err = await spy.communicate()
    return _collapsed(out, spy.returncode, err)


def _collapsed(out: Path, returncode: int | None, err: bytes) -> str:
    if returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err.decode().strip()[-500:]}")
    return out.read_text()
