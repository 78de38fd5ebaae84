"""The CLI's tables (``labelloop runs list``, ``models list``, ``loops list``, ``detections`` …) as a pipe or a narrow
terminal prints them (80 columns) and as a wide terminal does (200): ids and headings are never cut, short words
(statuses, labels, sources) never broken, no column is dropped, and the table is wider than the console only when
its ids need it."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from labelloop import cli

pytestmark = pytest.mark.same_on_every_database  # no database at all

RUNS = ([{"id": "training-check-4f1c2b7e9a0d", "branch": "Training", "status": "SUCCESS",
          "created_at": "2026-12-07T21:55:24.123456+00:00"},
         {"id": "object-created-0b9e1d2c3a4f5e6d", "branch": "Object Created", "status": "PENDING",
          "created_at": "2026-12-07T21:56:01.000001+00:00"}],
        ["id", "branch", "status", "created_at"])
MODELS = ([{"version": "v3", "status": "Training", "f1": None, "image_count": 1200,
            "created_at": "2026-12-07T21:55:24.123456+00:00",
            "status_message": "training on 1200 images of 12 labels, then evaluating on the held-out test set"},
           {"version": "v2", "status": "Deployed", "f1": 0.91234, "image_count": 800,
            "created_at": "2026-12-06T10:00:00+00:00", "status_message": "serving"}],
          ["version", "status", "f1", "image_count", "created_at", "status_message"])
LOOPS = ([{"name": "detection-9f8e7d6c5b4a3f2e1d0c", "source": "Human Sampling", "status": "InProgress",
           "object_key": "images_for_detection/2026/12/07/photo-0001.jpg", "answer_label": "cat"}],
         ["name", "source", "status", "object_key", "answer_label"])
# Ids alone wider than 80 columns: the table grows, and still drops no column.
DETECTIONS = ([{"id": 1234, "object_key": "images_for_detection/2026/12/07/some-long-camera-photo-name-0001.jpg",
                "label": "cat", "confidence": 0.93121, "model_version": "v12",
                "human_loop_name": "detection-9f8e7d6c5b4a3f2e1d0c", "human_label": "dog"}],
              ["id", "object_key", "label", "confidence", "model_version", "human_loop_name", "human_label"])
TABLES = {"runs": RUNS, "models": MODELS, "loops": LOOPS, "detections": DETECTIONS}


def printed(monkeypatch: pytest.MonkeyPatch, width: int, table: tuple[list[dict[str, Any]], list[str]]) -> list[str]:
    """The lines ``print_table`` writes on a console ``width`` columns wide that is not a terminal (a pipe)."""
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=width))
    cli.print_table(*table)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("name", TABLES)
def test_at_80_columns_ids_headings_and_short_words_stay_whole(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    rows, columns = TABLES[name]
    lines = printed(monkeypatch, 80, TABLES[name])
    heading = lines[1]
    assert all(f" {column} " in heading for column in columns), heading  # every column there, its heading whole
    for row in rows:
        for column in columns:
            cell = cli._cell(row[column])
            whole = [cell] if column in cli.ID_COLUMNS else [w for w in cell.split() if len(w) <= cli.WHOLE_WORD]
            for word in whole:
                assert any(f" {word} " in line for line in lines), f"{word!r} broken:\n" + "\n".join(lines)
    ids = sum(max(len(cli._cell(row[c])) for row in rows) + 3 for c in columns if c in cli.ID_COLUMNS)
    if ids < 60:  # room for the rest: the table fits the 80 columns
        assert max(len(line) for line in lines) <= 80, "\n".join(lines)


@pytest.mark.parametrize("name", TABLES)
def test_at_200_columns_each_row_is_one_line(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    rows, columns = TABLES[name]
    lines = printed(monkeypatch, 200, TABLES[name])
    assert len(lines) == 4 + len(rows)  # top border, headings, rule, one line per row, bottom border
    for line, row in zip(lines[3:-1], rows, strict=True):
        assert [cell.strip() for cell in line.strip("│").split("│")] == [cli._cell(row[c]) for c in columns]
