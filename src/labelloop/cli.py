"""The ``labelloop`` command: run the server or workers, and operate a server from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.segment import Segments
from rich.table import Column, Table
from rich.text import Text

from labelloop.client import Client, ClientError, save_token
from labelloop.config import configure, get_settings

app = typer.Typer(help="labelloop: continuous improvement of custom image-label models with humans in the loop.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
params_app = typer.Typer(help="Read and change parameters.", no_args_is_help=True)
objects_app = typer.Typer(help="List, download and delete objects in the bucket.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect workflow runs.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users (admin).", no_args_is_help=True)
training_app = typer.Typer(help="Training.", no_args_is_help=True)
app.add_typer(params_app, name="params")
app.add_typer(objects_app, name="objects")
app.add_typer(runs_app, name="runs")
app.add_typer(users_app, name="users")
app.add_typer(training_app, name="training")
models_app = typer.Typer(help="Model versions: list, show, suspects, deploy (or roll back), stop, export.",
                         no_args_is_help=True)
loops_app = typer.Typer(help="Human loops: list (any status), answer, undo, correct, audit, stop; the task template.",
                        no_args_is_help=True)
sampling_app = typer.Typer(help="Human sampling: run now, agreement summary.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(loops_app, name="loops")
app.add_typer(sampling_app, name="sampling")


def make_console(**options: Any) -> Console:
    """A console of the CLI: ``:name:`` in a key, a label or a message stays as it is (rich's default prints an
    emoji for it, in tables and messages alike)."""
    return Console(emoji=False, **options)


console = make_console()
errors = make_console(stderr=True)

HomeOption = Annotated[Path | None, typer.Option("--home", help="Data folder (env LABELLOOP_HOME)")]
ServerOption = Annotated[str | None, typer.Option("--server", help="Server address (env LABELLOOP_SERVER)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]


def _client(server: str | None) -> Client:
    return Client(configure(server=server))


def say(message: str, *values: Any, err: bool = False) -> None:
    """Print a message on one line, on standard output (standard error with ``err``): ``message`` is rich markup
    whose ``{}`` fields ``values`` fill as plain text (:func:`filled`). Every message of the CLI is printed so:
    never wrapped by rich, whose wrapping at a pipe's 80 columns put a line break before an id that did not fit
    (``run parameter-…-v2``) or inside a key with spaces, so that a script or ``grep`` missed it (a terminal folds
    a long line only for display)."""
    (errors if err else console).print(filled(message, values), soft_wrap=True)


FIELD = "\x00"  # where a value goes in a message's markup while it is parsed (no id or message holds a NUL)


def filled(message: str, values: tuple[Any, ...]) -> Text:
    """The rich markup ``message`` with its ``{}`` fields filled by ``values`` as they are, each in the style the
    markup gives its field: a value is never read as markup (which dropped ``[copy]`` from a key, and stopped a
    command at ``[/b]`` after its work was done) nor as an emoji code."""
    if message.count("{}") != len(values):
        raise ValueError(f"{message!r} has {message.count('{}')} fields for {len(values)} values")
    marked = Text.from_markup(message.replace("{}", FIELD), emoji=False)
    text, start = Text(), 0
    for value in values:
        at = marked.plain.index(FIELD, start)
        text.append_text(marked[start:at])
        piece = Text(str(value))
        for span in marked.spans:
            if span.start <= at < span.end:
                piece.stylize(span.style)
        text.append_text(piece)
        start = at + 1
    text.append_text(marked[start:])
    return text


def _fail(message: str) -> None:
    say("[red]error:[/red] {}", message, err=True)
    raise typer.Exit(1)


def _write(path: Path, data: bytes) -> None:
    """Write a download to the file ``path``; one that cannot be written (no such folder, a folder, no permission,
    a full disk) stops the command with why, not a traceback."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")


def _call(server: str | None, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return _client(server).request(method, path, **kwargs)
    except ClientError as exc:
        _fail(str(exc))


# Columns holding ids a later command needs whole (run ids, parameter names, keys, versions, loop names).
ID_COLUMNS = {"id", "name", "key", "object_key", "run_id", "version", "human_loop_name", "username", "file"}
CELL_PADDING = 3  # rich's border and padding per column
WHOLE_WORD = 20  # a word of a table cell up to this long is never broken across lines (a longer one is folded)
FEW_TEST_IMAGES = 30  # below this many test images an F1 is marked as a weak figure (as on the pages)


def _print(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json or columns is None or not isinstance(data, list):
        console.print_json(json.dumps(data, default=str)) if not as_json else print(json.dumps(data, default=str))
        return
    print_table([{c: row.get(c) for c in columns} for row in data], columns)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A table that never cuts an id nor a heading, and wraps other cells between words (:func:`column_widths`);
    printed wider than the terminal (or the 80 columns of a pipe) only when its ids and headings need it."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    room = console.width - CELL_PADDING * len(columns) - 1
    widths = column_widths(columns, cells, room)
    table = Table(*[Column(c, width=widths[i], no_wrap=c in ID_COLUMNS, overflow="fold")
                    for i, c in enumerate(columns)])
    for line in cells:
        table.add_row(*(escape(cell) for cell in line))
    # Rendered at its own width: console.print() would squeeze it into the console's (then columns vanish).
    options = console.options.update_width(max(console.width, sum(widths) + CELL_PADDING * len(columns) + 1))
    console.print(Segments(console.render(table, options)), crop=False)


def column_widths(columns: list[str], cells: list[list[str]], room: int) -> list[int]:
    """The width of each column of a table whose cells may take ``room`` characters in all: each column its widest
    cell when they all fit. Else each column at least as wide as its heading and its longest word of at most
    :data:`WHOLE_WORD` characters (a status, a label, a number; a longer word, such as a time, is folded where the
    column ends), an id column as its widest id; the room left goes to the columns that then come closest to their
    widest cell first (the fewest wrap)."""
    widest = [max([cell_len(c), *(_widest_line(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    if sum(widest) <= room:
        return widest
    least = [widest[i] if c in ID_COLUMNS else
             max([cell_len(c), *(_widest_short_word(line[i]) for line in cells)])
             for i, c in enumerate(columns)]
    widths, left = list(least), room - sum(least)
    for i in sorted(range(len(columns)), key=lambda i: widest[i] - least[i]):
        given = max(0, min(left, widest[i] - least[i]))
        widths[i] += given
        left -= given
    return widths


def _widest_line(cell: str) -> int:
    return max(cell_len(line) for line in cell.split("\n"))


def _widest_short_word(cell: str) -> int:
    """The width of the widest word of ``cell`` that may not be broken (one of at most :data:`WHOLE_WORD`)."""
    return max((width for word in cell.split() if (width := cell_len(word)) <= WHOLE_WORD), default=0)


def _cell(value: Any) -> str:
    """A table cell: numbers with four significant digits, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ── server processes ─────────────────────────────────────────────────────────


QueuesOption = Annotated[str | None, typer.Option(
    "--queues", help="Queues to take runs from, comma-separated (object-events, training, parameters, sampling); "
    "default all; '' or 'none': none (env LABELLOOP_QUEUES)")]


@app.command()
def serve(home: HomeOption = None, host: Annotated[str | None, typer.Option(help="Address to bind")] = None,
          port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
          watch: Annotated[Path | None, typer.Option(help="Drop folder: files put here go into the bucket")] = None,
          queues: QueuesOption = None,
          ) -> None:
    """Run the web UI, the API and the workers in one process."""
    from labelloop import app as application  # the server stack loads only here: client commands stay quick

    settings = configure(home=home, host=host, port=port, watch_folder=watch, queues=queues)
    if "public_url" not in settings.model_fields_set:
        # Links in notifications must reach this server, not the default port.
        reachable = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        if ":" in reachable:
            reachable = f"[{reachable}]"
        settings = configure(home=home, host=host, port=port, watch_folder=watch, queues=queues,
                             public_url=f"http://{reachable}:{settings.port}")
    application.serve(settings)


@app.command()
def worker(home: HomeOption = None, queues: QueuesOption = None) -> None:
    """Run workers only (workflows, schedules, queues) against the same home or database.

    Start as many as the work needs, on this machine or others sharing the PostgreSQL database and the S3
    bucket: they share the queues, and the runs of one that dies are taken over by the others.
    """
    from labelloop import app as application  # the server stack loads only here: client commands stay quick

    application.work(configure(home=home, queues=queues))


# ── client commands ──────────────────────────────────────────────────────────


@app.command()
def login(username: Annotated[str, typer.Option(prompt=True)],
          password: Annotated[str, typer.Option(prompt=True, hide_input=True)],
          server: ServerOption = None) -> None:
    """Sign in and remember the token for this server."""
    client = _client(server)
    try:
        answer = client.login(username, password)
    except ClientError as exc:
        _fail(str(exc))
    path = save_token(client.server, answer["access_token"])
    say("Signed in to {} as {} ({}); token saved in {}", client.server, username, answer["role"], path)
    if answer.get("must_change_password"):
        say("[yellow]Your password is temporary: change it with labelloop passwd --current <temporary> --new "
            "<yours>, then sign in again with labelloop login[/yellow]")


@app.command()
def passwd(current: Annotated[str, typer.Option(prompt=True, hide_input=True)],
           new: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
           server: ServerOption = None) -> None:
    """Change your password (then sign in again)."""
    _call(server, "POST", "/auth/password", json={"current_password": current, "new_password": new})
    say("Password changed; sign in again with labelloop login")


def upload_plan(paths: list[Path], prefix: str, missing: list[Path] | None = None) -> list[tuple[Path, str]]:
    """The (file, key) pairs to upload: a folder keeps its own name under ``prefix`` (its label).

    A path that is neither a file nor a folder stops the command, unless ``missing`` is given: then it is
    added there and the other paths are still planned.
    """
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    plan: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                relative = file.relative_to(path)
                if not any(part.startswith(".") for part in relative.parts):
                    plan.append((file, f"{prefix}{path.resolve().name}/{relative.as_posix()}"))
        elif path.is_file():
            plan.append((path, f"{prefix}{path.name}"))
        elif missing is not None:
            missing.append(path)
        else:
            _fail(f"{path} is neither a file nor a folder")
    return plan


@app.command()
def upload(paths: Annotated[list[Path], typer.Argument(help="Files or folders")],
           to: Annotated[str, typer.Option("--to", help="Folder in the bucket")] = "images_for_detection/",
           wait: Annotated[int | None, typer.Option(help="Seconds to wait for the detections of images uploaded "
                                                         "for detection (default 30; with --json 0: no wait)")] = None,
           server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Upload files or whole folders (a folder under images_labeled_by_folder/ keeps its name as the label).

    Lists each file's outcome: stored, unchanged (the same bytes were there), or refused and why (under
    images_for_detection/ and images_labeled_by_folder/ only images are taken); for images uploaded for
    detection, the label and confidence once detected. Every file that can be uploaded is; the command exits
    with status 1 when any could not be.
    """
    missing: list[Path] = []
    plan = upload_plan(paths, to, missing)
    client = _client(server)
    outcomes: list[dict[str, Any]] = [{"file": str(path), "key": "", "outcome": "refused",
                                       "reason": "no such file or folder"} for path in missing]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=errors, disable=as_json) as progress:
        task = progress.add_task("Uploading", total=len(plan))
        for file, key in plan:
            outcomes.append(_upload_one(client, file, key))
            progress.advance(task)
    wait = (0 if as_json else 30) if wait is None else wait
    if wait > 0:
        _wait_for_detections(client, outcomes, wait, quiet=as_json)
    stored = [o for o in outcomes if o["outcome"] != "refused"]
    if as_json:
        print(json.dumps({"stored": [o["object"] for o in stored],
                          "failed": [{"file": o["file"], "key": o["key"], "error": o["reason"]}
                                     for o in outcomes if o["outcome"] == "refused"],
                          "outcomes": [{k: v for k, v in o.items() if k != "object"} for o in outcomes]},
                         default=str))
    else:
        say("Uploaded {} of {} file(s) to {}", len(stored), len(plan) + len(missing), to)
        for outcome in outcomes:  # one line each, the key whole: a script or a person finds it as it is
            if outcome["outcome"] == "refused":  # on stderr, naming the file as it is (repr: no control chars)
                target = f" → {outcome['key']!r}" if outcome["key"] else ""
                say("[red]failed[/red] {}{}: {}", repr(outcome["file"]), target, _outcome_words(outcome), err=True)
                continue
            label = "[green]stored[/green]   " if outcome["outcome"] == "stored" else "unchanged"
            say(label + " {}: {}", outcome["key"], _outcome_words(outcome))
        if any(o.get("unchanged") and o["key"].startswith("images_for_detection/") for o in outcomes):
            say("Unchanged images are not detected again; to detect them with the serving version: "
                "labelloop redetect KEY…")
    if len(stored) < len(outcomes):
        raise typer.Exit(1)


def _upload_one(client: Client, file: Path, key: str) -> dict[str, Any]:
    """Upload one file: its outcome (stored, unchanged or refused with the reason) and the stored object."""
    try:
        stored = client.request("PUT", f"/objects/{quote(key, safe='/')}", content=file.read_bytes())
    except (ClientError, OSError) as exc:
        return {"file": str(file), "key": key, "outcome": "refused", "reason": str(exc)}
    return {"file": str(file), "key": key, "outcome": "unchanged" if stored.get("unchanged") else "stored",
            "unchanged": bool(stored.get("unchanged")), "run_id": stored.get("run_id"), "object": stored}


def _wait_for_detections(client: Client, outcomes: list[dict[str, Any]], seconds: float, quiet: bool) -> None:
    """Fill in each detection upload's result (label, confidence, human loop) as its run finishes."""
    import time  # only this command waits

    waiting = [o for o in outcomes if o.get("run_id") and o["key"].startswith("images_for_detection/")]
    deadline = time.monotonic() + seconds
    with Progress(TextColumn("Detecting"), BarColumn(), MofNCompleteColumn(), console=errors,
                  disable=quiet or not waiting) as progress:
        task = progress.add_task("Detecting", total=len(waiting))
        while waiting and time.monotonic() < deadline:
            for outcome in list(waiting):
                try:
                    run = client.request("GET", f"/runs/{quote(outcome['run_id'])}")
                except ClientError:
                    continue
                if run["status"] in ("SUCCESS", "ERROR", "CANCELLED"):
                    outcome["detection"] = _detection_of(run, outcome["key"])
                    waiting.remove(outcome)
                    progress.advance(task)
            if waiting:
                time.sleep(0.5)
    for outcome in waiting:
        outcome["detection"] = {"status": "PENDING", "words": f"still detecting after {seconds:g} s: see "
                                "labelloop detections"}


def _detection_of(run: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """What a detection run found (for the upload at ``key``: a run detects the uploads that arrived together,
    its output has one summary per key), in a few words and as fields."""
    output = run.get("output") if isinstance(run.get("output"), dict) else {}
    if key in (output.get("keys") or []):
        output = output["detections"][output["keys"].index(key)]
    if run["status"] != "SUCCESS":
        return {"status": run["status"], "words": f"the run ended {run['status']}: {run.get('error')}"}
    status = output.get("status")
    if status == "DETECTED":
        loop = f", human loop {output['human_loop']}" if output.get("human_loop") else ""
        words = f"{output['label']} {output['confidence']:.1f} (model {output['model_version']}{loop})"
    elif status == "WAITING_FOR_MODEL":
        words = "waiting for a model version to serve; detected as soon as one does"
    else:
        words = "not detected (see labelloop detections for the reason)"
    return {"status": status, "label": output.get("label"), "confidence": output.get("confidence"),
            "model_version": output.get("model_version"), "human_loop": output.get("human_loop"), "words": words}


def _outcome_words(outcome: dict[str, Any]) -> str:
    words = {"stored": "stored", "unchanged": "the same bytes were already stored, nothing changed",
             "refused": str(outcome.get("reason"))}[outcome["outcome"]]
    detection = outcome.get("detection")
    return f"{words} · {detection['words']}" if detection else words


@params_app.command("list")
def params_list(server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Every parameter with its value and allowed range."""
    _print(_call(server, "GET", "/parameters"), as_json, ["name", "value", "allowed", "version", "modified_by"])


@params_app.command("get")
def params_get(name: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """One parameter."""
    data = _call(server, "GET", f"/parameters/{quote(name)}")
    print(json.dumps(data, default=str)) if as_json else say("{}", data["value"])


@params_app.command("set")
def params_set(name: str, value: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Change a parameter (validated; starts the run that applies it)."""
    data = _call(server, "PUT", f"/parameters/{quote(name)}", json={"value": value})
    if as_json:
        print(json.dumps(data, default=str))
    elif data["changed"]:
        say("{} = {} (version {}); run {}", name, data["parameter"]["value"], data["parameter"]["version"],
            data["run_id"])
    else:
        say("{} is already {}; nothing changed", name, data["parameter"]["value"])


@params_app.command("history")
def params_history(name: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Changes of one parameter, newest first."""
    _print(_call(server, "GET", f"/parameters/{quote(name)}/history"), as_json,
           ["version", "old_value", "new_value", "changed_by", "changed_at"])


@objects_app.command("ls")
def objects_ls(prefix: Annotated[str, typer.Argument()] = "", server: ServerOption = None,
               as_json: JsonOption = False) -> None:
    """Objects under a prefix."""
    _print(_call(server, "GET", "/objects", params={"prefix": prefix}), as_json,
           ["key", "size", "etag", "last_modified"])


@objects_app.command("get")
def objects_get(key: str, output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
                server: ServerOption = None) -> None:
    """Download an object (to a file, or to standard output)."""
    data = _call(server, "GET", f"/objects/{quote(key, safe='/')}")
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        _write(output, data)


@objects_app.command("rm")
def objects_rm(key: str, server: ServerOption = None) -> None:
    """Delete an object."""
    _call(server, "DELETE", f"/objects/{quote(key, safe='/')}")
    say("Deleted {}", key)


@runs_app.command("list")
def runs_list(branch: str | None = None, status: str | None = None, limit: int = 50,
              server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Workflow runs, newest first."""
    query = {k: v for k, v in {"branch": branch, "status": status, "limit": limit}.items() if v is not None}
    _print(_call(server, "GET", "/runs", params=query), as_json, ["id", "branch", "status", "created_at"])


@runs_app.command("show")
def runs_show(run_id: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """One run with its steps."""
    run = _call(server, "GET", f"/runs/{quote(run_id)}")
    if as_json:
        print(json.dumps(run, default=str))
        return
    say("[bold]{}[/bold] {} — {} (started {})", run["id"], run["branch"], run["status"], run["created_at"])
    _print(run["steps"], False, ["step_id", "name", "duration_ms", "error", "output"])


@training_app.command("check")
def training_check(wait: Annotated[bool, typer.Option(help="Wait for the outcome: trained and deployed, or why "
                                                           "not")] = False,
                   server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Run the training check now (with --wait: and print what came of it)."""
    data = _call(server, "POST", "/training/check")
    if not wait:
        print(json.dumps(data)) if as_json else say("Training check started: run {}", data["run_id"])
        return
    if not as_json:
        say("Training check started: run {}; waiting for its outcome…", data["run_id"])
    run = _wait_run(server, data["run_id"])
    outcome = training_outcome(run)
    if outcome.get("version") and outcome.get("trained"):
        model = _call(server, "GET", f"/models/{quote(outcome['version'])}")
        outcome["words"] = outcome["words"].replace("on its test split", f"on its test split ({test_size(model)})")
    if as_json:
        print(json.dumps({"run_id": data["run_id"], "status": run["status"], **outcome}, default=str))
    else:
        say("{}", outcome["words"])
    if run["status"] != "SUCCESS":
        raise typer.Exit(1)


def test_size(model: dict[str, Any]) -> str:
    """An F1's test-set size and 95 % interval, in words ("3 test images, 95 % interval 0.21–1.00; few")."""
    evaluation = model.get("evaluation") or {}
    words = f"{model.get('test_images')} test image(s)"
    interval = evaluation.get("f1_interval")
    if interval:
        words += f", 95 % interval {interval[0]:.2f}–{interval[1]:.2f}"
    if (model.get("test_images") or 0) < FEW_TEST_IMAGES:
        words += "; too few to trust the figure: add labeled images"
    return words


def training_outcome(run: dict[str, Any]) -> dict[str, Any]:
    """What a training check came to: no training and why, or the version trained, its F1 and the gate."""
    output = run.get("output") if isinstance(run.get("output"), dict) else {}
    if run["status"] != "SUCCESS":
        return {"trained": False, "words": f"The training check ended {run['status']}: {run.get('error')}"}
    if not output.get("train"):
        return {"trained": False, "words": f"No training: {output.get('reason')}."}
    version, training = output.get("version"), output.get("training") or {}
    if not training.get("trained"):
        return {"trained": False, "version": version, "words": f"Training {version} failed: {training.get('reason')}"}
    gate = output.get("gate") or {}
    f1 = training.get("f1")
    words = f"Trained {version}: F1 {f1:.3f} on its test split" if f1 is not None else f"Trained {version}"
    if gate.get("passed"):
        words += f"; the F1 gate passed ({gate.get('passed_on')})"
        words += f"; {version} is RUNNING." if output.get("deployment") else "."
    else:
        estimate = gate.get("production_estimate") or {}
        estimated = (f"production estimate {estimate['f1']:.3f}" if estimate.get("f1") is not None
                     else f"no production estimate ({estimate.get('reason', 'no human answers yet')})")
        words += (f"; the F1 gate refused it (below Minimum-F1-Score {gate.get('minimum_f1')}; {estimated}). "
                  f"It is kept, not deployed; the serving version keeps serving (labelloop models show {version}).")
    return {"trained": True, "version": version, "f1": f1, "gate_passed": bool(gate.get("passed")),
            "deployed": "deployment" in output, "words": words}


@app.command()
def notifications(limit: int = 20, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """The newest notifications."""
    _print(_call(server, "GET", "/notifications", params={"limit": limit}), as_json,
           ["created_at", "event_type", "subject"])


@users_app.command("create")
def users_create(username: str, role: Annotated[str, typer.Option(help="admin, operator, worker or consumer")],
                 email: str | None = None, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Create a user; prints the temporary password once."""
    data = _call(server, "POST", "/users", json={"username": username, "role": role, "email": email})
    if as_json:
        print(json.dumps(data, default=str))
    else:
        say("Created {} ({}); temporary password: {}", username, role, data["temporary_password"])


@users_app.command("list")
def users_list(server: ServerOption = None, as_json: JsonOption = False) -> None:
    """All users."""
    _print(_call(server, "GET", "/users"), as_json, ["username", "role", "disabled", "must_change_password"])


@models_app.command("list")
def models_list(server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Model versions, newest first."""
    _print(_call(server, "GET", "/models"), as_json,
           ["version", "status", "f1", "image_count", "created_at", "status_message"])


@models_app.command("show")
def models_show(version: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """One version with its per-label metrics."""
    model = _call(server, "GET", f"/models/{quote(version)}")
    if as_json:
        print(json.dumps(model, default=str))
        return
    f1 = f"{model['f1']:.3f} ({test_size(model)})" if model.get("f1") is not None else "—"
    say("[bold]{}[/bold] {} — F1 {}; {} train / {} test images", model["version"], model["status"], f1,
        model["train_images"], model["test_images"])
    _print((model.get("evaluation") or {}).get("per_label", []), False,
           ["label", "precision", "recall", "f1", "support", "threshold"])


@models_app.command("suspects")
def models_suspects(version: str, send: Annotated[bool, typer.Option(
                        "--send", help='Send them to review as "Label Audit" loops')] = False,
                    server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Training images whose folder label the version's training confidently disagreed with; --send opens
    a "Label Audit" loop for each one still stored."""
    if send:
        sent = _call(server, "POST", f"/models/{quote(version)}/label-audit")
        if as_json:
            print(json.dumps(sent, default=str))
            return
        say("{}: {} of {} suspect(s) sent to review ({} already in review, {} no longer stored)", version,
            len(sent["opened"]), sent["suspects"], sent["already_open"], len(sent["no_longer_stored"]))
        return
    _print(_call(server, "GET", f"/models/{quote(version)}/suspect-labels"), as_json,
           ["key", "label", "predicted", "confidence"])


def _wait_run(server: str | None, run_id: str) -> dict[str, Any]:
    import time

    while True:
        run = _call(server, "GET", f"/runs/{quote(run_id)}")
        if run["status"] in ("SUCCESS", "ERROR", "CANCELLED"):
            return run
        time.sleep(0.5)


@models_app.command("deploy")
def models_deploy(version: str, wait: Annotated[bool, typer.Option(help="Wait until it serves")] = True,
                  server: ServerOption = None) -> None:
    """Deploy a trained version blue-green (also how you roll back to an earlier one)."""
    run_id = _call(server, "POST", f"/models/{quote(version)}/deploy")["run_id"]
    say("Deploying {}: run {}", version, run_id)
    if wait:
        run = _wait_run(server, run_id)
        if run["status"] != "SUCCESS":
            _fail(f"deployment {run['status']}: {run['error']}")
        say("{} is RUNNING", version)


@models_app.command("stop")
def models_stop(version: str, server: ServerOption = None) -> None:
    """Stop serving a version."""
    run_id = _call(server, "POST", f"/models/{quote(version)}/stop")["run_id"]
    run = _wait_run(server, run_id)
    if run["status"] == "SUCCESS":
        say("{} stopped", version)
    else:
        say("stop {}: {}", run["status"], run["error"])


@models_app.command("export")
def models_export(version: str, output: Annotated[Path, typer.Option("-o", "--output")],
                  server: ServerOption = None) -> None:
    """Download the whole model (backbone + head) as one ONNX file."""
    _write(output, _call(server, "GET", f"/models/{quote(version)}/export", params={"format": "onnx"}))
    say("Wrote {} ({} bytes)", output, f"{output.stat().st_size:,}")


@app.command()
def detect(files: Annotated[list[Path], typer.Argument(help="Image files")], server: ServerOption = None,
           as_json: JsonOption = False) -> None:
    """Detect labels in images with the serving model version (synchronous, nothing is stored)."""
    client, results, failed = _client(server), [], False
    for file in files:
        try:
            answer = client.request("POST", "/detect", files={"file": (file.name, file.read_bytes())})
            results.append({"file": str(file), **answer})
        except (ClientError, OSError) as exc:
            results.append({"file": str(file), "error": str(exc)})
            failed = True
    if as_json:
        print(json.dumps(results))
    else:
        for result in results:
            if "error" in result:
                say("[red]{}[/red]: {}", result["file"], result["error"], err=True)
                continue
            best = ", ".join(f"{x['name']} {x['confidence']:.1f}" for x in result["labels"][:3])
            say("{}: {} (model {})", result["file"], best, result["model_version"])
    if failed:
        raise typer.Exit(1)


@app.command()
def redetect(keys: Annotated[list[str], typer.Argument(help="Stored images or folders (ending in /) under "
                                                          "images_for_detection/")],
             wait: Annotated[bool, typer.Option(help="Wait for the new detections and list them")] = True,
             server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Detect stored images again with the serving version: each gets a new detection event that points to its
    earlier one (uploading the same bytes again does not detect them again)."""
    started = _call(server, "POST", "/detections/redetect", json={"keys": keys})
    if not wait:
        print(json.dumps(started)) if as_json else say("Re-detecting {} image(s): run {}", started["images"],
                                                       started["run_id"])
        return
    parent = _wait_run(server, started["run_id"])
    if parent["status"] != "SUCCESS":
        _fail(f"re-detection {parent['status']}: {parent['error']}")
    output = parent["output"]
    results = []
    for run_id in output.get("runs", []):
        run = _wait_run(server, run_id)
        found = _detection_of(run)
        results.append({"key": (run.get("output") or {}).get("key", ""), "run_id": run_id, **found})
    results += [{"key": item["key"], "status": "SKIPPED", "words": f"skipped: {item['reason']}"}
                for item in output.get("skipped", [])]
    if as_json:
        print(json.dumps({"run_id": started["run_id"], "model_version": output.get("model_version"),
                          "results": results}, default=str))
        return
    say("Re-detected {} image(s) with {}", len(output.get("runs", [])), output.get("model_version"))
    print_table([{"key": r["key"], "outcome": r["words"]} for r in results], ["key", "outcome"])


@app.command()
def detections(label: str | None = None, sampled: bool | None = None, limit: int = 50,
               csv: Annotated[Path | None, typer.Option(help="Write the log as CSV to this file")] = None,
               server: ServerOption = None, as_json: JsonOption = False) -> None:
    """The detection event log, newest first."""
    query = {k: v for k, v in {"label": label, "sampled": sampled, "limit": limit}.items() if v is not None}
    if csv is not None:
        _write(csv, _call(server, "GET", "/detections/export.csv", params=query))
        say("Wrote {}", csv)
        return
    _print(_call(server, "GET", "/detections", params=query), as_json,
           ["id", "object_key", "label", "confidence", "model_version", "human_loop_name", "human_label"])


LOOP_STATUSES = ("InProgress", "Completed", "Stopped", "Failed")


StatusOption = Annotated[str, typer.Option(help="InProgress, Completed, Stopped, Failed, or all")]
SourceOption = Annotated[str | None, typer.Option(help='"Detection", "Human Sampling" or "Label Audit"')]


@loops_app.command("list")
def loops_list(status: StatusOption = "InProgress", source: SourceOption = None, server: ServerOption = None,
               as_json: JsonOption = False) -> None:
    """Human loops (default: the open ones; --status all: every loop whatever its status)."""
    query: dict[str, str] = {}
    if status.lower() != "all":
        named = {s.lower(): s for s in LOOP_STATUSES}.get(status.lower())
        if named is None:
            _fail(f"unknown status {status!r}: use one of {', '.join(LOOP_STATUSES)} or all")
        query["status"] = named
    if source:
        query["source"] = source
    _print(_call(server, "GET", "/human-loops", params=query), as_json,
           ["name", "source", "status", "object_key", "answer_label"])


@loops_app.command("stop")
def loops_stop(name: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Stop an open human loop (its task leaves the review queue)."""
    stopped = _call(server, "POST", f"/human-loops/{quote(name)}/stop")
    print(json.dumps(stopped, default=str)) if as_json else say("{}: {}", name, stopped.get("status"))


@loops_app.command("answer")
def loops_answer(name: str, label: str, server: ServerOption = None) -> None:
    """Answer a human loop with a label or "None of the Above"."""
    answer = _call(server, "POST", f"/human-loops/{quote(name)}/answer", json={"label": label})
    say("{}: {} (run {})", name, answer["answer_label"], answer["run_id"])


@loops_app.command("undo")
def loops_undo(server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Take back your last answer while its undo window lasts (the task is yours again)."""
    loop = _call(server, "POST", "/human-loops/undo")
    print(json.dumps(loop, default=str)) if as_json else say("{}: answer taken back", loop["name"])


@loops_app.command("correct")
def loops_correct(name: str, label: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Correct an applied answer (operators): the training copy moves to LABEL, or goes for None of the Above."""
    corrected = _call(server, "POST", f"/human-loops/{quote(name)}/correct", json={"label": label})
    if as_json:
        print(json.dumps(corrected, default=str))
        return
    say("{}: corrected to {} (run {})", name, label, corrected["run_id"])


@loops_app.command("audit")
def loops_audit(keys: Annotated[list[str], typer.Argument(help="Training images (images_labeled_by_folder/…)")],
                server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Send training images back to review as "Label Audit" loops; the answer moves or keeps each image."""
    _print(_call(server, "POST", "/human-loops/label-audit", json={"keys": keys}), as_json,
           ["name", "source", "status", "object_key"])


@loops_app.command("template")
def loops_template(extra_label: Annotated[list[str] | None, typer.Option(help="Set the extra labels")] = None,
                   server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Show the task template, or set its extra labels."""
    if extra_label:
        data = _call(server, "PUT", "/task-template", json={"extra_labels": extra_label})
    else:
        data = _call(server, "GET", "/task-template")
    print(json.dumps(data, default=str)) if as_json else console.print_json(json.dumps(data, default=str))


@sampling_app.command("run")
def sampling_run(server: ServerOption = None) -> None:
    """Run human sampling now."""
    run = _wait_run(server, _call(server, "POST", "/sampling/run")["run_id"])
    output = run["output"]
    say("Sampled {} detection(s); opened {} loop(s)", len(output["sampled"]), len(output["opened"]))


@sampling_app.command("summary")
def sampling_summary(server: ServerOption = None) -> None:
    """Agreement of sampled answers with the model."""
    console.print_json(json.dumps(_call(server, "GET", "/sampling/summary")))


def main() -> None:
    """Entry point."""
    get_settings()
    app()
