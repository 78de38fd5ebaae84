"""The bucket: key rules, the configured backend, and object operations that fire "object created"."""

from __future__ import annotations

import errno
import logging
import mimetypes
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from labelloop import labels
from labelloop.config import get_settings
from labelloop.storage.backends.base import Backend, ObjectNotFound
from labelloop.storage.backends.local import LocalBackend
from labelloop.storage.backends.s3 import S3Backend, is_object_created
from labelloop.storage.models import BUCKET_FOLDERS, DETECTION_FOLDER, LABELED_FOLDER, ObjectInfo

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
EVENT_PREFIXES = (DETECTION_FOLDER, LABELED_FOLDER)

__all__ = ["InvalidKey", "ObjectNotFound", "backend", "validate_key"]


class StorageFull(OSError):
    """The bucket's storage has no space left; nothing was stored."""


class InvalidKey(ValueError):
    """An object key that is not allowed; the message says why and what is allowed."""


def validate_key(key: str, *, folder: bool = False) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidKey`.

    Allowed: 1-1024 bytes of UTF-8, ``/``-separated segments of 1-255 bytes, no ``.`` or ``..`` segments
    (also when percent-encoded), no leading ``/``, no backslash, no control or bidirectional-override
    characters. A folder key ends in ``/``; an object key does not.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("the key is empty; give a path such as images_for_detection/photo.jpg")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"the key is longer than {MAX_KEY_BYTES} bytes")
    if not (key.isascii() and key.isprintable()):  # printable ASCII has no control or text-direction character
        _refuse_control_characters(key)
    if "\\" in key:
        raise InvalidKey("the key contains a backslash; use / to separate folders")
    if key.startswith("/"):
        raise InvalidKey("the key starts with '/'; keys are relative to the bucket")
    body = key[:-1] if folder and key.endswith("/") else key
    if body.endswith("/"):
        raise InvalidKey("an object key may not end with '/'; that names a folder")
    for segment in body.split("/"):
        if not segment:
            raise InvalidKey("the key has an empty folder name ('//')")
        if unquote(segment).strip() in (".", ".."):
            raise InvalidKey("the key contains a '.' or '..' segment; paths may not leave their folder")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"a folder or file name in the key is longer than {MAX_SEGMENT_BYTES} bytes")
    return key


def _refuse_control_characters(key: str) -> None:
    """:class:`InvalidKey` for the first control, surrogate or text-direction character in ``key``, if any."""
    for char in key:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") or (category == "Cf" and unicodedata.bidirectional(char) in
                                         ("RLO", "LRO", "RLE", "LRE", "RLI", "LRI", "FSI", "PDF", "PDI")):
            raise InvalidKey(f"the key contains the control character U+{ord(char):04X}; "
                             "keys may not contain control or text-direction characters")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is empty or a safe key prefix."""
    if prefix:
        validate_key(prefix, folder=True)
    return prefix


@lru_cache(maxsize=4)
def _backend_for(url: str, endpoint_url: str | None = None, addressing_style: str | None = None) -> Backend:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBackend(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc or parsed.path.strip("/") or parsed.query:
            raise ValueError(f"unsupported storage URL {url!r}: name the bucket alone, as s3://BUCKET "
                             "(the keys are the bucket's folders)")
        bucket = S3Backend(parsed.netloc, endpoint_url=endpoint_url, addressing_style=addressing_style)
        bucket.check()
        return bucket
    raise ValueError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket")


_current: tuple[Any, Backend] | None = None  # the settings object last asked about, and its backend


def backend() -> Backend:
    """The configured bucket backend (looked up again only when the settings in force are another object:
    the bucket's URL resolves the home folder on the file system, 1 % of the upload pipeline's CPU)."""
    global _current
    settings = get_settings()
    current = _current
    if current is not None and current[0] is settings:
        return current[1]
    found = _backend_for(settings.bucket_url, settings.s3_endpoint_url, settings.s3_addressing_style)
    _current = (settings, found)
    return found


def bucket_name() -> str | None:
    """The S3 bucket's name when the bucket is on an S3-compatible service, else ``None``."""
    parsed = urlparse(get_settings().bucket_url)
    return parsed.netloc if parsed.scheme == "s3" else None


def ensure_bucket() -> None:
    """Create the bucket's five folders."""
    for folder in BUCKET_FOLDERS:
        backend().ensure_folder(folder)


def fires_event(key: str) -> bool:
    """Whether a new object at ``key`` starts an "object created" run."""
    return key.startswith(EVENT_PREFIXES)


def put_object(key: str, data: bytes, *, source: str, actor: str = "system") -> ObjectInfo:
    """Store an object (starting its "object created" run is the caller's: ``loop.actions.store_object``).

    The same bytes already stored at ``key`` are not written again: the answer says ``unchanged``.
    """
    validate_key(key)
    key = labeled_key(key)
    try:
        info = backend().put(key, data)
    except (IsADirectoryError, NotADirectoryError) as exc:  # a local bucket's folders and files share the names
        raise InvalidKey(_name_taken(key, exc)) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        log.error("object not stored: no space left", extra={"key": key, "size": len(data), "source": source})
        raise StorageFull(exc.errno, f"the bucket's storage is full: {key!r} ({len(data)} bytes) was not stored; "
                          "free space or delete objects, then upload it again") from exc
    info.content_type = content_type(key)
    if info.unchanged:
        log.info("object unchanged", extra={"key": key, "etag": info.etag, "source": source, "actor": actor})
    else:
        log.info("object stored", extra={"key": key, "size": info.size, "etag": info.etag, "source": source,
                                         "actor": actor})
    return info


def _name_taken(key: str, error: OSError) -> str:
    """Why a local bucket cannot store an object at ``key`` (``error``: what the file system said): a folder of
    objects has that name, or a folder of the key is an object."""
    if isinstance(error, IsADirectoryError):
        return (f"{key!r} is a folder of the bucket (objects are stored under {key + '/'!r}): an object cannot have "
                "its name; choose another name")
    parts = key.split("/")
    taken = next((prefix for n in range(1, len(parts)) if object_exists(prefix := "/".join(parts[:n]))), None)
    where = f"{taken!r} is an object" if taken else "a folder of the key is an object"
    return f"{where}, so it cannot also be a folder holding {key!r}; choose another folder"


def labeled_key(key: str) -> str:
    """``key`` with its label folder under ``images_labeled_by_folder/`` written as the label it stands for
    (NFC, no surrounding spaces: ``café`` from macOS joins ``café``, with a warning in the log), else
    :class:`InvalidKey`: a folder name that cannot be a label, or one that differs from an existing label
    only in letter case (``Red`` beside ``red``). Keys outside that folder are returned as they are."""
    folder = label_of(key)
    if folder is None:
        return key
    existing = [name[len(LABELED_FOLDER):].rstrip("/") for name in backend().folders(LABELED_FOLDER)]
    try:
        label = labels.check_new_label(folder, existing)
    except labels.InvalidLabel as exc:
        raise InvalidKey(f"the folder under {LABELED_FOLDER} names the label: {exc}") from None
    if label == folder:
        return key
    merged = LABELED_FOLDER + label + key[len(LABELED_FOLDER) + len(folder):]
    log.warning("label folder name written as its label", extra={"key": key, "stored_as": merged, "label": label})
    return merged


def get_object(key: str) -> tuple[ObjectInfo, bytes]:
    """An object's metadata and content."""
    validate_key(key)
    info = backend().head(key)
    info.content_type = content_type(key)
    return info, backend().get(key)


def read_object(key: str) -> bytes:
    """An object's content alone: what detection reads (no metadata, so no second look at the file and its ETag)."""
    validate_key(key)
    return backend().get(key)


def head_object(key: str) -> ObjectInfo:
    """An object's metadata."""
    validate_key(key)
    return backend().head(key)


def object_exists(key: str) -> bool:
    """Whether an object is stored at ``key``."""
    try:
        head_object(key)
    except ObjectNotFound:
        return False
    return True


def list_objects(prefix: str = "") -> list[ObjectInfo]:
    """Objects under ``prefix`` sorted by key."""
    return backend().list(validate_prefix(prefix))


def delete_object(key: str, *, actor: str = "system") -> bool:
    """Delete ``key``; returns whether it existed."""
    validate_key(key)
    existed = backend().delete(key)
    log.info("object deleted" if existed else "object to delete not found", extra={"key": key, "actor": actor})
    return existed


def content_type(key: str) -> str:
    """The media type guessed from a key's extension (``application/octet-stream`` if unknown)."""
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def created_object(record: dict[str, Any], bucket: str | None) -> tuple[ObjectInfo | None, str]:
    """The stored object an S3 event notification record reports as created, or None and why it is passed
    over (another event or bucket, a folder marker, outside the event folders, no longer there)."""
    key = record["key"]
    if not is_object_created(record["event"]):
        return None, "not an ObjectCreated event"
    if record["bucket"] != bucket:
        return None, f"bucket {record['bucket']!r} is not labelloop's bucket {bucket!r}"
    if not isinstance(key, str) or key.endswith("/"):
        return None, "a folder marker, not an object"
    if not fires_event(key):
        return None, "not under images_for_detection/ or images_labeled_by_folder/"
    try:
        return head_object(key), ""
    except InvalidKey as exc:
        return None, f"invalid key: {exc}"
    except ObjectNotFound:
        return None, "no longer in the bucket"


def label_of(key: str) -> str | None:
    """The label of a training image: its folder directly under ``images_labeled_by_folder/``."""
    if not key.startswith(LABELED_FOLDER):
        return None
    parts = key[len(LABELED_FOLDER):].split("/")
    return parts[0] if len(parts) >= 2 and parts[0] else None
