"""Where sealed media files live: one interface over the data directory (or any shared volume) and S3-compatible
object storage, both through obstore.

The store holds sealed streams only (:mod:`crypto.stream`): names are ids, contents are ciphertext. Nothing here
opens or sees an image. A file is written whole and atomically (a reader never sees half of one), read by byte
ranges, and listed by prefix for the cleanup jobs.

Configuration (``feed.settings``): ``CIPHERFEED_MEDIA_STORE`` is ``file:///a/directory`` (the default: ``media``
under the data directory) or ``s3://bucket/optional/prefix``, with ``CIPHERFEED_S3_ENDPOINT`` (for a server other
than AWS), ``CIPHERFEED_S3_REGION``, ``CIPHERFEED_S3_ACCESS_KEY_ID`` and ``CIPHERFEED_S3_SECRET_ACCESS_KEY``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from anyio import to_thread
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, S3Store

from feed.media.config import StoreConfig
from feed.settings import ConfigError


class MediaStore:
    """Sealed media files by name (``a-z0-9/._-`` only: the names are ours)."""

    def __init__(self, store: Any, describe: str) -> None:
        self._store = store
        self.describe = describe  # for logs and errors: the kind and place, never a credential

    @classmethod
    def open(cls, config: StoreConfig) -> MediaStore:
        parts = urlsplit(config.url)
        if parts.scheme == "file":
            directory = Path(parts.path)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            return cls(LocalStore(directory), f"directory {directory}")
        if parts.scheme == "s3":
            if not parts.netloc:
                raise ConfigError("CIPHERFEED_MEDIA_STORE must name a bucket: s3://bucket[/prefix]")
            options: dict[str, Any] = {}
            if config.endpoint:
                options["endpoint"] = config.endpoint
            if config.region:
                options["region"] = config.region
            if config.access_key_id:
                options["access_key_id"] = config.access_key_id
            if config.secret_access_key:
                options["secret_access_key"] = config.secret_access_key.reveal()
            http = bool(config.endpoint and config.endpoint.startswith("http://"))
            store = S3Store(
                parts.netloc,
                prefix=parts.path.strip("/") or None,
                config=options,  # type: ignore[arg-type]
                client_options={"allow_http": http},
            )
            return cls(store, f"S3 bucket {parts.netloc}")
        raise ConfigError("CIPHERFEED_MEDIA_STORE must be a file:// or s3:// URL")

    # obstore's own async functions can abort the process at exit (a runtime thread outliving the interpreter, seen
    # about one exit in six here); its blocking ones, each run in a worker thread, do not.

    async def put(self, name: str, pieces: bytes | Iterable[bytes]) -> None:
        """Write ``name`` whole (replacing any file of that name); readers see the old file or the new one.
        ``pieces`` are consumed in a worker thread (sealing a stream as it is written costs no event-loop time)."""
        await to_thread.run_sync(lambda: obstore.put(self._store, name, pieces))

    async def size(self, name: str) -> int | None:
        """The size of ``name`` in bytes, or None if there is no such file."""
        try:
            meta = await to_thread.run_sync(obstore.head, self._store, name)
        except (FileNotFoundError, NotFoundError):
            return None
        return int(meta["size"])

    async def read(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start`` (inclusive) to ``end`` (exclusive) of ``name``; FileNotFoundError if it is gone."""
        if end <= start:
            return b""
        try:
            found = await to_thread.run_sync(lambda: obstore.get_range(self._store, name, start=start, end=end))
        except NotFoundError as exc:
            raise FileNotFoundError(name) from exc
        return bytes(found)

    async def delete(self, name: str) -> None:
        """Remove ``name``; no error if it is not there."""
        try:
            await to_thread.run_sync(obstore.delete, self._store, name)
        except (FileNotFoundError, NotFoundError):
            pass

    async def files(self, prefix: str = "") -> AsyncIterator[StoredFile]:
        """Every file under ``prefix``, in batches as the store lists them."""
        batches = obstore.list(self._store, prefix or None, chunk_size=1000)
        while batch := await to_thread.run_sync(next, batches, None):
            for meta in batch:
                yield StoredFile(str(meta["path"]), int(meta["size"]), meta["last_modified"])

    async def names(self, prefix: str = "") -> AsyncIterator[str]:
        """Every file name under ``prefix``."""
        async for found in self.files(prefix):
            yield found.name


@dataclass(frozen=True, slots=True)
class StoredFile:
    name: str
    size: int
    modified: datetime
