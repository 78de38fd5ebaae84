"""A bucket on any S3-compatible service (AWS S3, MinIO, Ceph RGW, …) through boto3.

Endpoint, credentials and region come from where the AWS tools read them: ``LABELLOOP_S3_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the rest of the standard credential chain; ``AWS_REGION`` or
``AWS_DEFAULT_REGION``. Folders are zero-byte ``folder/`` markers, as the S3 console makes them.
"""

from __future__ import annotations

import hashlib
import os
from base64 import b64encode
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from labelloop.storage.backends.base import ObjectNotFound
from labelloop.storage.models import ObjectInfo

MISSING = {"404", "NoSuchKey", "NotFound"}


class BucketUnavailable(RuntimeError):
    """The bucket cannot be reached or does not exist; the message says which and where."""


def clean_etag(etag: str | None) -> str:
    """An ETag without the quotes S3 puts around it."""
    return (etag or "").strip().strip('"')


class S3Backend:
    """Objects in ``bucket``; keys are used as they are (they must be validated first)."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, addressing_style: str | None = None,
                 client: Any = None) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL")
        self.client = client or self._client(addressing_style)

    def _client(self, addressing_style: str | None) -> Any:
        import boto3
        from botocore.config import Config

        # A self-hosted endpoint seldom has a DNS name per bucket: address buckets by path there.
        style = addressing_style or ("path" if self.endpoint_url else "auto")
        config = Config(s3={"addressing_style": style}, retries={"mode": "standard", "max_attempts": 5},
                        max_pool_connections=32, connect_timeout=10, read_timeout=60,
                        signature_version="s3v4")
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def __repr__(self) -> str:
        return f"S3Backend(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    @staticmethod
    def _missing(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in MISSING

    def check(self) -> None:
        """Raise :class:`BucketUnavailable` unless the bucket exists and answers."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.endpoint_url or "AWS S3"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if str(code) in MISSING | {"NoSuchBucket"}:
                raise BucketUnavailable(f"bucket {self.bucket!r} does not exist at {where}; create it first "
                                        "(labelloop does not create buckets)") from exc
            raise BucketUnavailable(f"bucket {self.bucket!r} at {where} refused access ({code}): check the "
                                    "AWS_* credentials") from exc
        except BotoCoreError as exc:
            raise BucketUnavailable(f"cannot reach bucket {self.bucket!r} at {where}: {exc}") from exc

    def put(self, key: str, data: bytes) -> ObjectInfo:
        md5 = hashlib.md5(data, usedforsecurity=False)
        try:
            stored = self.head(key)
        except ObjectNotFound:
            stored = None
        if stored is not None and stored.size == len(data) and stored.etag == md5.hexdigest():
            return stored.model_copy(update={"unchanged": True})
        answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                        ContentMD5=b64encode(md5.digest()).decode())
        # S3's ETag is the content's MD5 for a simple put (not with SSE-KMS): keep what the service says,
        # since event notifications for this object will carry that one.
        etag = clean_etag(answer.get("ETag")) or md5.hexdigest()
        date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        return ObjectInfo(key=key, size=len(data), etag=etag, last_modified=_http_date(date))

    def get(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise
        with answer["Body"] as body:
            return body.read()

    def head(self, key: str) -> ObjectInfo:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise
        return ObjectInfo(key=key, size=answer["ContentLength"], etag=clean_etag(answer.get("ETag")),
                          last_modified=_utc(answer["LastModified"]))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):  # a folder marker, not an object
                    continue
                found.append(ObjectInfo(key=item["Key"], size=item["Size"], etag=clean_etag(item.get("ETag")),
                                        last_modified=_utc(item["LastModified"])))
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        # S3 deletes succeed whether or not the key exists: ask first to answer whether it did.
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def ensure_folder(self, prefix: str) -> None:
        marker = prefix if prefix.endswith("/") else prefix + "/"
        try:
            self.client.head_object(Bucket=self.bucket, Key=marker)
        except Exception as exc:
            if not self._missing(exc):
                raise
            self.client.put_object(Bucket=self.bucket, Key=marker, Body=b"")

    def folders(self, prefix: str = "") -> list[str]:
        """Sub-folders directly under ``prefix``: markers and the common prefixes of objects."""
        found: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                         Delimiter="/"):
            found.update(entry["Prefix"] for entry in page.get("CommonPrefixes", []))
        return sorted(found)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _http_date(value: str | None) -> datetime:
    if value:
        try:
            return parsedate_to_datetime(value).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)


# ── event notifications ──────────────────────────────────────────────────────


class NotificationError(ValueError):
    """A body that is not an S3 event notification; the message says what was expected."""


def parse_notification(body: Any) -> list[dict[str, Any]]:
    """The records of an S3 event notification, each as ``{event, bucket, key, etag, size}``.

    Accepted shapes: the standard ``{"Records": [...]}`` that AWS S3 (to SQS, SNS, Lambda) and MinIO's
    webhook target send, with the key URL-encoded (``+`` for a space); the same wrapped in an SNS HTTP
    ``Notification``; and EventBridge's ``Object Created`` event (key not encoded). Test events and
    SNS subscription messages have no records.
    """
    from urllib.parse import unquote_plus

    if not isinstance(body, dict):
        raise NotificationError("expected a JSON object with Records (an S3 event notification)")
    if body.get("Type") == "Notification" and isinstance(body.get("Message"), str):  # SNS HTTP delivery
        import json

        try:
            return parse_notification(json.loads(body["Message"]))
        except ValueError as exc:
            raise NotificationError(f"the SNS message is not an S3 event notification: {exc}") from exc
    if body.get("source") == "aws.s3" and isinstance(body.get("detail"), dict):  # EventBridge
        detail = body["detail"]
        return [{"event": f"ObjectCreated:{detail.get('reason', 'PutObject')}"
                 if body.get("detail-type") == "Object Created" else str(body.get("detail-type")),
                 "bucket": _dig(detail, "bucket", "name"), "key": _dig(detail, "object", "key"),
                 "etag": clean_etag(_dig(detail, "object", "etag")), "size": _dig(detail, "object", "size")}]
    records = body.get("Records")
    if records is None:
        if body.get("Event") == "s3:TestEvent" or body.get("Type") in ("SubscriptionConfirmation",
                                                                         "UnsubscribeConfirmation"):
            return []
        raise NotificationError("expected a JSON object with Records (an S3 event notification)")
    if not isinstance(records, list):
        raise NotificationError("Records must be a list")
    parsed = []
    for record in records:
        if not isinstance(record, dict):
            raise NotificationError("each record must be an object")
        key = _dig(record, "s3", "object", "key")
        parsed.append({"event": str(record.get("eventName", "")), "bucket": _dig(record, "s3", "bucket", "name"),
                       "key": unquote_plus(key) if isinstance(key, str) else None,
                       "etag": clean_etag(_dig(record, "s3", "object", "eTag")),
                       "size": _dig(record, "s3", "object", "size")})
    return parsed


def is_object_created(event_name: str) -> bool:
    """``ObjectCreated:Put`` (AWS), ``s3:ObjectCreated:CompleteMultipartUpload`` (MinIO) and the like."""
    return event_name.removeprefix("s3:").startswith("ObjectCreated:")


def _dig(data: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data
