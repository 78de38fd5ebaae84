"""The upload pipeline prepares a batch's images on the prepare pool (not on its workflow thread): uploads that
arrive together are detected as the synchronous API detects them, and an image that cannot be decoded is
rejected with the reason decoding gives, beside the good ones of its batch."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image

from conftest import Server
from images import blend, upload_training_set
from labelloop.modeling.images import ImageRejected, prepare

pytestmark = pytest.mark.timeout(600)


def _truncated_jpeg() -> bytes:
    """A JPEG whose header reads (so the PUT stores it) but whose pixels stop halfway."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(blend(7))).convert("RGB").save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def _reason(data: bytes) -> str:
    """What decoding says about ``data`` (the reason its detection event must record)."""
    with pytest.raises(ImageRejected) as rejected:
        prepare(data, view="letterbox_fast")
    return rejected.value.reason


def test_a_batch_is_detected_as_the_sync_api_detects_and_a_broken_image_is_rejected_with_its_reason(
        make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(LABELLOOP_UPLOAD_BATCH_SECONDS="1")
    broken = _truncated_jpeg()
    uploads = {f"images_for_detection/prep/{i}.png": blend(i) for i in range(6)}
    uploads["images_for_detection/prep/broken.jpg"] = broken
    with server.client() as api:
        upload_training_set(api, 5)
        assert server.wait_run(api.post("/training/check").json()["run_id"], timeout=400)["output"]["version"] == "v1"

        def put(key: str) -> dict[str, Any]:
            with server.client() as own:
                response = own.put(f"/objects/{key}", content=uploads[key])
                assert response.status_code == 201, response.text
                return response.json()

        with ThreadPoolExecutor(4) as pool:
            stored = list(pool.map(put, uploads))
        run_ids = {item["run_id"] for item in stored}
        assert len(run_ids) < len(uploads), "uploads that arrived together share runs"
        assert all(server.wait_run(run_id)["status"] == "SUCCESS" for run_id in run_ids)
        events = {e["object_key"]: e for e in api.get("/detections", params={"limit": 100}).json()}
        rejected = events.pop("images_for_detection/prep/broken.jpg")
        assert rejected["status"] == "REJECTED" and rejected["label"] is None
        assert rejected["status_message"] == _reason(broken)
        for key, event in events.items():
            if not key.startswith("images_for_detection/prep/"):
                continue
            assert event["status"] == "DETECTED" and event["model_version"] == "v1", event
            answer = api.post("/detect", files={"file": ("image.png", uploads[key], "image/png")}).json()
            recorded = {label["name"]: label["confidence"] for label in event["labels"]}
            detected = {label["name"]: label["confidence"] for label in answer["labels"]}
            assert recorded == pytest.approx(detected, abs=0.01), key  # a batch's floats, not one image's
            assert event["label"] == answer["labels"][0]["name"], key
