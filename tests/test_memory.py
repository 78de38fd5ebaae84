"""The serving process's heap: the malloc arena limit and handing freed memory back (labelloop.memory).

Each check runs in a fresh interpreter: the arena limit only holds for arenas not created yet, and the heap of
the test process itself is not what is measured."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only"),
              pytest.mark.same_on_every_database]  # no database: fresh interpreters' heaps

ARENAS = """
import ctypes, sys, threading
from labelloop import memory
limit = int(sys.argv[1])
print(memory.limit_arenas(limit))
barrier = threading.Barrier(12)
kept = []
def work():
    barrier.wait()  # every thread alive at once, so none can take over an arena another thread left
    kept.append([bytearray(40_000) for _ in range(20)])  # above pymalloc's 512 bytes: from malloc
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(12)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
"""

TRIM = """
import sys
from labelloop import memory
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
blocks = [bytes(3000) for _ in range(100_000)]  # 300 MB of malloc'd blocks
kept = blocks[::200]  # a few live blocks all through the heap: it cannot shrink from its top
del blocks
before = rss_mib()
memory.release_free_memory(after="test")
print(before, rss_mib())
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          timeout=120, check=True)


def _arenas(limit: int) -> tuple[str, int]:
    done = _run(ARENAS, str(limit))
    return done.stdout.strip(), done.stderr.count("Arena ")


def test_threads_share_at_most_the_configured_number_of_malloc_arenas() -> None:
    set_limit, limited = _arenas(2)
    unset, default = _arenas(0)
    assert set_limit == "True" and 1 <= limited <= 2
    assert unset == "False" and default > 2  # glibc's default gives these threads arenas of their own


def test_freed_memory_goes_back_to_the_system() -> None:
    before, after = (float(value) for value in _run(TRIM).stdout.split())
    assert before > 250, f"the freed blocks should still be resident before the trim ({before:.0f} MiB)"
    assert after < before - 150, f"the trim gave back only {before - after:.0f} MiB of {before:.0f}"


def test_the_arena_limit_is_a_checked_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from labelloop.config import Settings

    monkeypatch.setenv("LABELLOOP_MALLOC_ARENAS", "3")
    assert Settings().malloc_arenas == 3
    monkeypatch.setenv("LABELLOOP_MALLOC_ARENAS", "-1")
    with pytest.raises(ValidationError, match="malloc_arenas"):
        Settings()


SETTLE = """
import gc, weakref
from labelloop import memory
class Node:
    pass
def cycle():
    first, second = Node(), Node()
    first.other, second.other = second, first
    return first
garbage = weakref.ref(cycle())  # a cycle no one holds: only the collector frees it
kept = cycle()
frozen = memory.settle_heap(after="test")
print(garbage() is None, frozen > 1000, gc.get_freeze_count() == frozen, gc.is_tracked(kept))
later = weakref.ref(kept)
del kept  # frozen, then garbage: refcounting cannot free a cycle, and full collections no longer scan it
gc.collect()
print(later() is not None)
memory.settle_heap(after="test again")
print(later() is None)
"""


def test_settling_the_heap_collects_garbage_freezes_what_lives_and_unfreezes_it_next_time() -> None:
    collected, many, counted, tracked, kept_by_freeze, collected_next = _run(SETTLE).stdout.split()
    assert collected == "True", "a cycle no one held is collected before the freeze"
    assert many == counted == tracked == "True", "what lives is frozen, and settle_heap says how many"
    assert kept_by_freeze == "True", "a frozen cycle that became garbage waits for the next settling"
    assert collected_next == "True", "the next settling unfreezes first, so it is collected then"
