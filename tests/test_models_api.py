"""Model versions over the API: training, detect in every image form, deploy / roll back / stop, export."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from conftest import ADMIN_PASSWORD, Server, server_env, wait_until
from images import blend, box_logo, encode, smile_logo, upload_training_set
from labelloop.modeling import int8
from labelloop.modeling.images import prepare, view_key
from test_console_web import sign_in_client

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with model v1 serving, and a v2 trained on more images (also serving). Its int8 copies are built
    with reduce-range whatever the CPU (``LABELLOOP_INT8_WEIGHTS``; on a CPU with VNNI 'auto' would be full range)."""
    server = Server(home=tmp_path_factory.mktemp("models") / "home",
                    env=server_env(LABELLOOP_INT8_WEIGHTS="reduce-range")).start()
    with server.client() as api:
        assert api.post("/detect", files={"file": ("a.png", smile_logo(0))}).status_code == 409
        upload_training_set(api, 5)
        first = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
        assert first["output"]["version"] == "v1", first
        upload_training_set(api, 5, offset=5)
        second = server.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
        assert second["output"]["version"] == "v2", second
    yield server
    server.stop()


def detect(api, data: bytes, name: str = "image") -> dict:  # type: ignore[no-untyped-def]
    response = api.post("/detect", files={"file": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()


def test_versions_have_statuses_metrics_and_counts(trained: Server) -> None:
    with trained.client() as api:
        models = {m["version"]: m for m in api.get("/models").json()}
    assert models["v2"]["status"] == "RUNNING" and models["v1"]["status"] == "STOPPED"
    v2 = models["v2"]
    assert v2["image_count"] == 20 and v2["train_images"] + v2["test_images"] == 20
    assert v2["test_images"] >= 2
    evaluation = v2["evaluation"]
    assert {m["label"] for m in evaluation["per_label"]} == {"amazon_logo", "aws_logo"}
    for metrics in evaluation["per_label"]:
        assert {"precision", "recall", "f1", "support", "threshold"} <= set(metrics)
    assert len(evaluation["confusion_matrix"]) == 2
    assert v2["training_seconds"] > 0


def test_detect_returns_every_label_best_first(trained: Server) -> None:
    with trained.client() as api:
        answer = detect(api, box_logo(3))
    assert answer["model_version"] == "v2"
    names = [label["name"] for label in answer["labels"]]
    assert sorted(names) == ["amazon_logo", "aws_logo"] and names[0] == "aws_logo"
    confidences = [label["confidence"] for label in answer["labels"]]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0 <= c <= 100 for c in confidences) and confidences[0] >= 70


def _forms() -> dict[str, bytes]:
    rgb = Image.open(io.BytesIO(smile_logo(1))).convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    wide = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    frames = [rgb, Image.open(io.BytesIO(box_logo(1))).convert("RGB")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; the viewer turns it back
    rgb.rotate(90, expand=True).save(rotated, "JPEG", exif=exif, quality=95)
    return {"jpeg": encode(rgb, "JPEG"), "png-alpha": encode(rgba), "palette": encode(rgb.convert("P")),
            "grey": encode(rgb.convert("L")), "16-bit": encode(wide), "cmyk": encode(rgb.convert("CMYK"), "JPEG"),
            "gif-animated": gif.getvalue(), "webp": encode(rgb, "WEBP"), "exif-rotated": rotated.getvalue()}


@pytest.mark.parametrize("form", list(_forms()))
def test_common_image_forms_decode(trained: Server, form: str) -> None:
    with trained.client() as api:
        answer = detect(api, _forms()[form], f"logo.{form}")
    assert answer["labels"][0]["name"] == "amazon_logo", (form, answer)


@pytest.mark.parametrize(("data", "status"), [
    (b"", 422),
    (b"hello, I am text", 415),
    (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", 415),
    (b"<!doctype html><html><script>alert(1)</script></html>", 415),
    (smile_logo(0)[:200], 422),
])
def test_bad_images_get_a_4xx_with_a_reason(trained: Server, data: bytes, status: int) -> None:
    with trained.client() as api:
        response = api.post("/detect", files={"file": ("x.jpg", data)})
        assert response.status_code == status, response.text
        assert response.json()["detail"]
        assert api.get("/models").status_code == 200


def test_decompression_bomb_is_413(trained: Server) -> None:
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, "PNG")
    with trained.client() as api:
        response = api.post("/detect", files={"file": ("bomb.png", bomb.getvalue())})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_export_reproduces_the_servers_confidences(trained: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with trained.client() as api:
        response = api.get("/models/v2/export", params={"format": "onnx"})
        assert response.status_code == 200
        images = [smile_logo(7), box_logo(8), smile_logo(50)]
        served = [detect(api, data) for data in images]
        view = view_key(api.get("/models/v2").json()["input_view"])
    path = tmp_path / "model.onnx"
    path.write_bytes(response.content)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels = __import__("json").loads(session.get_modelmeta().custom_metadata_map["labels"])
    batch = np.stack([prepare(data, view=view) for data in images]).astype(np.float32)
    [probabilities] = session.run(None, {session.get_inputs()[0].name: batch})
    assert probabilities.shape == (3, len(labels))
    for row, answer in zip(probabilities, served, strict=True):
        for label in answer["labels"]:
            assert abs(row[labels.index(label["name"])] * 100 - label["confidence"]) < 1e-2


def test_roll_back_and_stop_and_deploy_again(trained: Server) -> None:
    with trained.client() as api:
        run = trained.wait_run(api.post("/models/v1/deploy").json()["run_id"])
        assert run["status"] == "SUCCESS" and run["branch"] == "Deployment"
        assert [s["name"] for s in run["steps"]][:3] == ["start_new_version", "switch_endpoint",
                                                         "stop_previous_version"]
        assert detect(api, smile_logo(2))["model_version"] == "v1"
        assert api.get("/models/v2").json()["status"] == "STOPPED"
        trained.wait_run(api.post("/models/v1/stop").json()["run_id"])
        response = api.post("/detect", files={"file": ("a.png", smile_logo(2))})
        assert response.status_code == 409 and "no model version is serving" in response.json()["detail"]
        assert api.post("/models/v1/stop").status_code == 409
        assert api.post("/models/v9/deploy").status_code == 404
        trained.wait_run(api.post("/models/v2/deploy").json()["run_id"])
        assert detect(api, smile_logo(2))["model_version"] == "v2"


def test_blue_green_switch_drops_no_request(trained: Server) -> None:
    """Requests keep flowing while the endpoint switches v2 → v1 → v2: none fails, each is one version."""
    failures, versions, stop = [], set(), threading.Event()

    def client_loop() -> None:
        with trained.client() as api:
            while not stop.is_set():
                response = api.post("/detect", files={"file": ("a.png", box_logo(5))})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions.add(response.json()["model_version"])

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        with trained.client() as api:
            for version in ("v1", "v2"):
                trained.wait_run(api.post(f"/models/{version}/deploy").json()["run_id"])
                wait_until(lambda v=version: v in versions, 30, message=f"a request served by {version}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert versions == {"v1", "v2"}


def test_many_concurrent_detects_all_answer(trained: Server) -> None:
    """More requests in flight than database connections: a waiting request holds none, so none times out."""
    images = [smile_logo(i) if i % 2 else box_logo(i) for i in range(40)]
    answers: dict[int, tuple[int, str]] = {}
    token = trained.token()
    start = threading.Barrier(len(images))

    def one(i: int) -> None:
        with trained.client(token) as api:
            start.wait()
            response = api.post("/detect", files={"file": ("a.png", images[i])}, timeout=25)
            answers[i] = (response.status_code, response.text)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == list(range(len(images)))
    assert all(status == 200 for status, _ in answers.values()), [a for a in answers.values() if a[0] != 200][:3]
    with trained.client(token) as api:  # each concurrent answer is the one a lone request gets
        for i in (0, 1, 39):
            assert __import__("json").loads(answers[i][1]) == detect(api, images[i])


def test_detect_refuses_a_token_the_moment_it_is_revoked(trained: Server) -> None:
    """Detect remembers a verified token for a moment (no database lookup per request), but a revocation in
    this process ends it at once, as on every other route."""
    token = trained.token()
    with trained.client(token) as api:
        for i in range(3):  # the first use records last_used_at; the next ones are answered from memory
            detect(api, smile_logo(i))
        newest = api.get("/tokens").json()[-1]["id"]
        assert api.delete(f"/tokens/{newest}").status_code == 200
        refused = api.post("/detect", files={"file": ("a.png", smile_logo(0))})
        assert refused.status_code == 401, refused.text
        assert api.get("/me").status_code == 401


@pytest.mark.parametrize(("data", "status"), [(box_logo(3), 200), (b"hello, I am text", 415), (b"", 422)])
def test_detect_answers_alike_through_the_route_and_before_it(trained: Server, data: bytes, status: int) -> None:
    """A new token's first detect goes through the route (its token checked in the database); the next,
    with the token remembered, is answered before routing (``DetectFastPath``): the same status, headers and
    bytes, an error included."""
    with trained.client(trained.token()) as api:
        answers = [api.post("/detect", files={"file": ("a.jpg", data, "image/jpeg")}) for _ in range(2)]
    assert answers[0].status_code == status, answers[0].text
    assert answers[1].content == answers[0].content and answers[1].status_code == status
    assert [(k, v) for k, v in answers[1].headers.items() if k != "date"] == \
        [(k, v) for k, v in answers[0].headers.items() if k != "date"]


def _quantize_nodes(model: bytes) -> int:
    import onnx

    return sum(node.op_type == "QuantizeLinear" for node in onnx.load_from_string(model).graph.node)


def test_quantize_backbone_serves_and_exports_the_versions_int8_twin(trained: Server) -> None:
    """Quantize-Backbone on: the next version trains an int8 twin, serves it (its answers are those of its own
    exported int8 graph) and exports it; the versions trained with it off keep the fp32 backbone."""
    with trained.client() as api:
        assert api.get("/parameters/Quantize-Backbone").json()["value"] == "false"
        assert api.put("/parameters/Quantize-Backbone", json={"value": "on"}).status_code == 422
        assert api.put("/parameters/Quantize-Backbone", json={"value": "true"}).status_code == 200
        upload_training_set(api, 5, offset=10)
        run = trained.wait_run(api.post("/training/check").json()["run_id"], timeout=300)
        assert run["output"]["version"] == "v3", run
        v3, v2 = api.get("/models/v3").json(), api.get("/models/v2").json()
        assert v3["status"] == "RUNNING", v3["status_message"]
        quantized = v3["evaluation"]["int8"]
        assert quantized["serves"], quantized["reason"]
        assert quantized["calibration_images"] == v3["train_images"]
        assert quantized["recipe"] == int8.REDUCE_RANGE.words, "the setting, not the CPU, chose the recipe"
        assert quantized["fp32_evaluation"]["f1"] == quantized["fp32_f1"] and v3["f1"] == quantized["f1"]
        assert v2["evaluation"].get("int8") is None
        with httpx.Client(base_url=trained.url, follow_redirects=True) as browser:
            sign_in_client(browser, "admin", ADMIN_PASSWORD)
            page = browser.get("/models/v3").text
            assert 'id="model-int8"' in page and "serves" in page and "macro-F1" in page, "the model page says why"
        exported = {version: api.get(f"/models/{version}/export").content for version in ("v2", "v3")}
        images = [smile_logo(70), box_logo(71), blend(72)]
        served = [detect(api, data) for data in images]
        view = view_key(v3["input_view"])
        assert api.put("/parameters/Quantize-Backbone", json={"value": "false"}).status_code == 200
    assert _quantize_nodes(exported["v2"]) == 0 and _quantize_nodes(exported["v3"]) > 50
    session = ort.InferenceSession(exported["v3"], providers=["CPUExecutionProvider"])
    labels = __import__("json").loads(session.get_modelmeta().custom_metadata_map["labels"])
    [probabilities] = session.run(None, {"input": np.stack([prepare(data, view=view) for data in images])})
    for row, answer in zip(probabilities, served, strict=True):
        assert answer["model_version"] == "v3"
        for label in answer["labels"]:
            assert abs(row[labels.index(label["name"])] * 100 - label["confidence"]) < 1e-2
