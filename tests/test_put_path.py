"""The upload's path through the local bucket (issue 15, the PUT): what a put leaves on disk, what it answers,
and staged files (the refusal of every way out of the bucket, a put included: test_storage.py)."""

from __future__ import annotations

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
    assert (tmp_path / "bucket.meta" / KEY).read_text() == stored.etag
    assert list((tmp_path / "bucket.tmp").iterdir()) == []
    again = bucket.put(KEY, b"other bytes")
    assert bucket.get(KEY) == b"other bytes" and bucket.head(KEY).etag == again.etag != stored.etag
    assert [info.key for info in bucket.list("images_for_detection/")] == [KEY]
    assert bucket.delete(KEY) and not bucket.delete(KEY)
    with pytest.raises(ObjectNotFound):
        bucket.get(KEY)


def test_a_failed_put_leaves_no_staged_file_and_a_left_over_one_is_passed_over(tmp_path: Path) -> None:
    """A put whose rename fails (a folder stands at the key) raises and removes its staged file; staged names a
    crashed process with the same process id left behind are skipped, not overwritten."""
    bucket = LocalBackend(tmp_path / "bucket")
    (tmp_path / "bucket" / "images_for_detection" / "taken.jpg").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        bucket.put("images_for_detection/taken.jpg", b"x")
    assert list((tmp_path / "bucket.tmp").iterdir()) == []
    upcoming = next(local._STAGED) + 1
    left = [tmp_path / "bucket.tmp" / f"{os.getpid()}-{upcoming + n}.part" for n in range(3)]
    for path in left:
        path.write_bytes(b"left by a crash")
    bucket.put("images_for_detection/new.jpg", b"new")
    assert bucket.get("images_for_detection/new.jpg") == b"new"
    assert sorted((tmp_path / "bucket.tmp").iterdir()) == sorted(left)
    assert all(path.read_bytes() == b"left by a crash" for path in left)

