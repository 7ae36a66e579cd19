"""Argument checks shared by the crypto modules."""

from __future__ import annotations

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def check_int(name: str, value: object, low: int, high: int, *, error: type[Exception] = ValueError) -> int:
    """Return ``value`` if it is an int (not a bool) with ``low <= value <= high``, both bounds inclusive.

    Raises TypeError for a non-int, ``error`` for an int out of range; with ``error=InvalidKeyMaterial`` both
    raise that, as key configuration does.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        type_error = TypeError if error is ValueError else error
        raise type_error(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise error(f"{name} must be in {low}..{high}, got {value}")
    return value


def encode_utf8(text: str) -> bytes | None:
    """``text`` as UTF-8, or None if it holds lone surrogates.

    Returns instead of raising: a UnicodeEncodeError carries the whole text in ``.object``, and chained as the
    ``__context__`` of our own error it would carry it into logs and error reports.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None
