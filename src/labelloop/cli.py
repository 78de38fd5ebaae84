"""The ``labelloop`` command: run the server or workers, and operate a server from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from labelloop.client import Client, ClientError, save_token
from labelloop.config import Settings, configure, get_settings

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

console = Console()
errors = Console(stderr=True)

HomeOption = Annotated[Path | None, typer.Option("--home", help="Data folder (env LABELLOOP_HOME)")]
ServerOption = Annotated[str | None, typer.Option("--server", help="Server address (env LABELLOOP_SERVER)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]


def _client(server: str | None) -> Client:
    return Client(configure(server=server))


def _fail(message: str) -> None:
    errors.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _call(server: str | None, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return _client(server).request(method, path, **kwargs)
    except ClientError as exc:
        _fail(str(exc))


def _print(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json or columns is None or not isinstance(data, list):
        console.print_json(json.dumps(data, default=str)) if not as_json else print(json.dumps(data, default=str))
        return
    table = Table(*columns)
    for row in data:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


# ── server processes ─────────────────────────────────────────────────────────


@app.command()
def serve(home: HomeOption = None, host: Annotated[str | None, typer.Option(help="Address to bind")] = None,
          port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
          watch: Annotated[Path | None, typer.Option(help="Drop folder: files put here go into the bucket")] = None,
          ) -> None:
    """Run the web UI, the API and the workers in one process."""
    import uvicorn

    from labelloop import app as application
    from labelloop import logs

    settings = configure(home=home, host=host, port=port, watch_folder=watch)
    if "public_url" not in settings.model_fields_set:
        # Links in notifications must reach this server, not the default port.
        reachable = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        if ":" in reachable:
            reachable = f"[{reachable}]"
        settings = configure(home=home, host=host, port=port, watch_folder=watch,
                             public_url=f"http://{reachable}:{settings.port}")
    logs.setup(settings.log_level, settings.log_format)
    _announce(settings, application.start(settings))
    watcher = _start_watcher(settings)
    try:
        uvicorn.run(application.create_app(settings), host=settings.host, port=settings.port,
                    log_level=settings.log_level.lower(), access_log=False)
    finally:
        if watcher is not None:
            watcher.stop()
        application.stop()


def _announce(settings: Settings, admin_password: str | None) -> None:
    print(f"labelloop {settings.resolved_home} — http://{settings.host}:{settings.port}/", flush=True)
    if admin_password:
        print(f"Created user 'admin' with temporary password: {admin_password}", flush=True)
        print("It is shown only this once; change it at first sign-in.", flush=True)


def _start_watcher(settings: Settings) -> Any:
    if settings.watch_folder is None:
        return None
    from labelloop.storage.watcher import DropFolderWatcher

    watcher = DropFolderWatcher(settings.watch_folder)
    watcher.start()
    return watcher


@app.command()
def worker(home: HomeOption = None) -> None:
    """Run workers only (workflows, schedules, queues) against the same home or database."""
    import signal
    import threading

    from labelloop import app as application
    from labelloop import logs

    settings = configure(home=home)
    logs.setup(settings.log_level, settings.log_format)
    application.start(settings)
    print(f"labelloop worker running on {settings.resolved_home}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    application.stop()


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
    console.print(f"Signed in to {client.server} as {username} ({answer['role']}); token saved in {path}")
    if answer.get("must_change_password"):
        console.print("[yellow]Your password is temporary: change it with labelloop passwd[/yellow]")


@app.command()
def passwd(current: Annotated[str, typer.Option(prompt=True, hide_input=True)],
           new: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
           server: ServerOption = None) -> None:
    """Change your password (then sign in again)."""
    _call(server, "POST", "/auth/password", json={"current_password": current, "new_password": new})
    console.print("Password changed; sign in again with labelloop login")


def upload_plan(paths: list[Path], prefix: str) -> list[tuple[Path, str]]:
    """The (file, key) pairs to upload: a folder keeps its own name under ``prefix`` (its label)."""
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
        else:
            _fail(f"{path} is neither a file nor a folder")
    return plan


@app.command()
def upload(paths: Annotated[list[Path], typer.Argument(help="Files or folders")],
           to: Annotated[str, typer.Option("--to", help="Folder in the bucket")] = "images_for_detection/",
           server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Upload files or whole folders (a folder under images_labeled_by_folder/ keeps its name as the label)."""
    plan = upload_plan(paths, to)
    client = _client(server)
    stored, failed = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=errors, disable=as_json) as progress:
        task = progress.add_task("Uploading", total=len(plan))
        for file, key in plan:
            try:
                stored.append(client.request("PUT", f"/objects/{quote(key, safe='/')}", content=file.read_bytes()))
            except (ClientError, OSError) as exc:
                failed.append({"file": str(file), "key": key, "error": str(exc)})
            progress.advance(task)
    if as_json:
        print(json.dumps({"stored": stored, "failed": failed}))
    else:
        console.print(f"Uploaded {len(stored)} of {len(plan)} file(s) to {to}")
        for failure in failed:
            errors.print(f"[red]failed[/red] {failure['file']} → {failure['key']}: {failure['error']}")
    if failed:
        raise typer.Exit(1)


@params_app.command("list")
def params_list(server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Every parameter with its value and allowed range."""
    _print(_call(server, "GET", "/parameters"), as_json, ["name", "value", "allowed", "version", "modified_by"])


@params_app.command("get")
def params_get(name: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """One parameter."""
    data = _call(server, "GET", f"/parameters/{quote(name)}")
    print(json.dumps(data, default=str)) if as_json else console.print(data["value"])


@params_app.command("set")
def params_set(name: str, value: str, server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Change a parameter (validated; starts the run that applies it)."""
    data = _call(server, "PUT", f"/parameters/{quote(name)}", json={"value": value})
    if as_json:
        print(json.dumps(data, default=str))
    elif data["changed"]:
        console.print(f"{name} = {data['parameter']['value']} (version {data['parameter']['version']}); "
                      f"run {data['run_id']}")
    else:
        console.print(f"{name} is already {data['parameter']['value']}; nothing changed")


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
        output.write_bytes(data)


@objects_app.command("rm")
def objects_rm(key: str, server: ServerOption = None) -> None:
    """Delete an object."""
    _call(server, "DELETE", f"/objects/{quote(key, safe='/')}")
    console.print(f"Deleted {key}")


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
    console.print(f"[bold]{run['id']}[/bold] {run['branch']} — {run['status']} (started {run['created_at']})")
    _print(run["steps"], False, ["step_id", "name", "duration_ms", "error", "output"])


@training_app.command("check")
def training_check(server: ServerOption = None, as_json: JsonOption = False) -> None:
    """Run the training check now."""
    data = _call(server, "POST", "/training/check")
    print(json.dumps(data)) if as_json else console.print(f"Training check started: run {data['run_id']}")


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
        console.print(f"Created {username} ({role}); temporary password: {data['temporary_password']}")


@users_app.command("list")
def users_list(server: ServerOption = None, as_json: JsonOption = False) -> None:
    """All users."""
    _print(_call(server, "GET", "/users"), as_json, ["username", "role", "disabled", "must_change_password"])


def main() -> None:
    """Entry point."""
    get_settings()
    app()
