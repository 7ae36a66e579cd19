"""What ``cipherfeed keys status`` reports: which root key versions exist and how many user keys each wraps."""

from __future__ import annotations

from dataclasses import dataclass

from feed.services.context import Services
from feed.storage import users as store


@dataclass(frozen=True, slots=True)
class KeyReport:
    primary: int
    versions: tuple[int, ...]
    wrapped_by_version: dict[int, int]
    user_keys: int
    users: int


async def status(svc: Services) -> KeyReport:
    async with svc.db() as session:
        by_version = await store.root_version_counts(session)
        keys, people = await store.user_key_version_counts(session)
    ring = svc.keys.ring
    return KeyReport(ring.primary, ring.versions, by_version, keys, people)


def format_report(report: KeyReport) -> str:
    lines = [f"root key versions: {', '.join(map(str, report.versions))} (primary: {report.primary})"]
    for version in sorted(set(report.versions) | set(report.wrapped_by_version)):
        count = report.wrapped_by_version.get(version, 0)
        state = "primary" if version == report.primary else "decrypt-only"
        if version not in report.versions:
            state = "MISSING from the key ring: these keys cannot be opened"
        lines.append(f"  v{version}: {count} user keys wrapped ({state})")
    lines.append(f"user keys: {report.user_keys} for {report.users} users")
    return "\n".join(lines)
