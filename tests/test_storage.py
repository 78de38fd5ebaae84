"""The bucket: key rules, object operations, and the "object created" event."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from conftest import Server, wait_until
from labelloop.storage.backends.local import ETAG_ATTRIBUTE, LocalBackend
from labelloop.storage.service import InvalidKey, validate_key


def png(colour: str = "red", size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("key", [
    "images_for_detection/photo.jpg",
    "images_labeled_by_folder/amazon_logo/a b (1).png",
    "images_labeled_by_folder/café/日本.jpg",
    "a/" * 100 + "x.jpg",
])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), [
    ("", "empty"),
    ("../etc/passwd", "'..'"),
    ("images_for_detection/../../x", "'..'"),
    ("images_for_detection/%2e%2e/x", "'..'"),
    ("images_for_detection/./x", "'.'"),
    ("/etc/passwd", "starts with '/'"),
    ("a\\b.jpg", "backslash"),
    ("a/b\x00.jpg", "control character"),
    ("a/b\n.jpg", "control character"),
    ("a/b\x7f.jpg", "control character"),
    ("a/b\x1f.jpg", "control character"),
    ("a/b\x85.jpg", "control character"),
    ("a/\u202egpj.exe", "control character"),
    ("a//b.jpg", "empty folder name"),
    ("images_for_detection/", "may not end with '/'"),
    ("x" * 1025, "longer than 1024"),
    ("a/" + "y" * 256, "longer than 255"),
])
def test_bad_keys_say_why(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason.replace("(", r"\(").replace(")", r"\)")):
        validate_key(key)


def test_first_start_creates_the_five_folders(shared_server: Server) -> None:
    bucket = shared_server.home / "bucket"
    assert sorted(p.name for p in bucket.iterdir()) == sorted(
        ["images_labeled_by_folder", "images_for_detection", "a2i-human-loop-data", "evaluation", "manifests"])


def test_put_list_get_delete(shared_server: Server) -> None:
    data = png("blue")
    with shared_server.client() as api:
        put = api.put("/objects/manifests/notes/a b.png", content=data)
        assert put.status_code == 201, put.text
        info = put.json()
        assert info["size"] == len(data) and len(info["etag"]) == 32
        listed = api.get("/objects", params={"prefix": "manifests/notes/"}).json()
        assert [(o["key"], o["etag"]) for o in listed] == [("manifests/notes/a b.png", info["etag"])]
        got = api.get("/objects/manifests/notes/a%20b.png")
        assert got.content == data
        assert got.headers["x-content-type-options"] == "nosniff"
        assert api.delete("/objects/manifests/notes/a b.png").status_code == 200
        assert api.get("/objects/manifests/notes/a b.png").status_code == 404
        assert api.delete("/objects/manifests/notes/a b.png").status_code == 404


def test_bad_keys_over_http_are_400_and_store_nothing_outside(shared_server: Server) -> None:
    with shared_server.client() as api:
        for key in ("images_for_detection/%2e%2e/%2e%2e/escape.png", "images_for_detection/a%00b.png",
                    "images_for_detection//x.png", "images_for_detection/%E2%80%AEgnp.exe"):
            response = api.put(f"/objects/{key}", content=b"x")
            assert response.status_code == 400, (key, response.text)
            assert response.json()["detail"]
    assert not (shared_server.home / "escape.png").exists()
    assert not (shared_server.home.parent / "escape.png").exists()


def test_a_key_whose_name_or_folder_is_taken_in_a_local_bucket_is_400_with_why(shared_server: Server) -> None:
    """In a local bucket a name is a folder or a file, not both (S3 keys are flat): a PUT at a folder's name, or
    under an object as if it were a folder, is refused (400, saying which name is taken), not a 500; nothing
    changes."""
    with shared_server.client() as api:
        assert api.put("/objects/manifests/taken/held.json", content=b"{}").status_code == 201
        for key, why in (("manifests/taken", "'manifests/taken' is a folder of the bucket"),
                         ("manifests/taken/held.json/under.json", "'manifests/taken/held.json' is an object"),
                         ("manifests/taken/held.json/deeper/under.json", "'manifests/taken/held.json' is an object")):
            response = api.put(f"/objects/{key}", content=b"[]")
            assert response.status_code == 400 and why in response.json()["detail"], (key, response.text)
        assert api.get("/objects/manifests/taken/held.json").content == b"{}"
        listed = api.get("/objects", params={"prefix": "manifests/taken"}).json()
        assert [item["key"] for item in listed] == ["manifests/taken/held.json"]
        assert api.delete("/objects/manifests/taken").status_code == 404  # a folder is not an object to delete


def test_html_and_svg_are_served_as_bytes(shared_server: Server) -> None:
    with shared_server.client() as api:
        api.put("/objects/manifests/evil.svg", content=b"<svg onload='alert(1)'/>")
        response = api.get("/objects/manifests/evil.svg")
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"] == "attachment"


def test_upload_over_the_limit_is_413(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(LABELLOOP_MAX_UPLOAD_BYTES="1000")
    with server.client() as api:
        response = api.put("/objects/images_for_detection/big.png", content=b"x" * 5000)
        assert response.status_code == 413
        assert api.get("/objects", params={"prefix": "images_for_detection/"}).json() == []


def test_the_sqlite_workflow_records_are_in_wal_mode(shared_server: Server) -> None:
    """Each recorded step is a commit: in SQLite's default journal mode that is several fsyncs and a lock that
    blocks readers, which capped the upload pipeline; the engine opens its SQLite database in WAL."""
    database = shared_server.home / "workflows.db"
    if not database.exists():
        pytest.skip("the workflow records are on PostgreSQL in this run")
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_each_created_image_starts_exactly_one_run(shared_server: Server) -> None:
    with shared_server.client() as api:
        keys = [f"images_labeled_by_folder/circle/{i}.png" for i in range(3)] + ["images_for_detection/q.png"]
        ids = []
        for i, key in enumerate(keys):
            ids.append(api.put(f"/objects/{key}", content=png(size=20 + i)).json()["etag"])
        # The same bytes uploaded again to the same key are the same event: no second run.
        api.put(f"/objects/{keys[0]}", content=png(size=20))
        api.put("/objects/manifests/not-an-event.png", content=png())

        def all_done() -> list[dict] | None:
            runs = api.get("/runs", params={"branch": "Object Created", "limit": 500}).json()
            mine = [r for r in runs if set(r["object_keys"] or []) & set(keys)]
            return mine if len(mine) == len(keys) and all(r["status"] == "SUCCESS" for r in mine) else None

        runs = wait_until(all_done, 30, message="object created runs")
        assert sorted(key for r in runs for key in r["object_keys"]) == sorted(keys)
        by_key = {r["object_keys"][0]: r["id"] for r in runs}
        detail = api.get(f"/runs/{by_key[keys[0]]}").json()
        assert [step["name"] for step in detail["steps"]] == ["route_object"]
        # An image for detection: its event was logged as it arrived; one recorded step detects and notifies.
        detail = api.get(f"/runs/{by_key['images_for_detection/q.png']}").json()
        assert [step["name"] for step in detail["steps"]] == ["detect_uploaded_images"]
        assert detail["object_keys"] == ["images_for_detection/q.png"]
        branches = {r["object_keys"][0]: r["output"]["branch"] for r in runs}
        assert branches["images_for_detection/q.png"] == "detection"
        assert branches[keys[0]] == "training data"
        assert all("manifests/not-an-event.png" not in (r["object_keys"] or [])
                   for r in api.get("/runs", params={"limit": 500}).json() if r["name"] == "object_created")


DAMAGE = {"empty": b"", "garbage": b"\x00\x00\x00"}


@pytest.mark.parametrize("damage", ["empty", "garbage", "missing"])
@pytest.mark.parametrize("kept_in", ["attribute", "file"])
def test_an_etag_lost_in_a_crash_is_computed_again(tmp_path: Path, request: pytest.FixtureRequest, damage: str,
                                                   kept_in: str) -> None:
    """Where the ETag is kept — the object's extended attribute, or on a file system without them a file of
    ``bucket.meta`` written without fsync — whatever a crash (or a hand) leaves of it, head() gives the object's
    MD5 and keeps it again for the next reader. (The attribute is fsync'd with the object; a file system that
    loses it anyway, or a copy that drops it, is the case here.)"""
    folder = tmp_path if kept_in == "attribute" else request.getfixturevalue("no_xattr_folder")
    bucket = LocalBackend(folder / "bucket")
    assert bucket.attributes == (kept_in == "attribute")
    data = b"\xff\xd8 some image bytes"
    stored = bucket.put("images_for_detection/a.jpg", data)
    assert stored.etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
    path, meta = (folder / name / "images_for_detection" / "a.jpg" for name in ("bucket", "bucket.meta"))

    def kept() -> str:
        if kept_in == "file":
            return meta.read_text()
        return os.getxattr(path, ETAG_ATTRIBUTE).decode().split(" ")[0]

    assert kept() == stored.etag
    if kept_in == "file" and damage == "missing":
        meta.unlink()
    elif kept_in == "file":
        meta.write_bytes(DAMAGE[damage])
    elif damage == "missing":
        os.removexattr(path, ETAG_ATTRIBUTE)
    else:
        os.setxattr(path, ETAG_ATTRIBUTE, DAMAGE[damage])
    assert bucket.head("images_for_detection/a.jpg").etag == stored.etag
    assert kept() == stored.etag  # repaired for the next reader


def test_no_key_leads_outside_the_bucket_through_a_link_or_dot_segments(tmp_path: Path) -> None:
    """The bucket resolves a key's path only when a segment could lead out; a link inside the bucket to a
    folder or file of the bucket still works, one to a folder or file outside it (or ``..``) is refused on every
    operation, a put included (nothing is written outside)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    bucket = LocalBackend(tmp_path / "bucket")
    bucket.put("images_for_detection/in/a.jpg", b"a")
    folder = tmp_path / "bucket" / "images_for_detection"
    (folder / "out").symlink_to(outside)
    (folder / "same").symlink_to(folder / "in")
    (folder / "in" / "leak.jpg").symlink_to(outside / "secret.jpg")
    assert bucket.get("images_for_detection/same/a.jpg") == b"a"
    for key in ("images_for_detection/out/secret.jpg", "images_for_detection/in/leak.jpg", "../outside/secret.jpg",
                "images_for_detection/../../outside/secret.jpg"):
        for operation in (bucket.get, bucket.head, bucket.delete):
            with pytest.raises(ValueError, match="outside the bucket"):
                operation(key)
    for key in ("images_for_detection/in/leak.jpg", "images_for_detection/out/new.jpg"):  # a link at the file, a folder
        with pytest.raises(ValueError, match="outside the bucket"):
            bucket.put(key, b"overwritten")
    assert sorted(path.name for path in outside.iterdir()) == ["secret.jpg"]
    assert (outside / "secret.jpg").read_bytes() == b"secret"
    (folder / "in" / "alias.jpg").symlink_to(folder / "in" / "a.jpg")  # a link to a file inside is followed
    bucket.put("images_for_detection/in/alias.jpg", b"through the link")
    assert bucket.get("images_for_detection/in/a.jpg") == b"through the link"
    assert (folder / "in" / "alias.jpg").is_symlink()
    assert bucket.head("images_for_detection/in/alias.jpg").size == len(b"through the link")


def test_a_put_refuses_a_token_the_moment_it_is_revoked_and_keeps_the_consumer_rule(shared_server: Server) -> None:
    """The bucket's PUT remembers a verified token for a moment (no database lookup or worker thread per upload),
    but a revocation in this process ends it at once; a consumer may still upload only for detection."""
    token = shared_server.user_token("uploader-pat", "consumer")
    with shared_server.client(token) as api:
        for i in range(3):  # the first use verifies the token in the database; the next ones from memory
            put = api.put(f"/objects/images_for_detection/revoked/{i}.png", content=png("red", 8 + i))
            assert put.status_code == 201, put.text
        refused = api.put("/objects/images_labeled_by_folder/red/x.png", content=png("red", 20))
        assert refused.status_code == 403 and "consumers may only upload" in refused.text, refused.text
        newest = api.get("/tokens").json()[-1]["id"]
        assert api.delete(f"/tokens/{newest}").status_code == 200
        gone = api.put("/objects/images_for_detection/revoked/late.png", content=png("blue", 9))
        assert gone.status_code == 401, gone.text
