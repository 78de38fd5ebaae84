"""The upload's path through the local bucket (issue 15, the PUT): what a put leaves on disk, what it answers,
staged files, the ETag kept in the object's extended attribute (or, on a file system without them, in a file) and
the same bytes not written again (the refusal of every way out of the bucket, a put included: test_storage.py)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from labelloop.storage.backends import local
from labelloop.storage.backends.base import ObjectNotFound
from labelloop.storage.backends.local import LocalBackend

pytestmark = pytest.mark.same_on_every_database  # the local bucket alone, no database

KEY = "images_for_detection/a/b/photo.jpg"


def kept_etag(path: Path) -> str:
    """The ETag in the object's attribute (what the bucket keeps: "<etag> <size> <mtime in ns>")."""
    etag, size, modified = os.getxattr(path, local.ETAG_ATTRIBUTE).decode().split(" ")
    assert (int(size), int(modified)) == (path.stat().st_size, path.stat().st_mtime_ns)
    return etag


def test_a_put_answers_what_head_and_get_then_say_and_leaves_no_staged_file(tmp_path: Path) -> None:
    """A put into folders that do not exist yet makes them; its answer (size, ETag, time) is what head() says
    later, the object is readable only by its owner as before, and the staging folder is left empty."""
    bucket = LocalBackend(tmp_path / "bucket")
    data = os.urandom(70_000)
    with pytest.raises(ObjectNotFound):
        bucket.head(KEY)
    stored = bucket.put(KEY, data)
    assert stored.etag == hashlib.md5(data, usedforsecurity=False).hexdigest() and stored.size == len(data)
    assert bucket.head(KEY) == stored
    assert bucket.get(KEY) == data
    path = tmp_path / "bucket" / KEY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kept_etag(path) == stored.etag and not (tmp_path / "bucket.meta" / KEY).exists()
    assert list((tmp_path / "bucket.tmp").iterdir()) == []
    again = bucket.put(KEY, b"other bytes")
    assert bucket.get(KEY) == b"other bytes" and bucket.head(KEY).etag == again.etag != stored.etag
    assert [info.key for info in bucket.list("images_for_detection/")] == [KEY]
    assert bucket.delete(KEY) and not bucket.delete(KEY)
    with pytest.raises(ObjectNotFound):
        bucket.get(KEY)


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "staged"])
def test_a_failed_put_leaves_no_staged_file_and_a_left_over_one_is_passed_over(tmp_path: Path,
                                                                               unnamed: bool) -> None:
    """A put whose rename fails (a folder stands at the key) raises and removes its staged file; staged names a
    crashed process with the same process id left behind are skipped, not overwritten (also when an unnamed
    file is named in the staging folder to replace an object)."""
    bucket = LocalBackend(tmp_path / "bucket")
    assert bucket.unnamed  # ext4 and tmpfs write unnamed files
    bucket.unnamed = unnamed
    (tmp_path / "bucket" / "images_for_detection" / "taken.jpg").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        bucket.put("images_for_detection/taken.jpg", b"x")
    assert list((tmp_path / "bucket.tmp").iterdir()) == []
    upcoming = next(local._STAGED) + 1
    left = [tmp_path / "bucket.tmp" / f"{os.getpid()}-{upcoming + n}.part" for n in range(3)]
    for path in left:
        path.write_bytes(b"left by a crash")
    bucket.put("images_for_detection/new.jpg", b"new")
    bucket.put("images_for_detection/new.jpg", b"newer")
    assert bucket.get("images_for_detection/new.jpg") == b"newer"
    assert sorted((tmp_path / "bucket.tmp").iterdir()) == sorted(left)
    assert all(path.read_bytes() == b"left by a crash" for path in left)


def test_an_object_is_written_unnamed_and_named_only_once_durable(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A new object is written as a file without a name in its own folder (nothing in the staging folder, nothing
    at the key) and gets its name only after its bytes and ETag attribute are fsync'd; replacing an object swaps
    the whole file (a reader opened on the old one still reads it whole)."""
    bucket = LocalBackend(tmp_path / "bucket")
    folder, staging = tmp_path / "bucket" / "images_for_detection" / "a" / "b", tmp_path / "bucket.tmp"
    seen: list[tuple[bool, list[Path], list[Path]]] = []
    fsync = os.fsync

    def watched(handle: int) -> None:
        fsync(handle)
        if stat.S_ISDIR(os.fstat(handle).st_mode):  # the folders' fsyncs: test_a_put_fsyncs_the_folders_it_names_in
            return
        seen.append((os.path.exists(folder / "photo.jpg"), sorted(folder.iterdir()), sorted(staging.iterdir())))

    monkeypatch.setattr(os, "fsync", watched)
    first = bucket.put(KEY, b"first bytes")
    assert seen == [(False, [], [])]
    with open(folder / "photo.jpg", "rb") as reader:
        second = bucket.put(KEY, b"second, longer bytes")
        assert reader.read() == b"first bytes"
    assert bucket.get(KEY) == b"second, longer bytes" and kept_etag(folder / "photo.jpg") == second.etag != first.etag
    assert seen[1] == (True, [folder / "photo.jpg"], []) and list(staging.iterdir()) == []


def traced(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[tuple[str, str]]:
    """The bucket's steps that make a put durable, in order, each with its path relative to ``root``'s parent:
    ``mkdir`` (a folder made), ``name`` (a file linked or renamed to a name), ``unlink`` (a name removed), ``fsync
    file``, ``fsync folder``."""
    steps: list[tuple[str, str]] = []
    fsync, link, replace, mkdir, unlink = os.fsync, os.link, os.replace, os.mkdir, os.unlink

    def where(path: str | Path) -> str:
        return Path(path).relative_to(root.parent).as_posix()

    def fsynced(handle: int) -> None:
        fsync(handle)
        if stat.S_ISDIR(os.fstat(handle).st_mode):
            steps.append(("fsync folder", where(os.readlink(f"/proc/self/fd/{handle}"))))
        else:
            steps.append(("fsync file", ""))

    def linked(source: str, target: str, **kwargs: object) -> None:
        link(source, target, **kwargs)  # type: ignore[arg-type]
        steps.append(("name", where(target)))

    def replaced(source: str, target: str) -> None:
        replace(source, target)
        steps.append(("name", where(target)))

    def made(path: str, *args: int) -> None:
        mkdir(path, *args)
        steps.append(("mkdir", where(path)))

    def unlinked(path: str, **kwargs: object) -> None:
        unlink(path, **kwargs)  # type: ignore[arg-type]
        steps.append(("unlink", where(path)))

    for name, call in (("fsync", fsynced), ("link", linked), ("replace", replaced), ("mkdir", made),
                       ("unlink", unlinked)):
        monkeypatch.setattr(os, name, call)
    return steps


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "staged"])
def test_a_put_fsyncs_the_folders_it_names_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool) -> None:
    """A file's fsync does not make its name durable: after a put names its object, the object's folder is
    fsync'd before the put returns (a new object, a replaced one), and each folder made for the object has its
    parent fsync'd after it is made. Nothing else is fsync'd."""
    bucket = LocalBackend(tmp_path / "bucket")
    bucket.unnamed = unnamed
    bucket.put("images_for_detection/first.jpg", b"first")
    steps = traced(monkeypatch, tmp_path / "bucket")
    bucket.put("images_for_detection/new/deeper/photo.jpg", b"new bytes")
    made = [("mkdir", "bucket/images_for_detection/new"), ("fsync folder", "bucket/images_for_detection"),
            ("mkdir", "bucket/images_for_detection/new/deeper"), ("fsync folder", "bucket/images_for_detection/new")]
    named = [("name", "bucket/images_for_detection/new/deeper/photo.jpg"),
             ("fsync folder", "bucket/images_for_detection/new/deeper")]
    # Unnamed: the folders are made to open the file in; staged: when the rename finds no folder.
    assert steps == ([*made, ("fsync file", ""), *named] if unnamed else [("fsync file", ""), *made, *named])
    steps.clear()
    bucket.put("images_for_detection/new/deeper/photo.jpg", b"replaced bytes")
    staged = [("name", step[1]) for step in steps if step[1].startswith("bucket.tmp/")]
    assert steps == [("fsync file", ""), *staged, *named] and len(staged) == (1 if unnamed else 0)
    steps.clear()
    bucket.ensure_folder("images_for_detection/made/")
    assert steps == [("mkdir", "bucket/images_for_detection/made"), ("fsync folder", "bucket/images_for_detection")]


@pytest.mark.parametrize("attributes", [True, False], ids=["attribute", "etag-file"])
def test_a_delete_fsyncs_the_folder_it_removes_the_name_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              attributes: bool) -> None:
    """A removed name, like a new one, survives a power loss only once its folder is fsync'd: a delete removes the
    object and fsyncs its folder before it returns (then removes an ETag file, unsynced, as it was written). A key
    with nothing there fsyncs nothing."""
    bucket = LocalBackend(tmp_path / "bucket")
    bucket.attributes = attributes
    bucket.put(KEY, b"bytes to delete")
    steps = traced(monkeypatch, tmp_path / "bucket")
    assert bucket.delete(KEY)
    removed = [("unlink", f"bucket/{KEY}"), ("fsync folder", "bucket/images_for_detection/a/b")]
    assert steps[:2] == removed and steps[2:] == ([] if attributes else [("unlink", f"bucket.meta/{KEY}")])
    steps.clear()
    assert not bucket.delete(KEY) and not bucket.delete("images_for_detection/a") and steps == []
    monkeypatch.undo()
    with pytest.raises(ObjectNotFound):
        bucket.head(KEY)
    assert list((tmp_path / "bucket.meta").rglob("*.jpg")) == []


def test_an_object_removed_while_a_delete_or_head_looks_at_it_is_not_found(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Another request (or process) removes the object between a delete's or a head's look at the key and its next
    step: the delete says it found nothing and the head raises ``ObjectNotFound`` (not the file system's error, a
    500), for an object with or without its ETag kept."""
    bucket = LocalBackend(tmp_path / "bucket")
    look = local._look

    def looked_then_removed(base: str, key: str) -> tuple[bool, os.stat_result | None]:
        found = look(base, key)
        if base == bucket._root and found[1] is not None:
            os.unlink(f"{base}/{key}")
        return found

    for keep_etag in (True, False):
        bucket.put(KEY, b"bytes removed meanwhile")
        if not keep_etag:  # placed by hand: head() computes its ETag, reading the file
            os.removexattr(tmp_path / "bucket" / KEY, local.ETAG_ATTRIBUTE)
        monkeypatch.setattr(local, "_look", looked_then_removed)
        with pytest.raises(ObjectNotFound):
            bucket.head(KEY)
        monkeypatch.undo()
        bucket.put(KEY, b"bytes removed meanwhile")
        monkeypatch.setattr(local, "_look", looked_then_removed)
        assert not bucket.delete(KEY)
        monkeypatch.undo()


def test_a_put_that_fails_before_its_name_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (the disk's fsync answers EIO) raises and leaves neither the object nor any file in its
    folder or the staging folder; the object stored before stays."""
    bucket = LocalBackend(tmp_path / "bucket")
    bucket.put(KEY, b"kept bytes")

    def failing(_handle: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    for key in (KEY, "images_for_detection/a/b/new.jpg"):
        with pytest.raises(OSError, match="Input/output"):
            bucket.put(key, b"lost bytes")
    monkeypatch.undo()
    assert bucket.get(KEY) == b"kept bytes"
    assert sorted((tmp_path / "bucket" / "images_for_detection" / "a" / "b").iterdir()) == \
        [tmp_path / "bucket" / KEY]
    assert list((tmp_path / "bucket.tmp").iterdir()) == []


def test_a_file_system_without_unnamed_files_stages_them(tmp_path: Path) -> None:
    """Where a folder cannot hold unnamed files (``O_TMPFILE`` refused: a ramfs; here a folder that is a file
    stands for one), the probe says so, leaving nothing behind; on ext4 it finds them and leaves nothing either."""
    assert local._names_unnamed_files(str(tmp_path)) and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_bytes(b"")
    assert not local._names_unnamed_files(str(tmp_path / "file"))



def test_the_etag_is_an_attribute_of_the_object_and_another_bucket_reads_it(tmp_path: Path) -> None:
    """The ETag travels with the object (one attribute, set before the fsync and the rename): no ETag file is
    written, and a bucket opened later on the same folder (a restart) answers head() from it without reading the
    object (its bytes changed behind the bucket's back, its size and time kept, still give the kept ETag)."""
    bucket = LocalBackend(tmp_path / "bucket")
    assert bucket.attributes
    data = os.urandom(30_000)
    stored = bucket.put(KEY, data)
    path = tmp_path / "bucket" / KEY
    assert kept_etag(path) == stored.etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert not (tmp_path / "bucket.meta" / "images_for_detection").exists()
    before = path.stat()
    path.write_bytes(os.urandom(30_000))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert LocalBackend(tmp_path / "bucket").head(KEY) == stored


def test_an_object_stored_with_an_etag_file_is_still_read(tmp_path: Path) -> None:
    """An object stored before the attributes (its ETag in ``bucket.meta``, as the bucket wrote it then) keeps the
    ETag of its file: read, not computed (the file's ETag here is not the bytes' MD5, so only reading gives it)."""
    bucket = LocalBackend(tmp_path / "bucket")
    path, meta = tmp_path / "bucket" / KEY, tmp_path / "bucket.meta" / KEY
    for file, content in ((path, b"stored by an earlier version"), (meta, b"0123456789abcdef0123456789abcdef")):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content)
    assert bucket.head(KEY).etag == "0123456789abcdef0123456789abcdef"
    assert [info.etag for info in bucket.list("images_for_detection/")] == ["0123456789abcdef0123456789abcdef"]


def test_a_file_placed_or_rewritten_by_hand_gets_its_etag_computed_and_kept(tmp_path: Path) -> None:
    """A file copied into the bucket by hand (no attribute, no ETag file) gets its MD5, kept as its attribute for
    the next reader; rewritten in place later (the attribute stays, the time moves), it gets the new one."""
    bucket = LocalBackend(tmp_path / "bucket")
    path = tmp_path / "bucket" / KEY
    path.parent.mkdir(parents=True)
    path.write_bytes(b"placed by hand")
    assert bucket.head(KEY).etag == hashlib.md5(b"placed by hand").hexdigest() == kept_etag(path)
    with path.open("r+b") as rewritten:
        rewritten.write(b"PLACED")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))  # a coarse clock's tick
    assert bucket.head(KEY).etag == hashlib.md5(b"PLACED by hand").hexdigest() == kept_etag(path)


def test_the_same_bytes_again_are_not_written(tmp_path: Path) -> None:
    """A put of the bytes already stored answers the stored object, ``unchanged``, and writes nothing (same file,
    same time); other bytes of the same size replace it."""
    bucket = LocalBackend(tmp_path / "bucket")
    stored = bucket.put(KEY, b"first bytes")
    path = tmp_path / "bucket" / KEY
    before = path.stat()
    again = bucket.put(KEY, b"first bytes")
    assert again.unchanged and again.model_copy(update={"unchanged": False}) == stored
    assert (path.stat().st_ino, path.stat().st_mtime_ns, path.stat().st_ctime_ns) == (
        before.st_ino, before.st_mtime_ns, before.st_ctime_ns)
    other = bucket.put(KEY, b"other bytes")
    assert not other.unchanged and other.etag != stored.etag and bucket.get(KEY) == b"other bytes"


def test_a_file_system_without_extended_attributes_keeps_etags_in_files(no_xattr_folder: Path) -> None:
    """Where user extended attributes are refused (a ramfs), the bucket says so once and keeps each ETag in a file
    of ``bucket.meta``: written by a put, read by head(), computed for a file placed by hand, unchanged bytes
    still seen."""
    bucket = LocalBackend(no_xattr_folder / "bucket")
    assert not bucket.attributes
    stored = bucket.put(KEY, b"some bytes")
    assert (no_xattr_folder / "bucket.meta" / KEY).read_text() == stored.etag
    assert LocalBackend(no_xattr_folder / "bucket").head(KEY) == stored
    assert bucket.put(KEY, b"some bytes").unchanged
    by_hand = no_xattr_folder / "bucket" / "images_for_detection" / "by-hand.jpg"
    by_hand.write_bytes(b"placed by hand")
    assert bucket.head("images_for_detection/by-hand.jpg").etag == hashlib.md5(b"placed by hand").hexdigest()
    assert (no_xattr_folder / "bucket.meta" / "images_for_detection" / "by-hand.jpg").read_text() == \
        hashlib.md5(b"placed by hand").hexdigest()
