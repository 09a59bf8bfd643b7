"""Artifact bytes, content-addressed, through fsspec (local directory, s3://, gs://, memory://, ...).

Layout under the root URL:

    sha256/ab/cd/abcd...      one immutable blob per distinct content
    uploads/<uuid>            an upload in flight; never referenced by metadata

A blob reaches its final key only after its size and sha256 were verified, so
every object under sha256/ is exactly the content its name says: a partial or
corrupt upload is never visible, concurrent uploads of the same content are
harmless (same bytes, same key), and versions sharing files (a tokenizer, an
unchanged shard) store them once.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cairn.common.errors import DataLoss, InvalidArgument, NotFound

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def check_sha256(sha256: str) -> str:
    if not _SHA256_RE.fullmatch(sha256):
        raise InvalidArgument(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")
    return sha256


class BlobStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self._root = root.rstrip("/")

    def key(self, sha256: str) -> str:
        return f"{self._root}/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def exists(self, sha256: str, size: int) -> bool:
        key = self.key(sha256)
        return self.fs.exists(key) and self.fs.size(key) == size

    def put(self, chunks: Iterable[bytes], *, size: int, sha256: str) -> None:
        """Store `chunks` as blob `sha256`, or raise DataLoss and store nothing.

        The bytes go to a temporary key and are moved into place only once their
        size and digest match. When the blob is already stored the stream is only
        verified, not written again.
        """
        if self.exists(sha256, size):
            for _ in _verified(chunks, size, sha256):
                pass
            return
        temp = f"{self._root}/uploads/{uuid.uuid4().hex}"
        self.fs.makedirs(f"{self._root}/uploads", exist_ok=True)
        try:
            with self.fs.open(temp, "wb") as out:
                for chunk in _verified(chunks, size, sha256):
                    out.write(chunk)
                if isinstance(self.fs, LocalFileSystem):
                    # Durable before it becomes visible: a crash must not leave a short file at the final key.
                    out.flush()
                    os.fsync(out.fileno())
            final = self.key(sha256)
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(temp, final)
        finally:
            if self.fs.exists(temp):
                self.fs.rm(temp)

    def read(self, sha256: str, *, offset: int, chunk_size: int) -> Iterator[bytes]:
        """The blob's bytes from `offset`; opened now, so a missing blob fails before any byte is sent."""
        try:
            handle = self.fs.open(self.key(sha256), "rb")
        except FileNotFoundError:
            raise NotFound(
                f"blob {sha256} is missing from {self.url}; the registry storage was altered"
            ) from None
        handle.seek(offset)
        return _chunks(handle, chunk_size)

    def pending_uploads(self) -> list[str]:
        """Temporary keys of uploads in flight (or abandoned by a crash)."""
        directory = f"{self._root}/uploads"
        return list(self.fs.ls(directory, detail=False)) if self.fs.exists(directory) else []

    def remove_stale_uploads(self, older_than: timedelta) -> list[str]:
        """Delete uploads last written longer ago than `older_than`: a crash left them.

        Only old ones, because replicas sharing this store may be writing theirs right now.
        """
        cutoff = datetime.now(timezone.utc) - older_than
        removed = []
        for key in self.pending_uploads():
            try:
                modified = self.fs.modified(key)
            except (NotImplementedError, FileNotFoundError):
                continue
            if modified.tzinfo is None:
                modified = modified.astimezone(timezone.utc)
            if modified < cutoff:
                self.fs.rm(key)
                removed.append(key)
        return removed


def _chunks(handle: Any, chunk_size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _verified(chunks: Iterable[bytes], size: int, sha256: str) -> Iterator[bytes]:
    """Pass chunks through, hashing them; DataLoss as soon as the content cannot match."""
    digest = hashlib.sha256()
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > size:
            raise DataLoss(f"received more than the declared {size} bytes; nothing was stored")
        digest.update(chunk)
        yield chunk
    if received != size:
        raise DataLoss(f"received {received} bytes but the header declared {size}; nothing was stored")
    if digest.hexdigest() != sha256:
        raise DataLoss(
            f"content sha256 {digest.hexdigest()} does not match the declared {sha256}; nothing was stored"
        )
