"""Keys and sealing for cipherfeed: envelope encryption with AES-256-GCM. Imports nothing else of ours.

Root key ring (key file) -> user keys (stored wrapped) -> one data key per post revision -> sealed fields.
"""

from __future__ import annotations

from .blind_index import blind_index
from .context import FieldContext
from .errors import InvalidKeyMaterial, InvalidToken
from .keyring import RootKeyRing
from .sealed import Sealed
from .sealing import open_field, open_field_utf8, open_fields, rewrap, seal_beside, seal_fields
from .user_key import UserKey

__all__ = [
    "FieldContext",
    "InvalidKeyMaterial",
    "InvalidToken",
    "RootKeyRing",
    "Sealed",
    "UserKey",
    "blind_index",
    "open_field",
    "open_field_utf8",
    "open_fields",
    "rewrap",
    "seal_beside",
    "seal_fields",
]
