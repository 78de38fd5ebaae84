"""The interface every bucket backend implements (local folder now, S3-compatible later)."""

from __future__ import annotations

from typing import Protocol

from labelloop.storage.models import ObjectInfo


class ObjectNotFound(KeyError):
    """No object has this key."""


class Backend(Protocol):
    """A flat key → bytes store with S3's semantics (etag = MD5 of the content for simple puts)."""

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` atomically, replacing any earlier object, unless the same bytes are stored
        there already (same size and MD5 ETag): then nothing is written and the answer, the stored object's,
        says ``unchanged``."""

    def get(self, key: str) -> bytes:
        """The content of ``key``, or :class:`ObjectNotFound`."""

    def head(self, key: str) -> ObjectInfo:
        """Metadata of ``key``, or :class:`ObjectNotFound`."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""

    def delete(self, key: str) -> bool:
        """Remove ``key``; returns whether it existed."""

    def ensure_folder(self, prefix: str) -> None:
        """Make an empty folder visible (a directory, or a zero-byte ``prefix/`` marker on S3)."""

    def folders(self, prefix: str = "") -> list[str]:
        """Sub-folders directly under ``prefix``, each ending in ``/``."""
