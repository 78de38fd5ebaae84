"""The watched drop folder (``serve --watch DIR``) feeds the bucket and the "object created" event."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import Server, created_objects, wait_until
from labelloop.storage.watcher import DropFolderWatcher


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), (seed % 256, (seed * 7) % 256, (seed * 31) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def drop_file(drop: Path, key: str, content: bytes) -> None:
    """Write a file into the drop folder the way a copy tool would: under a hidden name, then renamed."""
    target = drop / key
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial"
    partial.write_bytes(content)
    partial.rename(target)


def objects(server: Server) -> dict[str, dict[str, Any]]:
    with server.client() as api:
        return {item["key"]: item for item in api.get("/objects").json()}


def object_created_runs(server: Server) -> dict[str, list[dict[str, Any]]]:
    with server.client() as api:
        runs = api.get("/runs", params={"branch": "Object Created", "limit": 500}).json()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for created in created_objects(run):
            by_key.setdefault(created["key"], []).append(run)
    return by_key


def files_in(drop: Path) -> list[str]:
    return sorted(p.relative_to(drop).as_posix() for p in drop.rglob("*") if p.is_file())


def test_dropped_files_go_into_the_bucket_and_start_one_run_each(make_server, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    waiting = {"images_for_detection/before-start.png": png(1)}  # already there when the server starts
    for key, content in waiting.items():
        drop_file(drop, key, content)
    server = make_server(args=["--watch", str(drop)])

    dropped = {
        "images_for_detection/camera-1.png": png(2),
        "images_labeled_by_folder/cats/cat-1.png": png(3),
        "images_labeled_by_folder/cats/cat-2.png": png(4),
        "images_labeled_by_folder/new label/dog 1.png": png(5),
    }
    for key, content in dropped.items():
        drop_file(drop, key, content)
    expected = {**waiting, **dropped}

    stored = wait_until(lambda: (found := objects(server)) and set(expected) <= set(found) and found,
                        message="the dropped files in the bucket")
    wait_until(lambda: not files_in(drop), message="the drop folder to empty")
    with server.client() as api:
        for key, content in expected.items():
            assert stored[key]["size"] == len(content)
            assert api.get(f"/objects/{key}").content == content

    runs = wait_until(lambda: (found := object_created_runs(server)) and set(expected) <= set(found) and found,
                      message="an object_created run per file")
    assert set(runs) == set(expected)
    for key in expected:
        assert len(runs[key]) == 1, f"exactly one object_created run for {key}"
        run = server.wait_run(runs[key][0]["id"])
        assert run["status"] == "SUCCESS"
        created = next(c for c in created_objects(run) if c["key"] == key)
        assert created["source"] == "drop folder"
        assert created["etag"] == stored[key]["etag"]
    assert server.wait_run(runs["images_labeled_by_folder/new label/dog 1.png"][0]["id"])["output"]["label"] == \
        "new label"


def test_a_forbidden_name_stays_in_the_drop_folder_and_the_server_keeps_working(make_server,
                                                                               tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    server = make_server(args=["--watch", str(drop)])
    secret = tmp_path / "secret.txt"
    secret.write_text("a file the dropper should not be able to copy into the bucket")
    left = ["images_for_detection/bad\x1bname.png", "images_for_detection/link.png"]

    drop_file(drop, left[0], png(6))  # an escape character: not a valid key
    (drop / left[1]).symlink_to(secret)  # a link is not followed
    drop_file(drop, "images_for_detection/good.png", png(7))

    wait_until(lambda: "images_for_detection/good.png" in objects(server), message="the good file")
    wait_until(lambda: files_in(drop) == left, message="only the bad file and the link left in the drop folder")
    assert sorted(objects(server)) == ["images_for_detection/good.png"]
    log = wait_until(lambda: (text := server.log_path.read_text()) and "links are not followed" in text and text,
                     message="the link refused in the log")
    assert "drop folder file not stored" in log and "U+001B" in log

    # The watcher and the server still work: a later file is taken, the API answers.
    drop_file(drop, "images_labeled_by_folder/cats/later.png", png(8))
    wait_until(lambda: "images_labeled_by_folder/cats/later.png" in objects(server), message="the later file")
    wait_until(lambda: files_in(drop) == left, message="the later file taken")
    with server.client() as api:
        assert api.get("/parameters/Minimum-F1-Score").status_code == 200
    assert set(object_created_runs(server)) == {"images_for_detection/good.png",
                                                "images_labeled_by_folder/cats/later.png"}


@pytest.mark.same_on_every_database
def test_a_file_dropped_while_the_first_sweep_stores_is_taken_too(tmp_path: Path) -> None:
    """The watch is armed before the first sweep: a file dropped while that sweep is still storing (a server
    that answers while its start-up sweep runs) raises a change instead of falling between sweep and watch."""
    drop = tmp_path / "drop"
    drop_file(drop, "images_for_detection/first.png", png(1))
    storing_first, go_on, stored = threading.Event(), threading.Event(), []

    def store(key: str, data: bytes) -> None:
        stored.append(key)
        if key.endswith("first.png"):
            storing_first.set()
            assert go_on.wait(10)

    watcher = DropFolderWatcher(drop, store, settle_seconds=0.05)
    watcher.start()
    try:
        assert storing_first.wait(10), "the first sweep takes what was there at the start"
        drop_file(drop, "images_for_detection/second.png", png(2))
        go_on.set()
        wait_until(lambda: "images_for_detection/second.png" in stored, timeout=10,
                   message="the file dropped during the first sweep stored")
    finally:
        go_on.set()
        watcher.stop()
    assert stored == ["images_for_detection/first.png", "images_for_detection/second.png"]
    assert not any(path.is_file() for path in drop.rglob("*"))
