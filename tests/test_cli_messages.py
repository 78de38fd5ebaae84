"""The CLI's messages (``params set``'s "run parameter-…-v2", ``objects rm``'s "Deleted KEY", every error …) as a pipe
or a narrow terminal prints them (80 columns): each message is one line whatever its length, its ids whole, and a
value is printed as it is (no markup, no emoji read into a key). The commands against a real server:
test_cli.py."""

from __future__ import annotations

import ast
import inspect
import io

import pytest
from rich.text import Text

from labelloop import cli

pytestmark = pytest.mark.same_on_every_database  # no database at all

RUN = "parameter-Automatic-Human-Sampling-Frequency-v12"
KEY = "images_for_detection/holiday 2026/beach [copy] :cat: [/b] IMG_0001 (edited).jpg"
MESSAGES = [
    (("{} = {} (version {}); run {}", "Automatic-Human-Sampling-Frequency", "719", 12, RUN),
     f"Automatic-Human-Sampling-Frequency = 719 (version 12); run {RUN}"),
    (("Deleted {}", KEY), f"Deleted {KEY}"),
    (("[red]error:[/red] {}", f"not found: no object at {KEY!r}"), f"error: not found: no object at {KEY!r}"),
    (("[bold]{}[/bold] {} — {} (started {})", "object-created-0b9e1d2c3a4f5e6d", "Object Created", "SUCCESS",
      "2026-12-07T21:56:01.000001+00:00"),
     "object-created-0b9e1d2c3a4f5e6d Object Created — SUCCESS (started 2026-12-07T21:56:01.000001+00:00)"),
    (("[green]stored[/green]    {}: {}", KEY, "cat 97.5 (model v3, human loop detection-9f8e7d6c5b4a3f2e1d0c)"),
     f"stored    {KEY}: cat 97.5 (model v3, human loop detection-9f8e7d6c5b4a3f2e1d0c)"),
    (("Wrote {}", "/tmp/exports/a folder\\"), "Wrote /tmp/exports/a folder\\"),  # a value's last backslash, once
]


def said(monkeypatch: pytest.MonkeyPatch, width: int, *args: object) -> str:
    """What ``say(*args)`` writes on a console ``width`` columns wide that is not a terminal (a pipe)."""
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", cli.make_console(file=out, width=width))
    cli.say(*args)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(("args", "line"), MESSAGES, ids=[args[0] for args, _ in MESSAGES])
def test_at_80_columns_a_message_is_one_line_with_its_values_as_they_are(monkeypatch: pytest.MonkeyPatch,
                                                                         args: tuple[object, ...],
                                                                         line: str) -> None:
    assert len(line) > 80 or "\\" in line
    assert said(monkeypatch, 80, *args) == line + "\n"
    assert said(monkeypatch, 200, *args) == line + "\n"


def test_the_markup_of_a_message_styles_its_fields_and_never_a_value() -> None:
    text = cli.filled("[bold]{}[/bold] {} ([red]{}[/red])", ("run-[red]1", "[/b]", ":cat:"))
    assert text.plain == "run-[red]1 [/b] (:cat:)"
    styles = {text.plain[span.start:span.end]: str(span.style) for span in text.spans}
    assert styles == {"run-[red]1": "bold", ":cat:": "red"}
    assert isinstance(text, Text)
    with pytest.raises(ValueError, match="2 fields for 1 values"):
        cli.filled("{} and {}", ("one",))


def test_a_table_prints_its_cells_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emoji codes and brackets in a key or a label stay in a table too (its ids whole: test_cli_tables.py)."""
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", cli.make_console(file=out, width=200))
    cli.print_table([{"key": KEY, "label": ":dog: [b]"}], ["key", "label"])
    assert f" {KEY} " in out.getvalue() and " :dog: [b] " in out.getvalue()


def test_every_message_of_the_cli_is_said() -> None:
    """One way for every message: the consoles print only in ``say`` (messages) and ``print_table`` (tables);
    JSON goes through ``print_json`` or plain ``print``; no message is an f-string (its values would be read as
    markup: each goes in a field)."""
    tree = ast.parse(inspect.getsource(cli))
    printing: dict[str, list[str]] = {}
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        for call in ast.walk(function):
            if not isinstance(call, ast.Call):
                continue
            called = call.func
            if isinstance(called, ast.Attribute) and called.attr == "print" and \
                    {"console", "errors"} & {node.id for node in ast.walk(called.value) if isinstance(node, ast.Name)}:
                printing.setdefault(function.name, []).append(ast.unparse(call)[:60])
            if isinstance(called, ast.Name) and called.id == "say":
                assert not any(isinstance(node, ast.JoinedStr) for node in ast.walk(call.args[0])), (
                    f"{function.name}: {ast.unparse(call)[:100]}")
    assert sorted(printing) == ["print_table", "say"], printing
