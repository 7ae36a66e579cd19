"""The database: every row of every table, each value judged by what its column is declared to hold
(``feed.audit.declared``), every table or column not declared reported and searched too; on SQLite also the raw
files (the database and its write-ahead log, free pages included)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from crypto import InvalidToken, RootKeyRing, Sealed
from feed.audit.declared import DECLARED, Column
from feed.audit.detect import Needle, find_canaries, looks_like_text
from feed.audit.report import Progress, Report

CHUNK_ROWS = 2000
SKIPPED_TABLES = {"alembic_version"}
FILE_CHUNK = 8 << 20


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return None


async def scan_database(engine: AsyncEngine, needles: Sequence[Needle], report: Report, progress: Progress) -> None:
    place = report.place("database")
    async with engine.connect() as conn:
        tables, columns = await conn.run_sync(_reflect)
        for name in sorted(tables - DECLARED.keys() - SKIPPED_TABLES):
            report.find("database", name, "unknown table", "the schema does not declare it; its values are searched")
        for table_name in sorted(tables - SKIPPED_TABLES):
            declared = DECLARED.get(table_name, {})
            present = columns[table_name]
            for column in sorted(set(present) - declared.keys()):
                report.find(
                    "database", f"{table_name}.{column}", "unknown column", "not declared; its values are searched"
                )
            table = sa.table(table_name, *(sa.column(c) for c in present))
            keys = [c for c in present if c in _primary_keys(table_name)] or present[:1]
            rows = 0
            total = int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
            result = await conn.stream(sa.select(table).execution_options(yield_per=CHUNK_ROWS))
            async for partition in result.partitions(CHUNK_ROWS):
                batch: list[tuple[str, bytes]] = []
                for row in partition:
                    data = row._mapping
                    where = f"{table_name} " + ",".join(f"{k}={data[k]}" for k in keys)
                    for column in present:
                        raw = _as_bytes(data[column])
                        if raw is None:
                            continue
                        place.bytes += len(raw)
                        batch.append((f"{where} {column}", raw))
                        kind = declared.get(column, Column("unknown", "")).kind
                        _judge(report, table_name, column, where, kind, raw, data)
                rows += len(partition)
                place.items += len(partition)
                _search(report, "database", batch, needles)
                progress.update(f"database {table_name}", rows, total)
            if rows:
                progress.update(f"database {table_name}", rows, total, force=True)
    progress.done("database", place.items)


def _reflect(sync_conn: Any) -> tuple[set[str], dict[str, list[str]]]:
    inspector = sa.inspect(sync_conn)
    tables = set(inspector.get_table_names())
    return tables, {t: [c["name"] for c in inspector.get_columns(t)] for t in tables}


def _primary_keys(table_name: str) -> list[str]:
    from feed.storage.tables import metadata

    table = metadata.tables.get(table_name)
    return [c.name for c in table.primary_key.columns] if table is not None else []


def _judge(report: Report, table: str, column: str, where: str, kind: str, raw: bytes, row: Any) -> None:
    """What the column's kind allows; a value that breaks it is a finding (canaries are searched apart)."""
    location = f"{where} {column}"
    if kind == "sealed":
        try:
            sealed = Sealed(raw)
        except InvalidToken:
            reason = looks_like_text(raw)
            report.find("database", location, "not sealed", reason or "no valid sealed header")
            return
        if "key_version" in row and table != "users" and sealed.key_version != row["key_version"]:
            report.find("database", location, "sealed under another key", f"key version {sealed.key_version}")
    elif kind == "wrapped":
        try:
            RootKeyRing.root_version_of(raw)
        except InvalidToken:
            report.find("database", location, "not a wrapped key", looks_like_text(raw) or "no valid header")
    elif kind == "digest":
        if len(raw) != 32:
            report.find("database", location, "not a digest", looks_like_text(raw) or f"{len(raw)} bytes, not 32")
    elif kind in ("code", "unknown"):
        reason = looks_like_text(raw)
        if reason:
            report.find("database", location, "looks like text", reason)


def _search(report: Report, place: str, batch: list[tuple[str, bytes]], needles: Sequence[Needle]) -> None:
    """Canaries in a batch of values: one search over all of them, then the values that hold one."""
    if not needles or not batch:
        return
    if not find_canaries(b"\x00".join(raw for _, raw in batch), needles):
        return
    for where, raw in batch:
        for hit in find_canaries(raw, needles):
            report.find(place, f"{where} @{hit.offset}", "canary", f"{hit.canary!r} as {hit.encoding}")


def scan_files(
    paths: Sequence[Path], place_name: str, needles: Sequence[Needle], report: Report, progress: Progress
) -> None:
    """Raw files: canaries at their byte offsets (chunks overlap, so one across a boundary is found). Not in a
    process that has a SQLite database among them open: closing any descriptor of the file drops the locks SQLite
    holds on it in that process (the audit command disposes of its engine first)."""
    place = report.place(place_name)
    overlap = max((len(n.pattern) for n in needles), default=1)
    for path in paths:
        try:
            with path.open("rb") as handle:
                offset, tail, seen = 0, b"", set()
                while chunk := handle.read(FILE_CHUNK):
                    data = tail + chunk
                    base = offset - len(tail)
                    for hit in find_canaries(data, needles):
                        at = base + hit.offset
                        if (hit.canary, hit.encoding) not in seen:
                            seen.add((hit.canary, hit.encoding))
                            report.find(place_name, f"{path} @{at}", "canary", f"{hit.canary!r} as {hit.encoding}")
                    offset += len(chunk)
                    place.bytes += len(chunk)
                    tail = data[-overlap:]
                    progress.update(f"{place_name} {path.name}", offset)
            place.items += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.unchecked[f"{place_name}:{path}"] = exc.strerror or type(exc).__name__
