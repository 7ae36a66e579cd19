"""What an audit found: places scanned (with counts and bytes), findings (each with where and why), and places that
could not be checked; the summary a person reads, the JSON a CI job reads, and the exit code."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

CLEAN, FINDINGS, UNCHECKED = 0, 1, 2
PLACES = ("database", "redis", "l1", "media", "logs", "config")


@dataclass(frozen=True, slots=True)
class Finding:
    place: str  # database, redis, file, config
    where: str  # table.column row id, a Redis key, a file and byte offset, a setting
    what: str  # canary, plaintext, not sealed, unknown column, ...
    detail: str  # how it was found (the encoding of a canary, why a value looks like text); never the value


@dataclass
class Scanned:
    items: int = 0
    bytes: int = 0
    note: str = ""


@dataclass
class Report:
    scanned: dict[str, Scanned] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)  # place -> why

    def place(self, name: str) -> Scanned:
        return self.scanned.setdefault(name, Scanned())

    def find(self, place: str, where: str, what: str, detail: str) -> None:
        self.findings.append(Finding(place, where, what, detail))

    @property
    def code(self) -> int:
        if self.findings:
            return FINDINGS
        return UNCHECKED if self.unchecked else CLEAN

    @property
    def verdict(self) -> str:
        return {CLEAN: "clean", FINDINGS: "findings", UNCHECKED: "incomplete"}[self.code]

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "scanned": {name: asdict(s) for name, s in self.scanned.items()},
            "findings": [asdict(f) for f in self.findings],
            "unchecked": self.unchecked,
        }

    def write(self, out: TextIO) -> None:
        print("cipherfeed audit", file=out)
        for name, s in self.scanned.items():
            note = f" ({s.note})" if s.note else ""
            print(f"  {name:<10} {s.items:>12,} items {s.bytes:>15,} bytes{note}", file=out)
        for name, why in self.unchecked.items():
            print(f"  {name:<10} NOT CHECKED: {why}", file=out)
        if self.findings:
            print(f"\n{len(self.findings)} finding(s):", file=out)
            for f in self.findings[:1000]:
                print(f"  [{f.place}] {f.where}: {f.what} ({f.detail})", file=out)
            if len(self.findings) > 1000:
                print(f"  ... and {len(self.findings) - 1000} more (--json lists all)", file=out)
        print(f"\nverdict: {self.verdict}", file=out)


BAR = 30  # characters of the progress bar


class Progress:
    """One line on standard error, rewritten as a long scan goes (a line per place when it is not a terminal)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self._last = 0

    def update(self, place: str, done: int, total: int | None = None, *, force: bool = False) -> None:
        if not force and done - self._last < 5000:
            return
        self._last = done
        of = f" of {total:,}" if total else ""
        if self.tty:
            bar = ""
            if total:
                filled = min(BAR, BAR * done // total)
                bar = f"[{'#' * filled}{'.' * (BAR - filled)}] {min(100, 100 * done // total):3d}% "
            print(f"\r  {place}: {bar}{done:,}{of}   ", end="", file=self.out, flush=True)
        elif force:
            print(f"  {place}: {done:,}{of}", file=self.out, flush=True)

    def done(self, place: str, count: int) -> None:
        self._last = 0
        end = "\r" if self.tty else ""
        print(f"{end}  {place}: {count:,} scanned", file=self.out, flush=True)
