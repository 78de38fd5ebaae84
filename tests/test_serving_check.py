"""A serving process looks once a second (``endpoint.sync_serving``) for the version the database marks RUNNING. It
reads that version's name alone: the whole row holds the trained head, whose familiarity bank is megabytes (13 MB
for 10 labels of 256 images), and reading it at every look cost 16 ms of CPU each time (README Performance, item
46). Real SQLite and PostgreSQL databases; the in-memory serving is a stand-in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, update

from labelloop import db
from labelloop.modeling import endpoint
from labelloop.modeling.models import ModelVersion
from labelloop.parameters import service as parameters


class Served:
    """What ``sync_serving`` asks of the in-memory serving: the active version, units, switch and stop."""

    def __init__(self, version: str) -> None:
        self.active: Any = type("Loaded", (), {"version": version})()
        self.switched: list[Any] = []
        self.stopped = False

    def set_units(self, units: int) -> None:
        self.units = units

    def switch(self, loaded: Any) -> None:
        self.switched.append(loaded)

    def stop(self) -> None:
        self.stopped, self.active = True, None


def test_the_serving_check_reads_the_version_s_name_not_its_head(database_url: Callable[[], str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    db.init(database_url())
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["cat", "dog"], evaluation={},
                                 head=b"\x00" * 1_000_000))
    served = Served("v1")
    monkeypatch.setattr(endpoint, "serving", lambda: served)
    monkeypatch.setattr(endpoint, "_synced_at", 0.0)  # given back after the test: the next check is not skipped
    statements: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine(), "before_cursor_execute", executed)
    try:
        assert endpoint.sync_serving(force=True) == "v1"
    finally:
        event.remove(db.engine(), "before_cursor_execute", executed)
    looks = [statement for statement in statements if "model_versions" in statement]
    assert looks, "the check reads the model versions"
    assert not any("model_versions.head" in statement for statement in looks), looks
    assert served.switched == [] and not served.stopped  # v1 serves already: nothing loaded

    with db.session() as session:
        session.execute(update(ModelVersion).values(status="STOPPED"))
    assert endpoint.sync_serving(force=True) is None
    assert served.stopped and served.switched == []
