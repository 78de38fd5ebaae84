"""Client threads for the benches: run one function in several threads at once and wait for all of them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


def run_concurrently(target: Callable[[Any], None], arguments: Iterable[Any]) -> None:
    """Call ``target(argument)`` for every argument, each in a thread of its own, all started before any is waited
    for; returns when every one has returned."""
    threads = [threading.Thread(target=target, args=(argument,)) for argument in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
