"""A bucket in a local folder: one file per key, written atomically, its ETag in an extended attribute of the file
(``user.labelloop.etag``) or, on a file system without user extended attributes, in a sibling folder.

Each system call releases the GIL and must take it back, which under load can mean waiting behind a busy Python
thread (up to the 5-ms switch interval each time), so the object paths make few of them: a key's components are
looked at once (that look also says whether the object is there) and files are read and written with ``os``
calls alone (``open()`` adds an ``fstat``, an ``ioctl`` and an ``lseek`` per file)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

from labelloop.storage.backends.base import ObjectNotFound
from labelloop.storage.models import ObjectInfo

_ETAG = re.compile(r"[0-9a-f]{32}")  # an MD5 hex digest, as put() stores it
_STAGED = itertools.count()  # names of staged files, with the process id (O_EXCL makes each one unique anyway)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# A file with no name yet, in the folder it is opened on (Linux; 0 where the platform has none): it is given its name
# once written, or vanishes with its last handle.
_UNNAMED = os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_TMPFILE", 0)
_FOLDER = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0)  # a folder opened to fsync it
ETAG_ATTRIBUTE = "user.labelloop.etag"  # "<MD5 hex> <size> <mtime in ns>" of the file it was computed for
_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})

log = logging.getLogger(__name__)


def _look(base: str, key: str) -> tuple[bool, os.stat_result | None]:
    """Whether ``key`` under ``base`` could name a file outside it — a segment that is empty, ``.`` or ``..``, or
    one that is a symbolic link on disk (looked at down to the first one that does not exist yet) — and, when it
    could not, the ``lstat`` of the key's last component (None: nothing is there). One ``lstat`` per component."""
    segments = key.split("/")
    if "" in segments or "." in segments or ".." in segments:
        return True, None
    folder, found = base, None
    for segment in segments:
        folder = f"{folder}/{segment}"
        try:
            found = os.lstat(folder)
        except FileNotFoundError:
            return False, None
        if stat.S_ISLNK(found.st_mode):
            return True, None
    return False, found


def _read(path: str, size: int) -> bytes:
    """The whole content of the file at ``path``, ``size`` bytes as far as its ``stat`` said (open, read, read
    the end, close: four system calls; each read's buffer is the size asked for, so no more than needed)."""
    handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(handle, size + 1):
            chunks.append(chunk)
            size = 64 * 1024
        return b"".join(chunks)
    finally:
        os.close(handle)


def _write_all(handle: int, data: bytes) -> None:
    """Write every byte of ``data`` to the open file ``handle`` (a write may be short)."""
    view = memoryview(data)
    while view:
        written = os.write(handle, view)
        if not written:  # not done by a regular file's write, but never loop on it
            raise OSError(errno.EIO, "a write to the bucket made no progress")
        view = view[written:]


def _fill(handle: int, data: bytes, etag: str | None, durable: bool) -> os.stat_result:
    """Write ``data`` to the new file open at ``handle``, set ``etag`` as its ETag attribute (unless None) and fsync
    it when ``durable``; its ``fstat`` (size and modification time, which the attribute holds too)."""
    _write_all(handle, data)
    written = os.fstat(handle)
    if etag is not None:
        os.setxattr(handle, ETAG_ATTRIBUTE, _attribute(etag, written))
    if durable:
        os.fsync(handle)
    return written


def sync_folder(folder: str) -> None:
    """Fsync the folder ``folder``: its entries (a file named or renamed into it, a folder made in it) survive a
    power loss once this returns. A file's own fsync does not make its name durable."""
    handle = os.open(folder, _FOLDER)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def make_folders(folder: str, durable: bool) -> None:
    """Make ``folder`` and any of its parents that do not exist yet; when ``durable``, fsync the parent of each one
    made (or found made by another thread at that moment), so a file named in ``folder`` is not lost with it."""
    parent = os.path.dirname(folder)
    if parent != folder and not os.path.isdir(parent):
        make_folders(parent, durable)
    try:
        os.mkdir(folder)
    except FileExistsError:
        if not os.path.isdir(folder):
            raise
    if durable:
        sync_folder(parent)


def _replace(source: str, target: str, durable: bool) -> None:
    """Rename ``source`` to ``target``, making ``target``'s folders first when they do not exist yet
    (:func:`make_folders`)."""
    try:
        os.replace(source, target)
    except FileNotFoundError:
        make_folders(os.path.dirname(target), durable)
        os.replace(source, target)


def _replace_staged(staged: str, target: str, durable: bool) -> None:
    """Rename the staged file ``staged`` to ``target`` (:func:`_replace`); a failed rename leaves no staged file."""
    try:
        _replace(staged, target, durable)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def _open_unnamed(folder: str, durable: bool) -> int:
    """A new file without a name in ``folder`` (made first, with its parents, if it does not exist:
    :func:`make_folders`), open for writing (``O_TMPFILE``)."""
    try:
        return os.open(folder, _UNNAMED, 0o600)
    except FileNotFoundError:
        make_folders(folder, durable)
        return os.open(folder, _UNNAMED, 0o600)


def _link(handle: int, path: str) -> None:
    """Name the unnamed file open at ``handle`` ``path`` (``FileExistsError`` if something is there already).

    ``linkat`` of its ``/proc`` entry, following that link to the file itself; ``src_dir_fd`` is given only so that
    Python calls ``linkat`` (with ``follow_symlinks``) rather than ``link``: the source path is absolute, so the
    kernel does not look at it."""
    os.link(f"/proc/self/fd/{handle}", path, src_dir_fd=handle, follow_symlinks=True)


def _names_unnamed_files(folder: str) -> bool:
    """Whether files can be written unnamed in ``folder`` and then named (``O_TMPFILE`` and ``linkat`` through
    ``/proc``): tried once with an empty file, named in ``folder`` and removed at once."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        handle = os.open(folder, _UNNAMED, 0o600)
    except OSError:  # a file system without unnamed files (EOPNOTSUPP; EISDIR on old kernels)
        return False
    try:
        probe = f"{folder}/{os.getpid()}-probe-{next(_STAGED)}.part"
        _link(handle, probe)
        os.unlink(probe)
    except OSError:
        return False
    finally:
        os.close(handle)
    return True


def _modified(found: os.stat_result) -> datetime:
    return datetime.fromtimestamp(found.st_mtime, UTC)


def _attribute(etag: str, found: os.stat_result) -> bytes:
    """The ETag attribute's value for a file whose ``stat`` is ``found``: the ETag, with the size and modification
    time it holds for (a file rewritten in place since, its attribute kept, is seen as changed)."""
    return f"{etag} {found.st_size} {found.st_mtime_ns}".encode("ascii")


def _attribute_etag(path: str, found: os.stat_result) -> str | None:
    """The ETag kept in the attribute of the file at ``path`` (its ``stat``: ``found``), or None: no attribute (an
    object stored before the attributes, or placed by hand), or one for other content (not an ETag, another size
    or modification time)."""
    try:
        kept = os.getxattr(path, ETAG_ATTRIBUTE, follow_symlinks=False).decode("ascii", "replace").split(" ")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOENT):
            return None
        raise
    if len(kept) == 3 and _ETAG.fullmatch(kept[0]) and kept[1:] == [str(found.st_size), str(found.st_mtime_ns)]:
        return kept[0]
    return None


def _keeps_attributes(folder: str) -> bool:
    """Whether the file system of ``folder`` keeps user extended attributes: asked by reading one from the folder,
    which writes nothing (a full disk answers too); a file system without them refuses the question."""
    if not hasattr(os, "getxattr"):  # not Linux
        return False
    try:
        os.getxattr(folder, ETAG_ATTRIBUTE)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return False
        if exc.errno != errno.ENODATA:
            raise
    return True


class LocalBackend:
    """Objects under ``root``; the key's ``/`` separators become folders. Keys must be validated first.

    ``root`` holds only the objects themselves, so a person can browse it; uploads are staged in ``root.tmp`` (same
    file system, so the final rename is atomic). An object's ETag is set on its staged file before the fsync and
    the rename (:data:`ETAG_ATTRIBUTE`: one call, atomic with the object); once named, its folder is fsync'd too
    (and the parent of each folder made for it), so a power loss after the answer does not lose the object; a
    delete fsyncs the object's folder as well, so a deleted object does not come back. Where the file system keeps
    no user extended attributes (looked at once, here), ETags live in files under ``root.meta``, as they all did
    before: such a file is still read for an object stored then, and an object without either gets its ETag
    computed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.meta_root = self.root.with_name(self.root.name + ".meta")
        self.staging = self.root.with_name(self.root.name + ".tmp")
        for folder in (self.root, self.meta_root, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
        self._root, self._meta, self._staging = str(self.root), str(self.meta_root), str(self.staging)
        self.attributes = _keeps_attributes(self._staging)
        self.unnamed = _names_unnamed_files(self._staging)
        if not self.attributes:
            log.info("bucket keeps ETags in files: no user extended attributes on its file system",
                     extra={"bucket": self._root, "etag_folder": self._meta})

    def _locate(self, key: str, base: str) -> tuple[str, os.stat_result | None]:
        """The file of ``key`` under ``base`` and what is there (its ``stat``; None: nothing), or ``ValueError`` if
        it would lead outside ``base``. Keys are validated before they get here; this is the last line of defence
        against path tricks. Only a ``.``/``..``/empty segment or a symbolic link among the key's own components
        can lead out (``base`` is resolved), so the whole path is resolved only then: a full ``resolve()`` looks
        at every component from ``/`` down."""
        leads_out, found = _look(base, key)
        if not leads_out:
            return f"{base}/{key}", found
        path = (Path(base) / key).resolve()
        if Path(base) not in path.parents:
            raise ValueError(f"key {key!r} resolves outside the bucket")
        try:
            return str(path), os.stat(path)
        except FileNotFoundError:
            return str(path), None

    def _path(self, key: str, base: Path | None = None) -> Path:
        """The file of ``key`` under ``base`` (the objects' folder unless given); see :meth:`_locate`."""
        return Path(self._locate(key, str(base or self.root))[0])

    def _object(self, key: str) -> tuple[str, os.stat_result]:
        """The file of the object ``key`` and its ``stat``, or :class:`ObjectNotFound`."""
        path, found = self._locate(key, self._root)
        if found is None or not stat.S_ISREG(found.st_mode):
            raise ObjectNotFound(key)
        return path, found

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` unless the same bytes are there (then the stored object, ``unchanged``): the
        key's components are looked at once for both."""
        path, found = self._locate(key, self._root)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if found is not None and stat.S_ISREG(found.st_mode) and found.st_size == len(data):
            stored = self._info(key, path, found)
            if stored.etag == etag:
                return stored.model_copy(update={"unchanged": True})
        written = self._atomic_write(path, data, etag=etag if self.attributes else None)
        if not self.attributes:
            self._store_etag(key, etag)
        return ObjectInfo(key=key, size=written.st_size, etag=etag, last_modified=_modified(written))

    def _atomic_write(self, path: str, data: bytes, *, etag: str | None = None, durable: bool = True) -> os.stat_result:
        """Write ``data`` to ``path`` so that a reader finds the whole file or none (making its folders if needed):
        written unnamed in ``path``'s folder and then named (:meth:`_write_unnamed`), or where the file system cannot,
        through a staged file and a rename. ``etag``: set as the file's ETag attribute; ``durable``: fsync'd (with
        the attribute) before it gets its name, and its folder fsync'd once it has it (its new folders' parents
        too), so the name survives a power loss as well. Returns the written file's ``fstat`` (its size and
        modification time)."""
        if self.unnamed:
            written = self._write_unnamed(path, data, etag, durable)
        else:
            written = self._write_staged(path, data, etag, durable)
        if durable:
            sync_folder(os.path.dirname(path))
        return written

    def _write_staged(self, path: str, data: bytes, etag: str | None, durable: bool) -> os.stat_result:
        """:meth:`_atomic_write` through a file in the staging folder, renamed to ``path`` once written."""
        staged, handle = self._stage()
        try:
            try:
                written = _fill(handle, data, etag, durable)
            finally:
                os.close(handle)
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
        _replace_staged(staged, path, durable)
        return written

    def _write_unnamed(self, path: str, data: bytes, etag: str | None, durable: bool) -> os.stat_result:
        """:meth:`_atomic_write` with a file opened unnamed in ``path``'s folder (``O_TMPFILE``), named ``path`` once
        written (``linkat``): one directory entry made, where a staged file costs one made in the staging folder and
        a rename across folders. A file already at ``path`` (an object replaced) is replaced atomically: the file is
        named in the staging folder and renamed over it. Nothing is left behind by a failure or a crash: an unnamed
        file vanishes with its handle."""
        handle = _open_unnamed(os.path.dirname(path), durable)
        try:
            written = _fill(handle, data, etag, durable)
            try:
                _link(handle, path)
            except FileExistsError:
                _replace_staged(self._link_staged(handle), path, durable)
        finally:
            os.close(handle)
        return written

    def _stage(self) -> tuple[str, int]:
        """A new file in the staging folder, open for writing: its path and handle."""
        while True:
            staged = self._staged_name()
            try:
                return staged, os.open(staged, _CREATE, 0o600)
            except FileExistsError:  # left by an earlier process that had this id
                continue

    def _link_staged(self, handle: int) -> str:
        """Name the unnamed file open at ``handle`` in the staging folder; its path."""
        while True:
            staged = self._staged_name()
            try:
                _link(handle, staged)
                return staged
            except FileExistsError:  # left by an earlier process that had this id
                continue

    def _staged_name(self) -> str:
        return f"{self._staging}/{os.getpid()}-{next(_STAGED)}.part"

    def _store_etag(self, key: str, etag: str) -> None:
        """Keep the object's ETag in its ETag file (a bucket without extended attributes). Not fsync'd (the second
        fsync was half the bucket's cost per upload): the ETag can always be computed again from the object, and
        :meth:`_etag` does so when the file is missing, older than the object, or not an ETag (a crash before its
        data reached the disk)."""
        meta, _ = self._locate(key, self._meta)
        self._atomic_write(meta, etag.encode(), durable=False)

    def _etag(self, key: str, path: str, found: os.stat_result) -> str:
        """The ETag of the object ``key`` (file ``path``, whose ``stat`` is ``found``): its attribute's, else its ETag
        file's (an object stored before the attributes, or on a file system without them), else computed."""
        if self.attributes and (etag := _attribute_etag(path, found)) is not None:
            return etag
        meta, kept = self._locate(key, self._meta)
        if kept is not None and stat.S_ISREG(kept.st_mode) and kept.st_mtime_ns >= found.st_mtime_ns:
            try:
                stored = _read(meta, kept.st_size).decode("ascii", "replace").strip()
            except FileNotFoundError:
                stored = ""
            if _ETAG.fullmatch(stored):
                return stored
        # The file was placed by hand or the ETag is older than it: compute it again.
        etag = hashlib.md5(_read(path, found.st_size), usedforsecurity=False).hexdigest()
        self._keep_etag(key, path, etag, found)
        return etag

    def _keep_etag(self, key: str, path: str, etag: str, found: os.stat_result) -> None:
        """Keep an ETag computed for the file ``path`` (its ``stat``: ``found``) for the next reader: as its attribute
        where the bucket keeps them and this process may set it (a file placed by hand may belong to another user),
        else in its ETag file."""
        if self.attributes:
            try:
                os.setxattr(path, ETAG_ATTRIBUTE, _attribute(etag, found), follow_symlinks=False)
                return
            except PermissionError:
                log.info("ETag kept in a file: the object's attribute may not be set", extra={"key": key})
        self._store_etag(key, etag)

    def _info(self, key: str, path: str, found: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key=key, size=found.st_size, etag=self._etag(key, path, found),
                          last_modified=_modified(found))

    def get(self, key: str) -> bytes:
        path, found = self._object(key)
        try:
            return _read(path, found.st_size)
        except FileNotFoundError:  # deleted since it was looked at
            raise ObjectNotFound(key) from None

    def head(self, key: str) -> ObjectInfo:
        path, found = self._object(key)
        try:
            return self._info(key, path, found)
        except FileNotFoundError:  # deleted since it was looked at, before its ETag was read or computed
            raise ObjectNotFound(key) from None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(dirpath, name)
                key = Path(path).relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    found.append(self._info(key, path, os.stat(path)))
                except FileNotFoundError:  # deleted while we listed
                    continue
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        """Remove the object ``key``; whether it was there (False also when another caller removed it first). Its
        folder is fsync'd before this returns: a removed name, like a new one, survives a power loss only then,
        and an object moved by a copy and a delete would otherwise come back beside its copy. Its ETag file (a
        bucket without attributes) is removed unsynced, as it is written: a stale one is never read for a newer
        object (:meth:`_etag`)."""
        path, found = self._locate(key, self._root)
        if found is None or not stat.S_ISREG(found.st_mode):
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:  # removed by another caller since it was looked at
            return False
        sync_folder(os.path.dirname(path))
        self._path(key, self.meta_root).unlink(missing_ok=True)
        return True

    def ensure_folder(self, prefix: str) -> None:
        make_folders(str(self._path(prefix.rstrip("/"))), durable=True)

    def folders(self, prefix: str = "") -> list[str]:
        """Sub-folders directly under ``prefix`` (keys ending in ``/``)."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(f"{prefix}{entry.name}/" for entry in base.iterdir() if entry.is_dir())
