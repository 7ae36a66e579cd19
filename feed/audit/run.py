"""``cipherfeed audit``: inspect every place a post's text, a content warning or an email address could land on a
deployment, and say what was inspected and what was found (``feed.audit.report``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from obstore.exceptions import BaseError as ObstoreError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from feed import db
from feed.audit.database import scan_database, scan_files
from feed.audit.detect import Needle, needles
from feed.audit.l1 import scan_l1
from feed.audit.logs import scan_logs
from feed.audit.media_scan import scan_media
from feed.audit.redis_scan import scan_redis
from feed.audit.report import PLACES, Progress, Report
from feed.media.store import MediaStore
from feed.redis_link import FAILURES, RedisLink, close_client, make_client
from feed.settings import Settings


async def audit(
    settings: Settings, canaries: Sequence[str], log_files: Sequence[Path], only: Sequence[str], progress: Progress
) -> Report:
    report = Report()
    found = needles(canaries)
    wanted = set(only or PLACES)
    if "database" in wanted:
        await _database(settings, found, report, progress)
    if "redis" in wanted:
        await _redis(settings, found, report, progress)
    if "l1" in wanted:
        await _l1(settings, found, report)
    if "media" in wanted:
        await _media(settings, found, report, progress)
    if "logs" in wanted and log_files:
        scan_logs(log_files, found, report, progress)
    if "config" in wanted:
        check_config(settings, report)
    return report


async def _database(settings: Settings, found: Sequence[Needle], report: Report, progress: Progress) -> None:
    engine = db.make_engine(settings.database_url)
    try:
        await scan_database(engine, found, report, progress)
    except (OSError, SQLAlchemyError) as exc:
        report.unchecked["database"] = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        return
    finally:
        await engine.dispose()
    if settings.is_sqlite:
        path = Path(make_url(settings.database_url).database or "")
        scan_files([path, Path(f"{path}-wal")], "db files", found, report, progress)
        report.place("db files").note = "the database and its write-ahead log, free pages included"


async def _redis(settings: Settings, found: Sequence[Needle], report: Report, progress: Progress) -> None:
    if settings.redis_url is None:
        report.place("redis").note = "none: the embedded mode"
        return
    client = make_client(settings.redis_url)
    try:
        await scan_redis(client, found, report, progress)
    except FAILURES as exc:
        report.unchecked["redis"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    finally:
        await close_client(client)


async def _media(settings: Settings, found: Sequence[Needle], report: Report, progress: Progress) -> None:
    try:
        await scan_media(MediaStore.open(settings.media_store), found, report, progress)
    except (OSError, ObstoreError) as exc:
        report.unchecked["media"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


async def _l1(settings: Settings, found: Sequence[Needle], report: Report) -> None:
    if settings.redis_url is None:
        report.place("l1").note = "the embedded server's own: not reachable from another process"
        return
    link = RedisLink.connect(settings.redis_url)
    try:
        await scan_l1(link, found, report)
    except FAILURES as exc:
        report.unchecked["l1"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    finally:
        await link.close()


def check_config(settings: Settings, report: Report) -> None:
    """The data directory and key files readable by their owner only; the log level; core dumps of the running
    cipherfeed processes."""
    place = report.place("config")
    private = [(settings.data_dir, 0o077), (settings.resolved_root_key_file, 0o077), (settings.secret_key_file, 0o077)]
    if settings.is_sqlite:
        path = Path(make_url(settings.database_url).database or "")
        private += [(path, 0o077), (Path(f"{path}-wal"), 0o077), (Path(f"{path}-shm"), 0o077)]
    for path, mask in private:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        place.items += 1
        if mode & mask:
            report.find("config", str(path), "readable by others", f"mode {mode:o}")
    place.items += 1
    if settings.log_level == "debug":
        report.find("config", "CIPHERFEED_LOG_LEVEL", "debug logging", "debug lines may carry more than ids")
    for pid, limit in _running_core_limits():
        place.items += 1
        if limit != "0":
            report.find("config", f"process {pid}", "core dumps allowed", f"core file size limit {limit}")


def _running_core_limits() -> list[tuple[int, str]]:
    """(pid, core size limit) of the cipherfeed servers and workers running on this machine."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\x00")
            if not any(a in (b"serve", b"worker") for a in argv) or not any(b"feed" in a for a in argv):
                continue
            for line in (entry / "limits").read_text().splitlines():
                if line.startswith("Max core file size"):
                    out.append((int(entry.name), line.split()[4]))
        except OSError:
            continue
    return out
