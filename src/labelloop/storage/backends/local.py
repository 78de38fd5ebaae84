"""A bucket in a local folder: one file per key, written atomically; ETags kept in a sibling folder."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from labelloop.storage.backends.base import ObjectNotFound
from labelloop.storage.models import ObjectInfo

_ETAG = re.compile(r"[0-9a-f]{32}")  # an MD5 hex digest, as put() stores it


def _may_lead_out(base: Path, key: str) -> bool:
    """Whether ``key`` under ``base`` could name a file outside it: a segment that is empty, ``.`` or ``..``, or
    one that is a symbolic link on disk (looked at down to the first one that does not exist yet)."""
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments) or key.startswith("/"):
        return True
    folder = str(base)
    for segment in segments:
        folder = os.path.join(folder, segment)
        try:
            if stat.S_ISLNK(os.lstat(folder).st_mode):
                return True
        except FileNotFoundError:
            return False
    return False


class LocalBackend:
    """Objects under ``root``; the key's ``/`` separators become folders. Keys must be validated first.

    ``root`` holds only the objects themselves, so a person can browse it; ETags live in ``root.meta``
    and uploads are staged in ``root.tmp`` (same file system, so the final rename is atomic).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.meta_root = self.root.with_name(self.root.name + ".meta")
        self.staging = self.root.with_name(self.root.name + ".tmp")
        for folder in (self.root, self.meta_root, self.staging):
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str, base: Path | None = None) -> Path:
        """The file of ``key`` under ``base`` (the objects' folder unless given); ``ValueError`` if it would lead
        outside ``base``. Keys are validated before they get here; this is the last line of defence against path
        tricks. Only a ``.``/``..``/empty segment or a symbolic link among the key's own components can lead out
        (``base`` is resolved), so the whole path is resolved only then: a full ``resolve()`` looks at every
        component from ``/`` down, 4 % of the upload pipeline's busy samples for three calls per upload."""
        base = base or self.root
        path = base / key
        if not _may_lead_out(base, key):
            return path
        path = path.resolve()
        if base not in path.parents:
            raise ValueError(f"key {key!r} resolves outside the bucket")
        return path

    def put(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._atomic_write(path, data)
        self._store_etag(key, etag)
        return self._info(key, path, etag)

    def _atomic_write(self, path: Path, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` to ``path`` through a staged file and a rename; ``durable``: fsync'd first."""
        handle, temp = tempfile.mkstemp(dir=self.staging, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _store_etag(self, key: str, etag: str) -> None:
        """Keep the object's ETag beside it. Not fsync'd (the second fsync was half the bucket's cost per upload):
        the ETag can always be computed again from the object, and :meth:`_etag` does so when the file is
        missing, older than the object, or not an ETag (a crash before its data reached the disk)."""
        meta = self._path(key, self.meta_root)
        meta.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(meta, etag.encode(), durable=False)

    def _etag(self, key: str, path: Path) -> str:
        meta = self._path(key, self.meta_root)
        try:
            if meta.stat().st_mtime_ns >= path.stat().st_mtime_ns:
                stored = meta.read_text().strip()
                if _ETAG.fullmatch(stored):
                    return stored
        except FileNotFoundError:
            pass
        # The file was placed by hand or the ETag is older than it: compute it again.
        etag = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        self._store_etag(key, etag)
        return etag

    def _info(self, key: str, path: Path, etag: str | None = None) -> ObjectInfo:
        stat = path.stat()
        return ObjectInfo(key=key, size=stat.st_size, etag=etag or self._etag(key, path),
                          last_modified=datetime.fromtimestamp(stat.st_mtime, UTC))

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.read_bytes()

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return self._info(key, path)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    found.append(self._info(key, path))
                except FileNotFoundError:  # deleted while we listed
                    continue
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if not path.is_file():
            return False
        path.unlink()
        self._path(key, self.meta_root).unlink(missing_ok=True)
        return True

    def ensure_folder(self, prefix: str) -> None:
        self._path(prefix.rstrip("/")).mkdir(parents=True, exist_ok=True)

    def folders(self, prefix: str = "") -> list[str]:
        """Sub-folders directly under ``prefix`` (keys ending in ``/``)."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(f"{prefix}{entry.name}/" for entry in base.iterdir() if entry.is_dir())
