"""A model version's row holds its trained head, 13 MB with a full familiarity bank (10 labels of 256 images): the
models pages, the API's list, the console and the loop's look-ups read the other columns only, and the head is
read where it is used (``versions.head_of``). ``has_head`` says whether there is one without reading it, also on
a row whose session has closed. On SQLite the head is also stored after every other column (migration
``model_heads_last``): SQLite walks a large value's pages to reach any column stored after it. Real SQLite and
PostgreSQL databases."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, insert, inspect, select

from labelloop import db
from labelloop.modeling import pages, service, versions
from labelloop.modeling.models import ModelStatus, ModelVersion
from labelloop.modeling.training import Head

# A statement that reads the head itself, not only its length (``has_head``).
READS_HEAD = re.compile(r"(?<!length\()model_versions\.head\b", re.IGNORECASE)


def small_head(labels: list[str]) -> bytes:
    """A real (tiny) trained head's bytes, with a familiarity bank of 3 rows a label."""
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((len(labels), 3, 8))
    return Head(labels, rng.standard_normal((len(labels), 8)), np.zeros(len(labels)),
                bank=bank / np.linalg.norm(bank, axis=2, keepdims=True),
                familiar_offset=np.zeros(len(labels))).to_bytes()


@pytest.fixture
def three_versions(database_url: Callable[[], str]) -> Iterator[None]:
    """v1 stopped and v2 serving, both trained (a head each), v3 still training (none)."""
    db.init(database_url())
    with db.session() as session:
        session.add_all([
            ModelVersion(version="v1", status=ModelStatus.STOPPED.value, labels=["cat", "dog"], evaluation={},
                         head=small_head(["cat", "dog"])),
            ModelVersion(version="v2", status=ModelStatus.RUNNING.value, labels=["cat", "dog"], evaluation={},
                         head=small_head(["cat", "dog"])),
            ModelVersion(version="v3", status=ModelStatus.TRAINING_IN_PROGRESS.value, labels=[], evaluation={})])
    yield


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement the database runs while the test does."""
    seen: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine(), "before_cursor_execute", executed)
    yield seen
    event.remove(db.engine(), "before_cursor_execute", executed)


def test_listing_and_showing_versions_leaves_their_heads_unread(three_versions: None,
                                                                statements: list[str]) -> None:
    with db.session() as session:
        listed = versions.list_versions(session=session)
        serving = versions.serving_version(session=session)
        shown = versions.get_version("v1", session=session)
        described = [versions.describe(row) for row in listed]
        offered = [pages._actions(row, serving) for row in listed]  # the models page's buttons
        assert serving is not None and [row.version for row in listed] == ["v3", "v2", "v1"]
        for row in (*listed, serving, shown):
            assert "head" in inspect(row).unloaded, row.version
        assert versions.serving_version_name(session=session) == "v2"
    assert not [statement for statement in statements if READS_HEAD.search(statement)], statements
    assert [row.has_head for row in listed] == [False, True, True]
    assert [item["version"] for item in described] == ["v3", "v2", "v1"]
    assert [(item["deploy"], item["rollback"], item["stop"], item["export"]) for item in offered] == [
        (False, False, False, False), (False, False, True, True), (True, True, False, True)]


def test_the_head_is_read_where_it_is_used(three_versions: None, statements: list[str]) -> None:
    with db.session() as session:
        row = versions.get_version("v2", session=session)
        assert versions.head_of(row).labels == ["cat", "dog"]  # the deferred column, read inside the session
        with pytest.raises(versions.ModelError, match="no trained head"):
            versions.head_of(versions.get_version("v3", session=session))
    assert [statement for statement in statements if READS_HEAD.search(statement)]


def test_a_row_whose_session_closed_still_says_whether_it_has_a_head(three_versions: None) -> None:
    """As ``service.train_version`` asks after its session (a retried step that finished training), and the
    deploy checks."""
    with db.session() as session:
        trained, training = (versions.get_version(name, session=session) for name in ("v1", "v3"))
    assert trained.has_head and not training.has_head
    with db.session() as session:
        assert "head" in inspect(service.check_deployable("v1", session=session)).unloaded
        with pytest.raises(versions.ModelError, match="cannot be deployed"):
            service.check_deployable("v3", session=session)


def bytes_read() -> int:
    """What this process has read through ``read()`` so far (SQLite reads its file's pages so)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def test_on_sqlite_listing_versions_reads_none_of_their_heads_pages(tmp_path: Path) -> None:
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    with db.session() as session:
        session.add_all([ModelVersion(version=f"v{n}", status=ModelStatus.STOPPED.value, labels=["cat", "dog"],
                                      evaluation={}, head=bytes([n]) * 4_000_000, warm_start={"previous": "v0"},
                                      progress={"phase": "done"}) for n in range(1, 4)])
    before = bytes_read()
    with db.session() as session:
        listed = [(row.version, row.input_view, row.warm_start, row.progress, row.has_head)
                  for row in versions.list_versions(session=session)]
    read = bytes_read() - before
    db.close()
    assert listed == [(f"v{n}", "crop", {"previous": "v0"}, {"phase": "done"}, True) for n in (3, 2, 1)]
    assert read < 1_000_000, f"{read / 1e6:.1f} MB read to list 3 versions with 4 MB heads"


def test_the_sqlite_migration_keeps_every_version_and_stores_the_files_last(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'before.db'}", 1)
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    table = ModelVersion.__table__
    stored = {"version": "v1", "status": "STOPPED", "labels": ["cat", "dog"], "evaluation": {"f1": 0.9},
              "head": b"h" * 100_000, "backbone_fingerprint": "int8-0123", "backbone_int8": b"b" * 50_000,
              "warm_start": {"previous": "v0"}, "input_view": "letterbox", "dataset_digest": "d" * 64}
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "event_log_big_table_indexes")
        connection.execute(insert(table).values(**stored))
    db.upgrade(engine)
    with engine.connect() as connection:
        columns = [row[1] for row in connection.exec_driver_sql("PRAGMA table_info(model_versions)")]
        indexes = {row[1]: row[2] for row in connection.exec_driver_sql("PRAGMA index_list(model_versions)")}
        row = connection.execute(select(*(table.c[name] for name in stored))).one()
        connection.execute(insert(table).values(version="v2"))  # the defaults still apply
        again = connection.execute(select(table.c.id, table.c.input_view).where(table.c.version == "v2")).one()
    engine.dispose()
    assert columns[-2:] == ["head", "backbone_int8"] and sorted(columns) == sorted(table.c.keys())
    assert indexes == {"ix_model_versions_version": 1, "ix_model_versions_dataset_digest": 0}
    assert dict(row._mapping) == stored
    assert tuple(again) == (2, "crop")
