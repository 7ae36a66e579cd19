"""Login throttling that slows guessing down without handing anyone a way to lock the owner out.

It follows OWASP's Authentication Cheat Sheet and its "Slow Down Online Guessing Attacks with Device Cookies":
attempts are counted in buckets, and past a bucket's limit every further attempt must wait 1, 2, 4, 8 ... seconds
after the one before (at most the window); one that comes too early is refused with ``Retry-After``, before any
password is checked and without counting. The buckets of one login:

- from a **known device** (a signed device cookie, given to the browser at each successful login to the account):
  that device's own bucket only, ``per_account`` attempts. Whatever a guesser does elsewhere, the owner on a device
  they used before is never slowed down by it.
- from anywhere else, three buckets:
  - the account from this client address (IPv6 by /64): ``per_account``;
  - the client address, whatever the account: ``per_ip`` (one address trying many accounts);
  - the account from all unknown devices: ``per_account_unknown`` (a guess spread over many addresses).

A success clears its own bucket (the device, or the account from that address) and takes its attempt back from
the others. Attempts are counted before the password is checked, in one transaction that locks the buckets, so
concurrent guesses cannot all slip in under a limit. Bucket names are keyed hashes: what was typed and who typed it
are not stored. The client address is the peer's, or ``X-Forwarded-For``'s only when the peer is a proxy named in
``CIPHERFEED_FORWARDED_ALLOW_IPS`` (uvicorn's proxy headers, set up by ``cipherfeed serve``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
from collections.abc import Iterable, Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from feed.errors import RateLimited
from feed.services.context import Services, now
from feed.storage import throttle as store

MAX_DEVICES = 5  # device tokens one browser keeps (one per account it logged in to)
_TOKEN_BYTES = 12


def bucket(svc: Services, kind: str, value: str) -> str:
    """A bucket name that does not reveal what was typed or who typed it."""
    digest = hmac.new(svc.secrets.throttle_key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}:{digest[:32]}"


def ip_prefix(ip: str) -> str:
    """IPv4 addresses as they are; IPv6 by /64, the block one subscriber usually holds."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def login_buckets(svc: Services, name: str, ip: str, device: str | None) -> list[tuple[str, int]]:
    """The buckets (name, limit) a login to account ``name`` counts in, from a known ``device`` (its token) or
    not; the first is cleared by a success."""
    rules = svc.throttle
    if device is not None:
        return [(bucket(svc, "device", device.partition(".")[0]), rules.per_account)]
    prefix = ip_prefix(ip)
    return [
        (bucket(svc, "pair", f"{name}|{prefix}"), rules.per_account),
        (bucket(svc, "ip", prefix), rules.per_ip),
        (bucket(svc, "acct", name), rules.per_account_unknown),
    ]


async def attempt(svc: Services, buckets: Sequence[tuple[str, int]], message: str) -> None:
    """Count one attempt in every bucket, or refuse it (RateLimited, nothing counted) while any is slowed down."""
    when = now()
    window = svc.throttle.window
    async with svc.db.begin() as session:  # a refusal raises inside: the transaction, and its counts, roll back
        for name, limit in buckets:
            hit = await store.hit(session, name, when, window)
            if hit.blocked_until is not None and hit.blocked_until > when:
                wait = math.ceil((hit.blocked_until - when).total_seconds())
                raise RateLimited(f"{message}; try again in {_seconds(wait)}", wait)
            if hit.attempts >= limit:
                pause = timedelta(seconds=2 ** min(hit.attempts - limit, 20))
                await store.block(session, name, when + min(window, pause))
        if secrets.randbelow(100) == 0:
            await store.purge(session, when)


async def succeeded(svc: Services, buckets: Sequence[tuple[str, int]], session: AsyncSession) -> None:
    """The attempt counted in ``buckets`` succeeded: the first bucket starts afresh, the others take it back.
    ``session``: the caller's write transaction."""
    first, *rest = (name for name, _ in buckets)
    await store.clear(session, first)
    for name in rest:
        await store.release(session, name)


def device_token(svc: Services, name: str) -> str:
    """A new device token for account ``name`` (``username_lower``), to keep in the browser's device cookie."""
    nonce = secrets.token_urlsafe(_TOKEN_BYTES)
    return f"{nonce}.{_signature(svc, name, nonce)}"


def known_device(svc: Services, name: str, tokens: Iterable[str]) -> str | None:
    """The first of ``tokens`` that this server gave to account ``name``; None if none was."""
    for token in tokens:
        nonce, _, signature = token.partition(".")
        if nonce and hmac.compare_digest(signature, _signature(svc, name, nonce)):
            return token
    return None


def device_tokens(raw: str | None) -> list[str]:
    """The tokens of a device cookie's value (at most :data:`MAX_DEVICES`, each of a sane length)."""
    if not raw:
        return []
    return [t for t in raw.split("~")[:MAX_DEVICES] if 0 < len(t) <= 80]


def _signature(svc: Services, name: str, nonce: str) -> str:
    message = f"device:{name}:{nonce}".encode()
    return hmac.new(svc.secrets.throttle_key, message, hashlib.sha256).hexdigest()[:32]


def _seconds(wait: int) -> str:
    return f"{wait} second{'s' if wait != 1 else ''}" if wait < 120 else f"{math.ceil(wait / 60)} minutes"
