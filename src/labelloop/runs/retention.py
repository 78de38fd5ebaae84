"""Run retention: finished runs older than ``LABELLOOP_RUN_RETENTION_DAYS`` leave the workflow engine's records.

DBOS keeps every run's status, input, output and step outputs for ever; an upload pipeline writes one run per
batch of uploads, the schedules one per firing. Pruning deletes finished runs (SUCCESS, ERROR, CANCELLED,
MAX_RECOVERY_ATTEMPTS_EXCEEDED) created before the cutoff through DBOS's own ``delete_workflows``, a chunk per
transaction, oldest first. Runs still PENDING or ENQUEUED are never touched, nor those the caller pins (the
runs that trained a model version: its page links to them for as long as the version exists).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from dbos import DBOS

from labelloop import engine

log = logging.getLogger(__name__)

FINISHED = ("SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")
# Runs deleted per transaction: small enough that a SQLite system database is not locked for long.
PRUNE_CHUNK = 500


def cutoff_for(days: int, now: datetime | None = None) -> datetime:
    """The creation time before which a finished run is pruned when runs are kept ``days`` days."""
    if days < 1:
        raise ValueError("runs are pruned after at least one day (0 keeps them for ever and prunes nothing)")
    return (now or datetime.now(UTC)) - timedelta(days=days)


def prune_finished_runs(days: int, pinned: Callable[[], Iterable[str]], *, chunk: int | None = None,
                        now: datetime | None = None) -> dict[str, Any]:
    """Delete the finished runs created more than ``days`` days before ``now``, except those ``pinned`` names.

    Returns how many were pruned, how many old runs were kept because they are pinned, and the cutoff.
    ``days`` 0 prunes nothing; ``chunk`` runs are deleted per transaction (default ``PRUNE_CHUNK``). Safe to
    repeat (a retried step deletes what is left)."""
    if days == 0:
        return {"days": 0, "cutoff": None, "pruned": 0, "kept": 0}
    cutoff = cutoff_for(days, now)
    chunk = chunk or PRUNE_CHUNK
    keep = set(pinned())
    pruned = offset = 0
    kept: set[str] = set()
    while True:
        # Oldest first; the pinned ones stay at the front, so the next chunk starts after those seen so far.
        found = DBOS.list_workflows(status=list(FINISHED), end_time=cutoff.isoformat(), limit=chunk, offset=offset,
                                    load_input=False, load_output=False)
        doomed = [run.workflow_id for run in found if run.workflow_id not in keep]
        if doomed:
            with engine.dbos_info_at_debug("Deleting workflow(s)"):  # DBOS logs every deleted id at INFO
                DBOS.delete_workflows(doomed)
        pruned += len(doomed)
        kept.update(run.workflow_id for run in found if run.workflow_id in keep)
        offset += len(found) - len(doomed)
        if len(found) < chunk:
            break
    result = {"days": days, "cutoff": cutoff.isoformat(), "pruned": pruned, "kept": len(kept)}
    log.info("finished runs pruned", extra=result)
    return result
