"""Client threads for the benches: run one function in several threads at once and wait for all of them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


def run_concurrently(target: Callable[[Any], None], arguments: Iterable[Any]) -> None:
    """Call ``target(argument)`` for every argument, each in a thread of its own, all started before any is waited
    for; returns when every one has returned. When calls raised, the first one's exception (in the order of
    ``arguments``) is raised again then."""
    failures: dict[int, BaseException] = {}

    def call(index: int, argument: Any) -> None:
        try:
            target(argument)
        except BaseException as exc:  # raised again in the caller's thread
            failures[index] = exc

    threads = [threading.Thread(target=call, args=(index, argument)) for index, argument in enumerate(arguments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[min(failures)]
