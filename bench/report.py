"""Result rows, targets (reported as met or not, never asserted), the markdown table and the JSON file."""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TITLES = {
    "1": "Home timeline (20 posts, warm caches) vs bare Starlette, same bytes",
    "2": "Home timeline vs naive (one query, decrypt, render, no cache)",
    "3": "Home timeline with L1 cold, Redis warm, vs scenario 1",
    "4": "Micro: L1 get vs dict get; decrypt one post vs bare AESGCM.decrypt",
    "5": "Burst at the expiry of one hot key (public timeline ids)",
    "6": "Public timeline page vs scenario 1's peer; API home and public timelines vs bare Starlette (the home JSON)",
    "7": "Fan-out of one post to every follower of the star vs a raw redis-py pipeline; commit to last feed write",
    "8": "Live push: one post to many SSE streams of one process vs a bare Starlette broadcaster; idle streams' memory",
    "9": "Mastodon API home timeline vs the HTML home page of the same viewer",
}
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


@dataclass(frozen=True, slots=True)
class Target:
    op: str  # ">=", "<=" or "=="
    value: float
    on: str = "ratio"  # or "cipherfeed": which figure of the row is compared

    def text(self) -> str:
        return f"{self.on} {self.op} {self.value:g}"

    def met(self, row: Row) -> bool | None:
        figure = row.ratio if self.on == "ratio" else row.cipherfeed
        if figure is None or math.isnan(figure):
            return None
        return _OPS[self.op](round(figure, 6), self.value)


@dataclass(slots=True)
class Row:
    scenario: str
    metric: str
    unit: str
    cipherfeed: float | None
    peer: float | None = None
    peer_name: str = ""
    target: Target | None = None
    note: str = ""
    ratio: float | None = field(init=False, default=None)
    met: bool | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.cipherfeed is not None and self.peer:
            self.ratio = self.cipherfeed / self.peer
        self.met = self.target.met(self) if self.target else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = self.target.text() if self.target else None
        return out


def fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(rows: list[Row]) -> str:
    lines = [
        "| scenario | metric | cipherfeed | peer | ratio | target | met? |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in sorted(rows, key=lambda r: r.scenario):
        peer = f"{fmt(row.peer)} ({row.peer_name})" if row.peer is not None else "—"
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        metric = f"{row.metric} [{row.unit}]" + (f" — {row.note}" if row.note else "")
        target = row.target.text() if row.target else ""
        lines.append(
            f"| {row.scenario} | {metric} | {fmt(row.cipherfeed)} | {peer} | {fmt(row.ratio)} | {target} | {met} |"
        )
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """NaN is not JSON: it becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write(out: Path, rows: list[Row], meta: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    scenarios = {
        number: {"title": title, "rows": [r.as_dict() for r in rows if r.scenario == number]}
        for number, title in TITLES.items()
    }
    doc = _clean({**meta, "scenarios": scenarios})
    json_path, md_path = out / "latest.json", out / "latest.md"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    head = [f"# cipherfeed benchmark ({meta['mode']})", ""]
    head += [f"- {k}: {v}" for k, v in meta.get("summary", {}).items()]
    scenario_lines = [f"{n}. {t}" for n, t in TITLES.items()]
    profile = meta.get("notes", {}).get("profile_table")
    if profile:  # --profile: where the server spends its time on the home page
        profile = f"## Where the cipherfeed server spends its time on the home page (py-spy)\n\n{profile}\n"
    md_path.write_text("\n".join([*head, "", *scenario_lines, "", markdown(rows), "", *([profile] if profile else [])]))
    return json_path, md_path
