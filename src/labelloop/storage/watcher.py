"""The drop folder: files placed in it are moved into the bucket at the same relative key."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, watch

log = logging.getLogger(__name__)


class DropFolderWatcher:
    """Watches ``folder``; ``folder/images_for_detection/a.jpg`` becomes object ``images_for_detection/a.jpg``.

    A file is taken once its size has stopped changing, handed to ``store(key, data)`` (the server's: it
    fires "object created" like any upload) and then removed from the drop folder. A file that cannot be
    stored stays where it is and the reason is logged. Only regular files are taken: a symbolic link is never
    followed (it could make the server copy a file the dropper may not read into the bucket), and it stays
    where it is.
    """

    def __init__(self, folder: Path, store: Callable[[str, bytes], object], settle_seconds: float = 0.5) -> None:
        self.store = store
        self.folder = folder.resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settle_seconds = settle_seconds
        self._stop = threading.Event()
        self._refused: set[Path] = set()
        self._thread = threading.Thread(target=self._run, name="drop-folder", daemon=True)

    def start(self) -> None:
        """Take what is already there, then watch for more in a background thread."""
        self._thread.start()
        log.info("watching drop folder", extra={"folder": str(self.folder)})

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # The first sweep runs at the watch's first answer (a change or its first 0.5-s timeout), once the watch is
        # armed: swept before it, a file dropped while that sweep was still storing fell between the two, was
        # never noticed and stayed in the folder.
        swept = False
        for changes in watch(self.folder, stop_event=self._stop, rust_timeout=500, yield_on_timeout=True):
            if not swept or any(change in (Change.added, Change.modified) for change, _ in changes):
                self.sweep()
                swept = True

    def sweep(self) -> int:
        """Store every settled file in the drop folder; returns how many were taken."""
        taken = 0
        for path in sorted(self.folder.rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(self.folder).parts):
                continue
            if path.is_symlink():
                self._refuse(path, "a symbolic link; links are not followed, drop the file itself")
                continue
            if path.is_file() and self._settled(path) and self._take(path):
                taken += 1
        return taken

    def _refuse(self, path: Path, reason: str) -> None:
        if path not in self._refused:
            self._refused.add(path)
            log.warning("drop folder entry left in place", extra={"file": str(path), "reason": reason})

    def _settled(self, path: Path) -> bool:
        try:
            before = path.stat().st_size
            time.sleep(self.settle_seconds if time.time() - path.stat().st_mtime < self.settle_seconds else 0)
            return path.stat().st_size == before
        except FileNotFoundError:
            return False

    def _take(self, path: Path) -> bool:
        key = path.relative_to(self.folder).as_posix()
        try:
            self.store(key, _read_regular_file(path))
        except Exception as exc:  # keep watching: this file stays in the folder, the reason is logged
            log.error("drop folder file not stored", extra={"file": str(path), "key": key, "error": repr(exc)})
            return False
        path.unlink(missing_ok=True)
        return True


def _read_regular_file(path: Path) -> bytes:
    """The content of ``path`` if it is (still) a regular file; a link or anything else raises ``OSError``.

    Opened without following a link and without blocking (a FIFO put there since the check must not hang
    the watcher), then checked on the open file itself.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return file.read()
