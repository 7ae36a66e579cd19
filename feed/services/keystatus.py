"""What ``cipherfeed keys status`` reports: which root key versions exist and how many user keys each wraps, which
user key versions wrap how many posts, and in which Sealed format the posts are."""

from __future__ import annotations

from dataclasses import dataclass

from crypto import sealed as sealed_format
from feed.services import rotation
from feed.services.context import Services
from feed.storage import users as store


@dataclass(frozen=True, slots=True)
class KeyReport:
    primary: int
    versions: tuple[int, ...]
    wrapped_by_version: dict[int, int]  # root key version -> user keys it wraps
    emails_by_version: dict[int | None, int]  # root key version -> email indexes keyed from it (None: the secret)
    user_keys: int
    users: int
    posts: rotation.PostKeyUse
    format_version: int  # the Sealed format new seals are written in


async def status(svc: Services) -> KeyReport:
    async with svc.db() as session:
        by_version = await store.root_version_counts(session)
        emails = await store.email_index_version_counts(session)
        keys, people = await store.user_key_version_counts(session)
    ring = svc.keys.ring
    use = await rotation.post_key_use(svc)
    return KeyReport(ring.primary, ring.versions, by_version, emails, keys, people, use, sealed_format.FORMAT_VERSION)


def format_report(report: KeyReport) -> str:
    lines = [f"root key versions: {', '.join(map(str, report.versions))} (primary: {report.primary})"]
    emails = report.emails_by_version
    for version in sorted(set(report.versions) | set(report.wrapped_by_version) | {v for v in emails if v}):
        count, indexes = report.wrapped_by_version.get(version, 0), emails.get(version, 0)
        state = "primary" if version == report.primary else "decrypt-only"
        if version not in report.versions:
            state = "MISSING from the key ring: these keys cannot be opened"
        elif version != report.primary and count == indexes == 0:
            state += f", unused: `cipherfeed keys retire {version}` removes it"
        lines.append(f"  v{version}: {count} user keys wrapped, {indexes} email indexes keyed ({state})")
    if emails.get(None):
        lines.append(
            f"  email indexes keyed from the server secret (from before): {emails[None]}; "
            "`cipherfeed jobs run reindex_emails` moves them under the primary"
        )
    use = report.posts
    lines.append(f"user keys: {report.user_keys} for {report.users} users")
    lines.append(f"  by user key version: {_counts(use.user_keys_by_version)}")
    lines.append(f"  superseded by a newer version of their user's key: {use.superseded}")
    lines.append(f"posts by user key version: {_counts(use.by_key_version)}")
    lines.append(f"  not under their author's current key: {use.behind}")
    lines.append(
        f"sealed post fields by format version: {_counts(use.fields_by_format)} (new seals: v{report.format_version})"
    )
    older = sum(n for v, n in use.fields_by_format.items() if v < report.format_version)
    lines.append(f"  in an older format: {older}")
    return "\n".join(lines)


def _counts(by_version: dict[int, int]) -> str:
    return ", ".join(f"v{v}: {n}" for v, n in sorted(by_version.items())) or "none"
