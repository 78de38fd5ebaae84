"""The ``labelloop`` command against a real server: upload, params, runs, login."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import ADMIN_PASSWORD, LABELLOOP, Server, created_objects, wait_until

LABELED = "images_labeled_by_folder/"


def png(path: Path, seed: int) -> bytes:
    """Write a small PNG whose content depends on ``seed`` and return its bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256)).save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def cli_env(server: Server, config: Path, token: str | None = None) -> dict[str, str]:
    """A clean environment for the CLI: the server's address, its own config folder, maybe a token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
    # A pipe's 80 columns whatever the terminal running the tests: messages must not wrap there.
    env.update({"LABELLOOP_SERVER": server.url, "XDG_CONFIG_HOME": str(config), "PYTHONIOENCODING": "utf-8",
                "COLUMNS": "80"})
    if token:
        env["LABELLOOP_TOKEN"] = token
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABELLOOP, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def cli(shared_server: Server, tmp_path: Path) -> Any:
    """Run ``labelloop ARGS`` as the admin against the shared server."""
    env = cli_env(shared_server, tmp_path / "config", shared_server.token())
    return lambda *args: run_cli(env, *args)


def keys_under(server: Server, prefix: str) -> dict[str, dict[str, Any]]:
    with server.client() as api:
        response = api.get("/objects", params={"prefix": prefix})
    assert response.status_code == 200, response.text
    return {item["key"]: item for item in response.json()}


def object_created_runs(server: Server) -> dict[str, list[dict[str, Any]]]:
    """Object-created runs by each key they covered (a run detects the uploads that arrive together)."""
    with server.client() as api:
        runs = api.get("/runs", params={"branch": "Object Created", "limit": 500}).json()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for created in created_objects(run):
            by_key.setdefault(created["key"], []).append(run)
    return by_key


def test_upload_folders_keep_their_name_as_label(shared_server: Server, cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    expected: dict[str, bytes] = {}
    for label, count in (("cli-cats", 3), ("cli-dogs", 2)):
        for n in range(count):
            expected[f"{LABELED}{label}/{label}-{n}.png"] = png(data / label / f"{label}-{n}.png", hash(label) + n)
    (data / "cli-cats" / ".DS_Store").write_bytes(b"hidden files are not uploaded")
    expected[f"{LABELED}cli-single.png"] = png(data / "cli-single.png", 99)

    result = cli("upload", str(data / "cli-cats"), str(data / "cli-dogs"), str(data / "cli-single.png"),
                 "--to", "images_labeled_by_folder")

    assert result.returncode == 0, result.stderr
    assert "Uploaded 6 of 6 file(s) to images_labeled_by_folder" in result.stdout
    assert "Uploading" in result.stderr and "6/6" in result.stderr, "the progress bar goes to stderr"
    assert "Uploading" not in result.stdout
    stored = keys_under(shared_server, f"{LABELED}cli-")
    assert sorted(stored) == sorted(expected)
    with shared_server.client() as api:
        for key, content in expected.items():
            assert api.get(f"/objects/{key}").content == content
    runs = object_created_runs(shared_server)
    for key in expected:
        assert len(runs.get(key, [])) == 1, f"one object_created run for {key}"


def test_upload_json_output(shared_server: Server, cli: Any, tmp_path: Path) -> None:
    content = png(tmp_path / "cli-detect.png", 7)

    result = cli("upload", str(tmp_path / "cli-detect.png"), "--to", "images_for_detection/", "--json")

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["failed"] == []
    [stored] = answer["stored"]
    assert stored["key"] == "images_for_detection/cli-detect.png" and stored["size"] == len(content)
    assert stored["etag"] == keys_under(shared_server, "images_for_detection/cli-detect")[stored["key"]]["etag"]
    assert "Uploading" not in result.stderr


def test_failing_upload_names_the_file_and_uploads_the_rest(shared_server: Server, cli: Any, tmp_path: Path) -> None:
    birds = tmp_path / "cli-birds"
    good = {name: png(birds / name, n) for n, name in enumerate(["a.png", "c.png"])}
    png(birds / "[bold]b\x01.png", 5)  # a control character: the server refuses the key

    result = cli("upload", str(birds), str(tmp_path / "no-such-folder"), "--to", LABELED)

    assert result.returncode == 1
    # One line per failed file, naming it as it is (brackets are not markup, the control character shown).
    lines = result.stderr.splitlines()
    assert [line for line in lines if "[bold]b\\x01.png" in line and "control character U+0001" in line]
    assert [line for line in lines if "no-such-folder" in line and "no such file or folder" in line]
    assert "Uploaded 2 of 4 file(s)" in result.stdout
    assert sorted(keys_under(shared_server, f"{LABELED}cli-birds/")) == [f"{LABELED}cli-birds/{n}" for n in good]

    as_json = cli("upload", str(birds / "[bold]b\x01.png"), "--to", LABELED, "--json")
    assert as_json.returncode == 1
    [failure] = json.loads(as_json.stdout)["failed"]
    assert failure["key"] == f"{LABELED}[bold]b\x01.png" and "U+0001" in failure["error"]


def test_params_set_refuses_a_bad_value_with_the_allowed_range(shared_server: Server, cli: Any) -> None:
    result = cli("params", "set", "Minimum-F1-Score", "1.5")
    assert result.returncode == 1
    assert "Minimum-F1-Score must be a number from 0 to 1; got '1.5'" in one_line(result.stderr)

    result = cli("params", "set", "Human-Sampling-Interval", "1,000")
    assert result.returncode == 1
    assert "a whole number ≥ 1" in one_line(result.stderr)

    with shared_server.client() as api:
        for name, value in (("Minimum-F1-Score", "0.8"), ("Human-Sampling-Interval", "1000")):
            parameter = api.get(f"/parameters/{name}").json()
            assert (parameter["value"], parameter["version"]) == (value, 1), "nothing changed"


def test_params_set_history_and_runs(shared_server: Server, cli: Any) -> None:
    result = cli("params", "set", "Minimum-Inference-Units", "3")
    assert result.returncode == 0, result.stderr
    run_id = "parameter-Minimum-Inference-Units-v2"
    assert f"Minimum-Inference-Units = 3 (version 2); run {run_id}" in result.stdout.splitlines()  # 84 columns
    assert shared_server.wait_run(run_id)["status"] == "SUCCESS"

    history = cli("params", "history", "Minimum-Inference-Units", "--json")
    assert history.returncode == 0, history.stderr
    newest, first = json.loads(history.stdout)
    assert (newest["version"], newest["old_value"], newest["new_value"]) == (2, "1", "3")
    assert newest["changed_by"] == "admin" and newest["run_id"] == run_id
    assert (first["version"], first["new_value"], first["changed_by"]) == (1, "1", "system")

    runs = cli("runs", "list", "--json")
    assert runs.returncode == 0, runs.stderr
    listed = {run["id"]: run for run in json.loads(runs.stdout)}
    assert listed[run_id]["branch"] == "Parameter Store" and listed[run_id]["status"] == "SUCCESS"

    check = cli("training", "check", "--json")
    assert check.returncode == 0, check.stderr
    check_run = shared_server.wait_run(json.loads(check.stdout)["run_id"])
    shown = cli("runs", "show", check_run["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["steps"][0]["name"] == "check_new_training"


def test_objects_rm_names_the_key_as_it_is_on_one_line(shared_server: Server, cli: Any) -> None:
    """A key wider than the 80 columns, with spaces, brackets and an emoji code: ``objects rm`` says it deleted that
    key on one line, and the second time says on one line of standard error that nothing is there (the markup in
    the key stopped the command with a traceback after the delete; ``[copy]`` vanished; ``:cat:`` became 🐱)."""
    key = "manifests/cli holiday 2026/beach [copy] :cat: [/b] IMG_0001 (edited, from the camera's card).json"
    with shared_server.client() as api:
        assert api.put(f"/objects/{key}", content=b"{}").status_code == 201
    removed = cli("objects", "rm", key)
    assert (removed.returncode, removed.stdout) == (0, f"Deleted {key}\n"), removed.stderr
    assert key not in keys_under(shared_server, "manifests/cli holiday 2026/")
    again = cli("objects", "rm", key)
    assert again.returncode == 1 and len(again.stderr.splitlines()) == 1, again.stderr
    assert again.stderr.startswith("error: ") and repr(key) in again.stderr


def test_a_download_to_a_file_that_cannot_be_written_says_why(shared_server: Server, cli: Any,
                                                                tmp_path: Path) -> None:
    """``objects get -o`` and ``detections --csv`` into a folder that does not exist, or onto a folder: one line
    on standard error naming the file and why, exit status 1, no traceback."""
    with shared_server.client() as api:
        assert api.put("/objects/manifests/cli-download.json", content=b"{}").status_code in (200, 201)
    missing = tmp_path / "no such folder" / "out.json"
    for args, target, why in ((("objects", "get", "manifests/cli-download.json", "-o", str(missing)), missing,
                               "No such file or directory"),
                              (("detections", "--csv", str(tmp_path)), tmp_path, "Is a directory")):
        result = cli(*args)
        assert result.returncode == 1 and result.stderr == f"error: cannot write {target}: {why}\n", result.stderr
    assert not missing.parent.exists()
    done = cli("objects", "get", "manifests/cli-download.json", "-o", str(tmp_path / "out.json"))
    assert done.returncode == 0 and (tmp_path / "out.json").read_bytes() == b"{}", done.stderr


def test_login_saves_a_token_that_later_commands_use(shared_server: Server, tmp_path: Path) -> None:
    config = tmp_path / "config"
    env = cli_env(shared_server, config)

    before = run_cli(env, "params", "get", "Enable-Automatic-Training")
    assert before.returncode == 1 and "labelloop login" in one_line(before.stderr)

    wrong = run_cli(env, "login", "--username", "admin", "--password", "not-the-password")
    assert wrong.returncode == 1 and "error" in wrong.stderr
    assert not (config / "labelloop" / "credentials.json").exists()

    login = run_cli(env, "login", "--username", "admin", "--password", ADMIN_PASSWORD)
    assert login.returncode == 0, login.stderr
    saved = config / "labelloop" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert list(json.loads(saved.read_text())) == [shared_server.url]

    after = run_cli(env, "params", "get", "Enable-Automatic-Training")
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() in ("true", "false")


def test_a_temporary_password_refusal_says_how_to_fix_it_from_the_cli(shared_server: Server, tmp_path: Path) -> None:
    """An account still on its temporary password: what the CLI refuses (a command, an upload) says how to change it
    with the CLI (``labelloop passwd``, then ``labelloop login``), not the API's route; once done, the commands work.
    The API itself still names its route."""
    with shared_server.client() as admin:
        created = admin.post("/users", json={"username": "cli-temporary", "role": "operator"})
    assert created.status_code == 201, created.text
    temporary = created.json()["temporary_password"]
    env = cli_env(shared_server, tmp_path / "config")
    login = run_cli(env, "login", "--username", "cli-temporary", "--password", temporary)
    assert login.returncode == 0, login.stderr
    assert "temporary: change it with labelloop passwd --current <temporary> --new <yours>" in one_line(login.stdout)
    fix = ("this account still has its temporary password: change it with `labelloop passwd --current <temporary> "
           "--new <yours>`, then sign in again with `labelloop login`")
    refused = run_cli(env, "objects", "ls")
    assert refused.returncode == 1 and fix in one_line(refused.stderr), refused.stderr
    assert "/api/v1/auth/password" not in refused.stderr
    png(tmp_path / "photo.png", 7)
    upload = run_cli(env, "upload", str(tmp_path / "photo.png"), "--wait", "0")
    assert upload.returncode == 1 and fix in one_line(upload.stderr), upload.stderr
    with shared_server.client(shared_server.token("cli-temporary", temporary)) as api:
        assert "POST /api/v1/auth/password" in api.get("/objects").json()["detail"]
    changed = run_cli(env, "passwd", "--current", temporary, "--new", "a-password-of-my-own")
    assert changed.returncode == 0, changed.stderr
    assert run_cli(env, "login", "--username", "cli-temporary", "--password", "a-password-of-my-own").returncode == 0
    listed = run_cli(env, "objects", "ls")
    assert listed.returncode == 0, listed.stderr


def test_loops_audit_undo_and_correct(make_server: Any, tmp_path: Path) -> None:
    """`loops audit` opens Label Audit loops; `loops undo` takes the last answer back within its window;
    `loops correct` moves an applied answer's image to the corrected label; `models suspects` names a bad version."""
    server = make_server(LABELLOOP_UNDO_SECONDS="8")
    env = cli_env(server, tmp_path / "config", server.token())
    cat, dog = f"{LABELED}cat/one.png", f"{LABELED}dog/two.png"
    with server.client() as api:
        for n, key in enumerate((cat, dog, f"{LABELED}cat/three.png", f"{LABELED}dog/four.png")):
            assert api.put(f"/objects/{key}", content=png(tmp_path / f"{n}.png", n)).status_code in (200, 201)

    opened = run_cli(env, "loops", "audit", cat, dog, "--json")
    assert opened.returncode == 0, opened.stderr
    loops = {loop["object_key"]: loop["name"] for loop in json.loads(opened.stdout)}
    assert sorted(loops) == [cat, dog] and all(n.startswith("label-audit-") for n in loops.values())

    assert run_cli(env, "loops", "answer", loops[cat], "dog").returncode == 0  # applied after 8 s: corrected below
    assert run_cli(env, "loops", "answer", loops[dog], "cat").returncode == 0
    undone = run_cli(env, "loops", "undo")
    assert undone.returncode == 0, undone.stderr
    assert f"{loops[dog]}: answer taken back" in undone.stdout
    with server.client() as api:
        assert api.get(f"/human-loops/{loops[dog]}").json()["status"] == "InProgress"
        moved = f"{LABELED}dog/one.png"
        def server_keys() -> set[str]:
            return set(keys_under(server, LABELED))

        wait_until(lambda: moved in server_keys(), 60, 0.3, "the applied answer moving the image to dog/")

        corrected = run_cli(env, "loops", "correct", loops[cat], "cat")
        assert corrected.returncode == 0, corrected.stderr
        assert f"{loops[cat]}: corrected to cat" in corrected.stdout
        wait_until(lambda: cat in server_keys() and moved not in server_keys(), 60, 0.3,
                   "the correction moving it back to cat/")
        assert api.get(f"/human-loops/{loops[dog]}").json()["status"] == "InProgress", "the undone loop stays open"

    late = run_cli(env, "loops", "undo")
    assert late.returncode == 1 and late.stderr.strip(), "nothing left to undo: a clear error"
    unknown = run_cli(env, "models", "suspects", "v404")
    assert unknown.returncode == 1 and "v404" in unknown.stderr

