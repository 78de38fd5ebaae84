"""The bucket on an S3-compatible service: a real S3 API server on loopback (moto's server mode).

Uploads through the API land in the bucket; uploads made straight to the bucket start the same "object
created" runs through S3 event notifications, exactly once however often (and by whichever path) they come.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from conftest import Server, wait_until
from images import box_logo, smile_logo

TOKEN = "s3-events-shared-secret"
FOLDERS = ["a2i-human-loop-data/", "evaluation/", "images_for_detection/", "images_labeled_by_folder/",
           "manifests/"]


def notification(bucket: str, key: str, etag: str = "", event: str = "s3:ObjectCreated:Put",
                 size: int = 1) -> dict[str, Any]:
    """What MinIO's webhook target posts (AWS's records are the same, with eventName "ObjectCreated:Put")."""
    encoded = quote_plus(key, safe="/")
    return {"EventName": event, "Key": f"{bucket}/{encoded}", "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-11-28T10:00:00.000Z",
        "eventName": event, "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"}, "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": encoded, "size": size, "eTag": etag, "contentType": "image/png",
                          "sequencer": "17A2B3C4D5E6F708"}}}]}


def post_event(server: Server, body: Any, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/api/v1/events/s3", json=body, headers=headers, timeout=30)


@pytest.fixture
def s3_labelloop(make_server, s3_server) -> tuple[Server, Any, str]:
    bucket = s3_server.bucket()
    server = make_server(**s3_server.env(bucket), LABELLOOP_S3_EVENTS_TOKEN=TOKEN)
    return server, s3_server.client(), bucket


def test_folders_and_objects_live_in_the_bucket(s3_labelloop) -> None:
    server, s3, bucket = s3_labelloop
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    markers = sorted(item["Key"] for item in listed if item["Key"].endswith("/"))
    assert markers == FOLDERS
    assert all(item["Size"] == 0 for item in listed if item["Key"].endswith("/"))

    data = smile_logo(1)
    with server.client() as api:
        stored = api.put("/objects/images_labeled_by_folder/amazon_logo/one.png", content=data)
        assert stored.status_code == 201, stored.text
        assert stored.json()["etag"] == hashlib.md5(data).hexdigest()
        head = s3.head_object(Bucket=bucket, Key="images_labeled_by_folder/amazon_logo/one.png")
        assert head["ETag"].strip('"') == stored.json()["etag"] and head["ContentLength"] == len(data)
        # The same bytes again are not written again (the bucket's own check: a HEAD first).
        again = api.put("/objects/images_labeled_by_folder/amazon_logo/one.png", content=data)
        assert again.status_code == 200 and again.json()["unchanged"], again.text
        assert again.json()["etag"] == stored.json()["etag"]
        # Objects put straight into the bucket are listed and served like the others; markers are not objects.
        s3.put_object(Bucket=bucket, Key="manifests/by-hand.json", Body=b"{}")
        keys = [o["key"] for o in api.get("/objects", params={"prefix": ""}).json()]
        assert keys == ["images_labeled_by_folder/amazon_logo/one.png", "manifests/by-hand.json"]
        assert api.get("/objects/manifests/by-hand.json").content == b"{}"
        assert api.get("/objects/manifests/missing.json").status_code == 404
        assert api.delete("/objects/manifests/by-hand.json").status_code == 200
        assert api.delete("/objects/manifests/by-hand.json").status_code == 404
        assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="manifests/by-hand")


def test_direct_uploads_start_runs_through_event_notifications(s3_labelloop) -> None:
    server, s3, bucket = s3_labelloop
    key = "images_for_detection/direct photo+1 é.png"  # spaces, '+' and UTF-8 arrive URL-encoded
    data = box_logo(3)
    etag = s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')

    answer = post_event(server, notification(bucket, key, etag, size=len(data)))
    assert answer.status_code == 200, answer.text
    [started] = answer.json()["started"]
    assert started["key"] == key and started["etag"] == etag and not started["already_started"]
    run = server.wait_run(started["run_id"])
    assert run["status"] == "SUCCESS", run
    assert run["output"]["branch"] == "detection" and run["input"]

    # The same notification again (S3 delivers at least once): the same run, nothing new.
    again = post_event(server, notification(bucket, key, etag, size=len(data))).json()
    assert again["started"][0]["run_id"] == started["run_id"] and again["started"][0]["already_started"]

    with server.client() as api:
        # An upload through the API and then its notification: one run, not two.
        via_api = api.put("/objects/images_for_detection/via-api.png", content=smile_logo(4)).json()
        echoed = post_event(server, notification(bucket, "images_for_detection/via-api.png", via_api["etag"]))
        assert echoed.json()["started"][0]["already_started"]
        wait_until(lambda: len(_events(api, {key, "images_for_detection/via-api.png"})) == 2, 60, 0.2,
                   "both detection events")
        events = _events(api, {key, "images_for_detection/via-api.png"})
        assert sorted(e["object_key"] for e in events) == sorted([key, "images_for_detection/via-api.png"])
        runs = api.get("/runs", params={"limit": 500}).json()
        created = [r for r in runs if r["name"] == "object_created"]
        assert len(created) == 2

        # A labeled image put straight into the bucket counts as training data.
        labeled = "images_labeled_by_folder/aws_logo/direct.png"
        s3.put_object(Bucket=bucket, Key=labeled, Body=box_logo(5))
        routed = post_event(server, notification(bucket, labeled, event="ObjectCreated:Put")).json()
        run = server.wait_run(routed["started"][0]["run_id"])
        assert run["output"] == {"branch": "training data", "key": labeled, "label": "aws_logo"}
        check = server.wait_run(api.post("/training/check").json()["run_id"])
        assert check["output"]["labeled_images"] == 1


def test_records_that_start_nothing_say_why(s3_labelloop) -> None:
    server, s3, bucket = s3_labelloop
    s3.put_object(Bucket=bucket, Key="manifests/notes.json", Body=b"{}")
    records = [notification(bucket, "images_for_detection/gone.png", "abc")["Records"][0],
               notification(bucket, "images_for_detection/x.png", event="s3:ObjectRemoved:Delete")["Records"][0],
               notification("another-bucket", "images_for_detection/x.png")["Records"][0],
               notification(bucket, "manifests/notes.json")["Records"][0],
               notification(bucket, "images_for_detection/")["Records"][0]]
    answer = post_event(server, {"Records": records})
    assert answer.status_code == 200, answer.text
    reasons = [item["reason"] for item in answer.json()["ignored"]]
    assert answer.json()["started"] == [] and len(reasons) == 5
    assert reasons[0] == "no longer in the bucket"
    assert reasons[1] == "not an ObjectCreated event"
    assert "another-bucket" in reasons[2]
    assert "images_for_detection/" in reasons[3]
    assert "folder marker" in reasons[4]
    # AWS's test event and an SNS-wrapped notification (its HTTP endpoints use Basic credentials).
    assert post_event(server, {"Service": "Amazon S3", "Event": "s3:TestEvent"}).json()["records"] == 0
    key = "images_for_detection/via-sns.png"
    s3.put_object(Bucket=bucket, Key=key, Body=smile_logo(9))
    sns = {"Type": "Notification", "Message": json.dumps(notification(bucket, key))}
    basic = httpx.post(f"{server.url}/api/v1/events/s3", json=sns, auth=("sns", TOKEN), timeout=30)
    assert basic.status_code == 200 and basic.json()["started"][0]["key"] == key


def test_event_endpoint_needs_the_shared_secret(s3_labelloop) -> None:
    server, _s3, bucket = s3_labelloop
    body = notification(bucket, "images_for_detection/a.png")
    assert post_event(server, body, token=None).status_code == 401
    assert post_event(server, body, token="wrong").status_code == 401
    assert httpx.post(f"{server.url}/api/v1/events/s3", json=body, auth=("x", "wrong")).status_code == 401
    # An API token of a user is not the shared secret either.
    assert post_event(server, body, token=server.token()).status_code == 401
    assert post_event(server, {"not": "a notification"}).status_code == 422
    assert httpx.post(f"{server.url}/api/v1/events/s3", content=b"{", headers={
        "Authorization": f"Bearer {TOKEN}"}).status_code == 422


def test_event_endpoint_is_off_without_a_secret_or_an_s3_bucket(make_server, s3_server) -> None:
    bucket = s3_server.bucket()
    no_secret = make_server(**s3_server.env(bucket))
    assert post_event(no_secret, notification(bucket, "images_for_detection/a.png")).status_code == 404
    local = make_server(LABELLOOP_S3_EVENTS_TOKEN=TOKEN)
    assert post_event(local, notification(bucket, "images_for_detection/a.png")).status_code == 409


def test_a_missing_bucket_stops_the_start_with_the_reason(tmp_path, s3_server) -> None:
    import subprocess
    import sys

    from conftest import server_env

    env = server_env(**s3_server.env("no-such-bucket"))
    done = subprocess.run([sys.executable, "-m", "labelloop", "worker", "--home", str(tmp_path / "home")],
                          env=env, capture_output=True, timeout=120)
    assert done.returncode != 0
    assert b"bucket 'no-such-bucket' does not exist" in done.stdout + done.stderr


def _events(api: httpx.Client, keys: set[str]) -> list[dict[str, Any]]:
    return [e for e in api.get("/detections", params={"limit": 1000}).json() if e["object_key"] in keys]


def test_notification_shapes_parse_to_the_same_records() -> None:
    from labelloop.storage.backends.s3 import NotificationError, is_object_created, parse_notification

    aws = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": "photos"}, "object": {
                            "key": "images_for_detection/summer+2024/%C3%A9t%C3%A9+%2B1.jpg", "size": 10,
                            "eTag": "0123456789abcdef0123456789abcdef"}}}]}
    eventbridge = {"version": "0", "detail-type": "Object Created", "source": "aws.s3", "detail": {
        "bucket": {"name": "photos"}, "reason": "PutObject",
        "object": {"key": "images_for_detection/summer 2024/été +1.jpg", "size": 10,
                   "etag": "0123456789abcdef0123456789abcdef"}}}
    expected = {"event": "ObjectCreated:Put", "bucket": "photos", "key": "images_for_detection/summer 2024/été +1.jpg",
                "etag": "0123456789abcdef0123456789abcdef", "size": 10}
    assert parse_notification(aws) == [expected]
    assert parse_notification(eventbridge) == [{**expected, "event": "ObjectCreated:PutObject"}]
    assert is_object_created("s3:ObjectCreated:CompleteMultipartUpload") and is_object_created("ObjectCreated:Copy")
    assert not is_object_created("s3:ObjectRemoved:Delete")
    for bad in ([], {"Records": "x"}, {"Records": [1]}, {"something": "else"}):
        with pytest.raises(NotificationError):
            parse_notification(bad)
