"""The EfficientNet-Lite0 port, its ONNX export and the export cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelloop.modeling import export
from labelloop.modeling.backbone import EMBEDDING_DIM, load_backbone, weights_path
from labelloop.modeling.embedding import Embedder
from labelloop.modeling.images import to_input

CHURCH_LIKE = {442, 497, 698}  # bell cote, church, palace


@pytest.fixture(scope="module")
def torch_backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def china() -> np.ndarray:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    index = next(i for i, name in enumerate(data.filenames) if name.endswith("china.jpg"))
    return to_input(Image.fromarray(data.images[index]))[None]


def test_state_dict_keys_match_the_shipped_weights(torch_backbone) -> None:
    import torch

    shipped = torch.load(weights_path(), map_location="cpu", weights_only=True)
    ours = torch_backbone.state_dict()
    assert set(ours) == set(shipped)
    assert all(ours[k].shape == shipped[k].shape for k in shipped)
    assert len(torch_backbone._blocks) == 16


def test_imagenet_top5_on_china_jpg_torch_and_onnx(torch_backbone, embedder: Embedder, china: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        embedding, logits = torch_backbone(torch.from_numpy(china))
    assert embedding.shape == (1, EMBEDDING_DIM)
    top5_torch = set(np.argsort(-logits.numpy()[0])[:5].tolist())
    _, onnx_logits = embedder.run(china)
    top5_onnx = set(np.argsort(-onnx_logits[0])[:5].tolist())
    print(f"\nchina.jpg top-5: torch {sorted(top5_torch)} onnx {sorted(top5_onnx)}")
    assert top5_torch & CHURCH_LIKE
    assert top5_onnx & CHURCH_LIKE


def test_onnx_equals_torch(torch_backbone, backbone_onnx: Path) -> None:
    assert export.verify_backbone_onnx(backbone_onnx, torch_backbone, batch=2, seed=7) <= 1e-4


def test_exported_file_shape_and_metadata(backbone_onnx: Path) -> None:
    import onnx

    model = onnx.load(str(backbone_onnx))
    assert [o.name for o in model.graph.output] == ["embedding", "logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert model.opset_import[0].version >= 17
    assert not [n for n in model.graph.node if n.op_type == "Pad"]  # folded into the convolutions
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[export.FINGERPRINT_KEY] == export.backbone_fingerprint()


def test_embed_batches_of_any_size(embedder: Embedder) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 224, 224)).astype(np.float32)
    whole = embedder.embed(x)
    chunked = embedder.embed(x, batch_size=2)
    assert whole.shape == (5, EMBEDDING_DIM) and whole.dtype == np.float32
    np.testing.assert_allclose(whole, chunked, atol=1e-5)
    assert embedder.embed(x[:0]).shape == (0, EMBEDDING_DIM)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_cache_reused_when_fresh_rebuilt_when_missing_or_stale(backbone_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in (backbone_onnx.name, backbone_onnx.name + ".json"):
        shutil.copy2(backbone_onnx.parent / name, cache / name)
    target = export.backbone_onnx_path(cache)
    before = _stamp(target)
    assert export.ensure_backbone_onnx(cache) == target
    assert _stamp(target) == before, "a fresh file must be reused"

    sidecar = target.with_name(target.name + ".json")
    stale = json.loads(sidecar.read_text()) | {"fingerprint": "0" * 64}
    sidecar.write_text(json.dumps(stale))
    export.ensure_backbone_onnx(cache)
    assert _stamp(target) != before, "a stale fingerprint must rebuild"
    assert export.stored_fingerprint(target) == export.backbone_fingerprint()

    target.unlink()
    export.ensure_backbone_onnx(cache)
    assert target.is_file() and export.stored_fingerprint(target) == export.backbone_fingerprint()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")], "no temp files left behind"


def test_fingerprint_follows_weights_and_export_version(tmp_path: Path) -> None:
    copy = tmp_path / "weights.pth"
    shutil.copy2(weights_path(), copy)
    assert export.backbone_fingerprint(copy) == export.backbone_fingerprint()
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    assert export.backbone_fingerprint(copy) != export.backbone_fingerprint()


def test_serving_modules_do_not_import_torch() -> None:
    code = ("import sys, labelloop.modeling.embedding, labelloop.modeling.predict, labelloop.modeling.training, "
            "labelloop.modeling.export, labelloop.modeling.evaluation; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
