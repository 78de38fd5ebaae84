"""Generic file helpers: atomic writes and content digests (no labelloop imports: any layer may use them)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True, make_parents: bool = True) -> Path:
    """Write `data` to `path` atomically: a temp file in the same folder, fsync, then os.replace.

    `durable=False` skips the fsync (for caches, where a file lost in a crash is simply rebuilt).
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def short_digest(*parts: str, length: int = 32) -> str:
    """A stable hex digest of text parts (joined by NUL), cut to `length` characters: for derived ids."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]
