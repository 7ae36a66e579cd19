"""Where media goes, as settings give it (``feed.settings``), for ``feed.media.store``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feed.settings import Secret


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``url`` (``file:///dir`` or ``s3://bucket/prefix``) and, for S3, how to reach it."""

    url: str
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: Secret | None = None

    def __repr__(self) -> str:  # short, and never a credential
        return f"StoreConfig({self.url!r})"
