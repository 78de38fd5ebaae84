"""Each model version's input view (Model-Input-View: letterbox-fast by default, letterbox, crop as before,
letterbox-draft) over
the API: a version keeps the view it was trained on, POST /detect prepares each image with the view of the version
that answers it, the ONNX export says which, and a version that replaces one of another view starts cold."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from sqlalchemy import select

from conftest import ADMIN_PASSWORD, Server
from images import box_logo, smile_logo, upload_training_set
from labelloop import db
from labelloop.modeling.images import prepare, view_key
from labelloop.modeling.models import ModelVersion
from labelloop.parameters import service as parameters
from test_console_web import sign_in_client
from test_silent_errors import assert_v2_starts_cold

pytestmark = pytest.mark.timeout(600)
VIEW = "Model-Input-View"


def _wide(logo: bytes, width: int = 480) -> bytes:
    """The logo at the left end of a width×160 white banner: a centre crop cuts most of it away."""
    banner = Image.new("RGB", (width, 160), (255, 255, 255))
    banner.paste(Image.open(io.BytesIO(logo)).convert("RGB"), (0, 0))
    out = io.BytesIO()
    banner.save(out, "PNG")
    return out.getvalue()


def _train(server: Server, api, offset: int) -> str:  # type: ignore[no-untyped-def]
    upload_training_set(api, 5, offset=offset)
    run = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
    return run["output"]["version"]


def _offline(model: bytes, images: list[bytes], view: str) -> tuple[dict[str, str], np.ndarray]:
    """The exported model's metadata and its probabilities on ``images`` prepared as ``view`` (a VIEWS key)."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    [probabilities] = session.run(None, {"input": np.stack([prepare(data, view=view) for data in images])})
    return session.get_modelmeta().custom_metadata_map, probabilities


def _same_confidences(answers: list[dict], labels: list[str], probabilities: np.ndarray) -> bool:
    return all(abs(row[labels.index(label["name"])] * 100 - label["confidence"]) < 1e-2
               for row, answer in zip(probabilities, answers, strict=True) for label in answer["labels"])


def test_each_version_answers_on_its_own_input_view(server: Server) -> None:
    # the last one (420 px) letterbox-draft reduces by 2 (long side ≥ 2 × 196) and letterbox-fast does not
    images = [_wide(smile_logo(60)), _wide(box_logo(61)), _wide(smile_logo(62)), _wide(box_logo(63), 420)]
    with server.client() as api:
        assert api.get(f"/parameters/{VIEW}").json()["value"] == "letterbox-fast"
        refused = api.put(f"/parameters/{VIEW}", json={"value": "square"})
        assert refused.status_code == 422 and "one of letterbox-fast, letterbox, crop, letterbox-draft" in refused.text
        assert api.put(f"/parameters/{VIEW}", json={"value": "crop"}).status_code == 200
        assert _train(server, api, 0) == "v1"
        assert api.put(f"/parameters/{VIEW}", json={"value": "letterbox"}).status_code == 200
        assert _train(server, api, 5) == "v2"
        v1, v2 = api.get("/models/v1").json(), api.get("/models/v2").json()
        assert (v1["input_view"], v2["input_view"]) == ("crop", "letterbox")
        assert v2["status"] == "RUNNING", v2["status_message"]
        assert v2["warm_start"] is None  # replaced a crop version: a cold start
        served = {"v2": [api.post("/detect", files={"file": ("a.png", d)}).json() for d in images]}
        exported = {v: api.get(f"/models/{v}/export").content for v in ("v1", "v2")}
        server.wait_run(api.post("/models/v1/deploy").json()["run_id"])
        served["v1"] = [api.post("/detect", files={"file": ("a.png", d)}).json() for d in images]
        assert api.get("/models/v1").json()["input_view"] == "crop"  # deploying again changes nothing
        for view, more_images, version in (("letterbox-fast", 10, "v3"), ("letterbox-draft", 15, "v4")):
            assert api.put(f"/parameters/{VIEW}", json={"value": view}).status_code == 200
            assert _train(server, api, more_images) == version
            trained = api.get(f"/models/{version}").json()
            assert trained["input_view"] == view and trained["status"] == "RUNNING", trained["status_message"]
            served[version] = [api.post("/detect", files={"file": ("a.png", d)}).json() for d in images]
            exported[version] = api.get(f"/models/{version}/export").content
    with httpx.Client(base_url=server.url, follow_redirects=True) as browser:
        sign_in_client(browser, "admin", ADMIN_PASSWORD)
        page = browser.get("/models/v2").text
        assert 'id="model-input-view">letterbox' in page, "the model page says how its images are prepared"
        assert "padded" in page and "reduced scale" not in page
        page = browser.get("/models/v3").text
        assert 'id="model-input-view">letterbox-fast' in page and "decoded at reduced scale" in page
        assert "centre 224×224 square" in browser.get("/models/v1").text
        page = browser.get("/models/v4").text
        assert 'id="model-input-view">letterbox-draft' in page and "down to 7/8" in page
    # each version's answers are its exported model's on its own view, not on the view nearest to it
    other = {"crop": "letterbox", "letterbox": "orig", "letterbox-fast": "letterbox",
             "letterbox-draft": "letterbox_fast"}
    for version, view in (("v1", "crop"), ("v2", "letterbox"), ("v3", "letterbox-fast"), ("v4", "letterbox-draft")):
        assert {answer["model_version"] for answer in served[version]} == {version}
        meta, probabilities = _offline(exported[version], images, view_key(view))
        assert meta["input_view"] == view and ("long side" in meta["preprocessing"]) == (view != "crop")
        assert ("DCT" in meta["preprocessing"]) == (view in ("letterbox-fast", "letterbox-draft"))
        labels = json.loads(meta["labels"])
        assert _same_confidences(served[version], labels, probabilities), (version, served[version])
        assert not _same_confidences(served[version], labels, _offline(exported[version], images, other[view])[1])


@pytest.fixture
def database(tmp_path: Path) -> Iterator[None]:
    db.init(f"sqlite:///{tmp_path / 'app.db'}")
    with db.session() as session:
        parameters.ensure_defaults(session=session)
        session.add(ModelVersion(version="v1", status="RUNNING", labels=["a", "b"], head=b"v1's head"))
    yield
    db.close()


def test_a_version_on_another_input_view_starts_cold(database: None) -> None:
    """The previous head never sees the other view's embeddings: no backtest, and serving does not compare."""
    with db.session() as session:
        assert session.scalar(select(ModelVersion).where(ModelVersion.version == "v1")).input_view == "crop"
    assert_v2_starts_cold(input_view="letterbox")
