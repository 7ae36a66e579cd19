"""The two exceptions of the crypto package."""

from __future__ import annotations

from typing import Any, final

_MESSAGE = "invalid sealed data"


@final
class InvalidToken(Exception):
    """Raised for every failure to open, unwrap or parse sealed data.

    It never says which check failed (wrong key, wrong context, tampering, truncation, bad UTF-8...):
    telling them apart would help an attacker and could leak data. It takes no arguments, so no caller can
    attach details, and ``str()`` is always ``"invalid sealed data"``.
    """

    def __init__(self) -> None:
        super().__init__(_MESSAGE)

    def __str__(self) -> str:
        return _MESSAGE

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would call InvalidToken(_MESSAGE), which __init__ refuses.
        return (InvalidToken, ())


class InvalidKeyMaterial(ValueError):
    """A key or key configuration is unusable: wrong length or type, bad JSON or base64, unknown version.

    Messages name versions and lengths, never key bytes.
    """
