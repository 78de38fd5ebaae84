"""The detection log's CSV export cannot carry a formula into a spreadsheet."""

from __future__ import annotations

import csv
import io

import pytest

from labelloop.detection.views import spreadsheet_safe

pytestmark = pytest.mark.same_on_every_database  # pure functions, no database


@pytest.mark.parametrize(("value", "written"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-2+3", "'-2+3"), ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("\t=cmd", "'\t=cmd"), ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
    ("amazon_logo", "amazon_logo"), ("", ""), (-3.5, -3.5), (42, 42), (None, None),
])
def test_formula_cells_are_written_as_text(value: object, written: object) -> None:
    assert spreadsheet_safe(value) == written


def test_a_label_like_a_formula_reads_back_as_text() -> None:
    out = io.StringIO()
    csv.writer(out).writerow([spreadsheet_safe(cell) for cell in ("=1+1", "dog", 0.5)])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == ["'=1+1", "dog", "0.5"]
