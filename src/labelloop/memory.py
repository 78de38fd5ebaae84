"""The process's heap: how many malloc arenas its threads share, and freed memory given back after big one-off work.

glibc gives threads up to eight malloc arenas per core; a serving process runs dozens of threads (HTTP worker
threads, workflow threads, inference units), and each arena keeps the memory freed in it. Measured on the upload
pipeline (README Performance): 930 MiB after 1,000 uploads with glibc's default, 725 MiB with two arenas. Big
one-off work (training, an ONNX export) leaves its freed memory in the heap too; ``malloc_trim`` hands it back
(an export left 106 MiB behind). Elsewhere than glibc (macOS, musl) both are no-ops.

The cyclic garbage collector's full collections scan every object the process holds, most of them made at
start-up (modules, classes, the app's routes) and never garbage: 115–162 ms of CPU each here, with every Python
thread stopped, about once per 2,000 detections under load (README Performance, item 28). :func:`settle_heap`
freezes what is alive after start-up and after big one-off work, so full collections scan only what came later
(about 5 ms each).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
from functools import cache

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


@cache
def _glibc() -> ctypes.CDLL | None:
    """glibc's C library, or None on another libc (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(count: int) -> bool:
    """Let this process's threads share at most ``count`` malloc arenas (0: glibc's default). Call it before
    threads start. Whether the limit was set (False elsewhere than glibc)."""
    libc = _glibc()
    if count == 0 or libc is None:
        return False
    if not libc.mallopt(M_ARENA_MAX, count):
        log.warning("glibc refused the malloc arena limit", extra={"arenas": count})
        return False
    log.debug("malloc arenas limited", extra={"arenas": count})
    return True


def settle_heap(after: str) -> int:
    """Collect the garbage, then freeze every object still alive (``gc.freeze``): the collector stops scanning
    them; refcounting still frees them. Call it after ``after`` (start-up, big one-off work). The objects frozen
    before are unfrozen first, so a cycle of them that became garbage since is collected now. Returns how many
    objects are frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("heap settled", extra={"after": after, "frozen_objects": frozen})
    return frozen


def release_free_memory(after: str) -> None:
    """Settle the heap (:func:`settle_heap`) and hand its free memory back to the system, after ``after`` (big
    one-off work) is done."""
    settle_heap(after)
    libc = _glibc()
    if libc is None:
        return
    libc.malloc_trim(0)
    log.debug("free memory handed back", extra={"after": after})
