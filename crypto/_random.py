"""The one source of randomness of the crypto package.

Every public function that draws random bytes takes an optional ``rng`` used instead of
:func:`random_bytes`, so that tests can produce golden vectors. Nothing else in the package calls
``os.urandom`` or ``secrets``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

Rng = Callable[[int], bytes]
"""Returns exactly ``n`` random bytes when called with ``n``."""


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)


def draw(rng: Rng | None, n: int) -> bytes:
    """``n`` bytes from ``rng``, or from :func:`random_bytes` when ``rng`` is None.

    Checks what a substitute ``rng`` returns, so that a broken one cannot silently shorten a key or a nonce.
    """
    # Looked up at call time, so that replacing crypto._random.random_bytes replaces it everywhere.
    out = random_bytes(n) if rng is None else rng(n)
    if type(out) is not bytes or len(out) != n:
        raise ValueError(f"rng must return exactly {n} bytes")
    return out
