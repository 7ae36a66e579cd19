"""Times as pages show them."""

from __future__ import annotations

from datetime import UTC, datetime

_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def reltime(when: datetime, now: datetime | None = None) -> str:
    """Compact age: now, 45s, 5m, 3h, 2d, then a date. ``static/js/app.js`` keeps it fresh in the browser."""
    now = now or datetime.now(UTC)
    seconds = int((now - when).total_seconds())
    return short_age(seconds) if seconds < WEEK else date_shown(when, now.year)


WEEK = 7 * 86400  # from this age on, a post shows its date


def short_age(seconds: int) -> str:
    """:func:`reltime` of a post ``seconds`` old, under a :data:`WEEK`."""
    if seconds < 10:
        return "now"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def date_shown(when: datetime, year: int) -> str:
    """:func:`reltime` of a post a :data:`WEEK` old or older, in ``year``."""
    date = f"{when.day} {_MONTHS[when.month - 1]}"
    return date if when.year == year else f"{date} {when.year}"


def isotime(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fulltime(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")
