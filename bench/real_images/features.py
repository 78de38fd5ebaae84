"""Backbone features for the benchmark, cached on disk: pooled embedding, last feature map, mid-level features.

Each backbone variant is exported once to ONNX (bench/out/real_images/onnx/) with two outputs: the last
feature map (N×1280×g×g; its spatial mean is exactly the product's pooled embedding) and the pooled outputs of
stages 4–6 concatenated (the "multi-layer" features). Features are cached per (variant, view, task) in one
.npz keyed by the items' keys, so a rerun embeds nothing; the feature map is kept in float16.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench.real_images.data import DATA_VERSION, OUT, Item

from labelloop.modeling.backbone import LITE0, VARIANTS, Variant, load_backbone
from labelloop.modeling.export import _fold_pads_into_convs
from labelloop.modeling.images import INPUT_VIEWS, decode_for, to_input

VIEW_NAMES = {"flip": "flip", **INPUT_VIEWS}
MAP_VIEWS = ("crop", "letterbox")  # views whose feature map is kept (patch matching)
BATCH = 32


@dataclass
class Features:
    """Features of some items, rows in `keys` order."""

    keys: list[str]
    embedding: np.ndarray  # N×1280 float32
    mid: np.ndarray  # N×D float32
    fmap: np.ndarray | None  # N×(g·g)×1280 float16

    def rows(self, keys: list[str]) -> np.ndarray:
        """Row indices of `keys`."""
        index = {k: i for i, k in enumerate(self.keys)}
        return np.array([index[k] for k in keys], dtype=np.int64)


def _stage_ends(variant: Variant) -> list[int]:
    ends, total = [], 0
    for stage in variant.stages:
        total += stage.repeats
        ends.append(total - 1)
    return ends[3:6]


def _feature_module(variant: Variant):
    import torch
    import torch.nn.functional as F

    model = load_backbone(variant=variant)
    ends = set(_stage_ends(variant))

    class FeatureNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m = self.model
            x = F.relu6(m._bn0(m._conv_stem(x)))
            mids = []
            for i, block in enumerate(m._blocks):
                x = block(x)
                if i in ends:
                    mids.append(x.mean(dim=(2, 3)))
            return F.relu6(m._bn1(m._conv_head(x))), torch.cat(mids, dim=1)

    return FeatureNet().eval()


def onnx_path(variant: Variant) -> Path:
    """The variant's feature ONNX file, exported on first use."""
    path = OUT / "onnx" / f"{variant.name}-features.onnx"
    if path.is_file():
        return path
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    dummy = torch.zeros(2, 3, variant.image_size, variant.image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_feature_module(variant), (dummy,), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["fmap", "mid"],
                          dynamic_axes={"input": {0: "N"}, "fmap": {0: "N"}, "mid": {0: "N"}})
    proto = _fold_pads_into_convs(onnx.load_from_string(buffer.getvalue()))
    _write_atomically(path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    return path


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write` to a temporary file of this process's own (same folder), then rename it onto `path`: two
    processes extracting at once never write into one file, and a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    tmp = Path(name)
    tmp.chmod(0o644)  # mkstemp's 0600 would hide the cache from other users of the shared folder
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def session(variant: Variant, threads: int = 2):
    """An ONNX Runtime session of the variant's feature file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path(variant)), options, providers=["CPUExecutionProvider"])


def _run(sess, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fmap, mid = sess.run(["fmap", "mid"], {"input": np.ascontiguousarray(inputs, dtype=np.float32)})
    return fmap, mid


def _cache_file(variant: Variant, view: str, task: str) -> Path:
    return OUT / "features" / f"{variant.name}-{view}-{task}-v{DATA_VERSION}.npz"


def extract(task: str, items: list[Item], variant: Variant = LITE0, view: str = "crop") -> Features:
    """Features of `items` through `variant` under `view` ('crop', 'flip', 'letterbox', 'letterbox-fast'), cached
    on disk."""
    path = _cache_file(variant, view, task)
    keep_map = view in MAP_VIEWS
    have: dict[str, int] = {}
    old = None
    if path.is_file():
        old = np.load(path, allow_pickle=False)
        have = {str(k): i for i, k in enumerate(old["keys"])}
    wanted = [i.key for i in items]
    missing = [i for i in items if i.key not in have]
    if missing:
        fresh = _compute(missing, variant, view, keep_map)
        keys = list(have) + [i.key for i in missing]
        arrays = {name: np.concatenate([old[name], fresh[name]]) if old is not None else fresh[name]
                  for name in fresh}
        _write_atomically(path, lambda tmp: np.savez(tmp, keys=np.array(keys), **arrays))
        old = np.load(path, allow_pickle=False)
        have = {k: i for i, k in enumerate(keys)}
    assert old is not None
    rows = np.array([have[k] for k in wanted], dtype=np.int64)
    fmap = old["fmap"][rows] if keep_map else None
    return Features(wanted, old["embedding"][rows], old["mid"][rows], fmap)


def _compute(items: list[Item], variant: Variant, view: str, keep_map: bool) -> dict[str, np.ndarray]:
    sess = session(variant)
    embeddings, mids, fmaps = [], [], []
    started = time.perf_counter()
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        key = VIEW_NAMES[view]
        batch = np.stack([to_input(decode_for(i.load(), key, size=variant.image_size), key, variant.image_size)
                          for i in chunk])
        fmap, mid = _run(sess, batch)
        embeddings.append(fmap.mean(axis=(2, 3)))
        mids.append(mid)
        if keep_map:
            fmaps.append(fmap.reshape(len(chunk), fmap.shape[1], -1).transpose(0, 2, 1).astype(np.float16))
    print(f"  embedded {len(items)} images ({variant.name}, {view}) in {time.perf_counter() - started:.0f} s",
          flush=True)
    out = {"embedding": np.concatenate(embeddings).astype(np.float32), "mid": np.concatenate(mids)}
    if keep_map:
        out["fmap"] = np.concatenate(fmaps)
    return out


def backbone_speed(names: tuple[str, ...] = tuple(VARIANTS), rounds: int = 3, batch: int = BATCH
                   ) -> dict[str, float]:
    """Images per second of each variant's backbone on one fixed batch, rounds alternating between variants
    (so background load hits all alike); the median round counts."""
    sessions = {name: session(VARIANTS[name]) for name in names}
    rng = np.random.default_rng(0)
    inputs = {name: rng.uniform(-1, 1, (batch, 3, VARIANTS[name].image_size, VARIANTS[name].image_size))
              .astype(np.float32) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        _run(sessions[name], inputs[name])  # warm-up
    for _ in range(rounds):
        for name in names:
            started = time.perf_counter()
            _run(sessions[name], inputs[name])
            times[name].append(time.perf_counter() - started)
    return {name: batch / float(np.median(t)) for name, t in times.items()}
