"""ONNX export: the backbone once (cached, fingerprinted), and whole models (backbone + head + softmax).

Backbone file: `<cache>/efficientnet_lite0.onnx`, input `input` float32 N×3×224×224 (preprocessed as in
`images.to_input`), outputs `embedding` N×1280 and `logits` N×1000, opset 17, dynamic N. Its fingerprint
(sha256 of the weights file + EXPORT_VERSION + opset) is kept in a sidecar `efficientnet_lite0.onnx.json`
and in the file's own metadata (`labelloop_fingerprint`). `ensure_backbone_onnx` rebuilds when the file or
sidecar is missing or the fingerprint differs. Writes are atomic (temp file in the same folder + os.replace)
and serialised between processes with an advisory lock, so concurrent workers never see a half-written file.

The TensorFlow SAME padding of the stride-2 convolutions exports as Pad nodes, which ONNX Runtime runs
about 3× slower (measured 61 vs 175 images/s at batch 32 on 2 cores) because they break its NCHWc layout
fusion; `_fold_pads_into_convs` moves them into the Conv `pads` attribute, which is the same arithmetic.

Torch is imported only by the functions that build the backbone file; `build_full_model_onnx` needs only
`onnx`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelloop.files import atomic_write_bytes, file_sha256
from labelloop.modeling.backbone import EMBEDDING_DIM, FINGERPRINT_KEY, IMAGE_SIZE, OPSET, load_backbone, weights_path
from labelloop.modeling.bank_graph import BANK, bank_rows, nearest_cosine_nodes

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from labelloop.modeling.training import Head

EXPORT_VERSION = "1"
BACKBONE_FILENAME = "efficientnet_lite0.onnx"
VERIFY_ATOL = 1e-4
NORM_EPS = 1e-12
PREPROCESSING = "RGB, resize short side to 224 (bicubic), center crop 224, (x/255-0.5)/0.5, NCHW float32"
# What a consumer of an exported model must do to an image, by the version's input view (images.INPUT_VIEWS).
VIEW_PREPROCESSING = {
    "crop": PREPROCESSING,
    "letterbox": "RGB, resize long side to 224 (bicubic, short side round(224·short/long), at least 1), paste "
                 "centred (offset floor((224-w)/2), floor((224-h)/2)) on a 224×224 canvas filled with the mean "
                 "colour of the image's border pixels (first and last row and column, rounded), "
                 "(x/255-0.5)/0.5, NCHW float32",
    "letterbox-fast": "RGB decoded at the smallest scale whose long side is still ≥ 224 (a JPEG with libjpeg's DCT "
                      "scaling 1/2, 1/4 or 1/8, the smallest that keeps it; then, any format, Pillow Image.reduce "
                      "by the largest integer factor that keeps it), then as letterbox but resized with Pillow's "
                      "antialiased bilinear filter, (x/255-0.5)/0.5, NCHW float32",
    "letterbox-draft": "RGB decoded at the smallest scale whose long side is still ≥ 196 (7/8 of 224; a JPEG with "
                       "libjpeg's DCT scaling 1/2, 1/4 or 1/8, the smallest that keeps it; then, any format, "
                       "Pillow Image.reduce by the largest integer factor that keeps it), then as letterbox but "
                       "resized with Pillow's antialiased bilinear filter (an enlargement by at most 8/7 when the "
                       "long side is under 224), (x/255-0.5)/0.5, NCHW float32",
}


class ExportError(RuntimeError):
    """The exported ONNX file does not reproduce the torch model."""


def backbone_fingerprint(weights: str | Path | None = None) -> str:
    """Fingerprint of the backbone export: weights sha256, EXPORT_VERSION and opset."""
    source = f"{file_sha256(weights or weights_path())}:{EXPORT_VERSION}:{OPSET}"
    return hashlib.sha256(source.encode()).hexdigest()


def backbone_onnx_path(cache_dir: str | Path) -> Path:
    """Where the backbone ONNX file lives in a cache folder."""
    return Path(cache_dir) / BACKBONE_FILENAME


def _sidecar(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def stored_fingerprint(onnx_path: str | Path) -> str | None:
    """The fingerprint recorded beside an exported backbone, or None when absent or unreadable."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        return None
    try:
        return json.loads(_sidecar(onnx_path).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Advisory inter-process lock (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_backbone_onnx(cache_dir: str | Path, weights: str | Path | None = None) -> Path:
    """Path of a fresh backbone ONNX file in `cache_dir`, exporting it first if missing or stale."""
    path = backbone_onnx_path(cache_dir)
    fingerprint = backbone_fingerprint(weights)
    if stored_fingerprint(path) == fingerprint:
        return path
    with _lock(path.with_name(path.name + ".lock")):
        if stored_fingerprint(path) != fingerprint:  # another process may have built it meanwhile
            export_backbone_onnx(path, weights, fingerprint=fingerprint)
    return path


def export_backbone_onnx(
    out_path: str | Path, weights: str | Path | None = None, *, fingerprint: str | None = None
) -> Path:
    """Export, fold pads, verify against torch (1e-4), then write the file and its sidecar atomically."""
    out_path = Path(out_path)
    fingerprint = fingerprint or backbone_fingerprint(weights)
    model = load_backbone(weights)
    proto = _fold_pads_into_convs(_torch_to_onnx(model))
    _set_metadata(proto, {FINGERPRINT_KEY: fingerprint, "preprocessing": PREPROCESSING})
    data = proto.SerializeToString()
    max_diff = verify_backbone_onnx(data, model)
    with contextlib.suppress(FileNotFoundError):
        _sidecar(out_path).unlink()  # a sidecar only ever describes a complete file
    atomic_write_bytes(out_path, data)
    sidecar = {"fingerprint": fingerprint, "export_version": EXPORT_VERSION, "opset": OPSET,
               "weights": str(weights or weights_path()), "verified_max_abs_diff": max_diff}
    atomic_write_bytes(_sidecar(out_path), json.dumps(sidecar, indent=2).encode())
    return out_path


def _torch_to_onnx(model: Any) -> onnx.ModelProto:
    """Trace the torch module to ONNX (TorchScript exporter: no onnxscript dependency)."""
    import onnx
    import torch

    buffer = io.BytesIO()
    dummy = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    axes = {"input": {0: "N"}, "embedding": {0: "N"}, "logits": {0: "N"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["embedding", "logits"], dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


def verify_backbone_onnx(onnx_model: bytes | str | Path, model: Any, batch: int = 3, seed: int = 0) -> float:
    """Max abs difference of ONNX Runtime vs torch on a random batch; raises ExportError above 1e-4."""
    import onnxruntime as ort
    import torch

    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).uniform(-1, 1, (batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(x))]
    got = session.run(["embedding", "logits"], {"input": x})
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got, strict=True))
    if not diff <= VERIFY_ATOL:
        raise ExportError(f"ONNX Runtime differs from torch by {diff:.3g} (> {VERIFY_ATOL})")
    return diff


def _set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    """Replace the metadata keys given in `values`, keeping the others."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*keep, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """Evaluate a tensor computed only from constants (None when it depends on a graph input)."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    producers = {out: node for node in graph.node for out in node.output}
    inits = {init.name: init for init in graph.initializer}
    nodes, used_inits, stack, seen = [], [], [name], set()
    while stack:
        current = stack.pop()
        if current in seen or current == "":
            continue
        seen.add(current)
        if current in inits:
            used_inits.append(inits[current])
        elif current in producers:
            nodes.append(producers[current])
            stack.extend(producers[current].input)
        else:
            return None  # a graph input: not constant
    order = {id(node): i for i, node in enumerate(graph.node)}
    nodes.sort(key=lambda node: order[id(node)])
    out = helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)
    sub = helper.make_graph(nodes, "const", [], [out], initializer=used_inits)
    model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", OPSET)])
    return np.asarray(ReferenceEvaluator(model).run(None, {})[0])


def _foldable_pads(graph: onnx.GraphProto, pad: onnx.NodeProto, users: list) -> list[int] | None:
    """Spatial pads [top, left, bottom, right] of a zero Pad feeding exactly one Conv, else None."""
    from onnx import helper

    modes = [helper.get_attribute_value(a) for a in pad.attribute if a.name == "mode"]
    if len(users) != 1 or users[0].op_type != "Conv" or modes not in ([], [b"constant"]):
        return None
    if len(pad.input) > 2 and pad.input[2]:
        value = _constant_value(graph, pad.input[2])
        if value is None or np.any(value != 0):
            return None
    pads = _constant_value(graph, pad.input[1])
    if pads is None or pads.size != 8 or np.any(pads[[0, 1, 4, 5]] != 0):
        return None
    return [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])]


def _fold_pads_into_convs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move zero Pad nodes that feed a Conv into that Conv's `pads` attribute; drop dead nodes."""
    from onnx import helper

    graph = proto.graph
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        extra = _foldable_pads(graph, pad, consumers[pad.output[0]])
        if extra is None:
            continue
        conv = consumers[pad.output[0]][0]
        old = [helper.get_attribute_value(a) for a in conv.attribute if a.name == "pads"]
        base = list(old[0]) if old else [0, 0, 0, 0]
        kept = [a for a in conv.attribute if a.name not in ("pads", "auto_pad")]
        del conv.attribute[:]
        pads = [a + b for a, b in zip(base, extra, strict=True)]
        conv.attribute.extend([*kept, helper.make_attribute("pads", pads)])
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
    _prune_dead_nodes(graph)
    return proto


def _prune_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes (and initializers) whose outputs nothing uses."""
    needed = {out.name for out in graph.output}
    alive = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            alive.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(alive))
    inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _head_graph(head: Head, opset: int) -> onnx.GraphProto:
    """embedding N×D → [L2 normalise] → Gemm (W/T, b/T) → Softmax [× familiarity] → probabilities N×L.

    Familiarity: sigmoid(slope · nearest-neighbour cosine + offset) for format-2/3 heads (`bank`), the centroid
    rule for format-1 heads, as `Head.familiarity`; format 3 multiplies every label by one factor per image,
    Σ softmax × familiarity, as `Head.predict_proba`."""
    import onnx
    from onnx import helper, numpy_helper

    weight = (np.asarray(head.W, dtype=np.float64) / head.temperature).astype(np.float32)
    bias = (np.asarray(head.b, dtype=np.float64) / head.temperature).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "head_W"), numpy_helper.from_array(bias, "head_b")]
    nodes, x = [], "embedding"
    if head.normalize:
        inits += [numpy_helper.from_array(np.array([1], dtype=np.int64), "head_axes"),
                  numpy_helper.from_array(np.array(NORM_EPS, dtype=np.float32), "head_eps")]
        nodes += [helper.make_node("Mul", [x, x], ["head_sq"]),
                  helper.make_node("ReduceSum", ["head_sq", "head_axes"], ["head_ss"], keepdims=1),
                  helper.make_node("Sqrt", ["head_ss"], ["head_norm"]),
                  helper.make_node("Max", ["head_norm", "head_eps"], ["head_norm_eps"]),
                  helper.make_node("Div", [x, "head_norm_eps"], ["head_z"])]
        x = "head_z"
    nodes += [helper.make_node("Gemm", [x, "head_W", "head_b"], ["head_logits"], transB=1)]
    inits_v, nodes_v = _visible_softmax_nodes(head)
    inits += inits_v
    nodes += nodes_v
    if head.bank is None and head.centroids is None:
        nodes.append(helper.make_node("Identity", ["head_softmax"], ["probabilities"]))
    else:
        if not head.normalize:
            raise ExportError("familiarity needs normalised embeddings")
        inits_f, nodes_f = (_nearest_nodes(head) if head.bank is not None else _centroid_nodes(head))
        inits += inits_f
        nodes += [*nodes_f, helper.make_node("Sigmoid", ["head_familiar_z"], ["head_familiarity"])]
        if head.bank is not None and head.format >= 3:  # one factor per image: Σ softmax × familiarity
            share = "head_softmax"
            if head.hidden:  # the factor weighs the real labels' share of the softmax, as Head.predict_proba
                share = "head_share"
                nodes += [helper.make_node("ReduceSum", ["head_softmax", "head_axes"], ["head_visible"], keepdims=1),
                          helper.make_node("Div", ["head_softmax", "head_visible"], [share])]
            nodes += [helper.make_node("Mul", [share, "head_familiarity"], ["head_weighted"]),
                      helper.make_node("ReduceSum", ["head_weighted", "head_axes"], ["head_factor"], keepdims=1),
                      helper.make_node("Mul", ["head_softmax", "head_factor"], ["probabilities"])]
        else:
            nodes.append(helper.make_node("Mul", ["head_softmax", "head_familiarity"], ["probabilities"]))
    inp = helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["N", EMBEDDING_DIM])
    out = helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", len(head.labels)])
    return helper.make_graph(nodes, "head", [inp], [out], initializer=inits)


def _visible_softmax_nodes(head: Head) -> tuple[list[Any], list[Any]]:
    """Softmax over every column → ``head_softmax``, without the hidden class's columns (`Head.hidden`)."""
    from onnx import helper, numpy_helper

    if not head.hidden:
        return [], [helper.make_node("Softmax", ["head_logits"], ["head_softmax"], axis=1)]
    inits = [numpy_helper.from_array(np.array([0], dtype=np.int64), "head_visible_start"),
             numpy_helper.from_array(np.array([len(head.labels)], dtype=np.int64), "head_visible_end"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "head_visible_axis")]
    return inits, [helper.make_node("Softmax", ["head_logits"], ["head_softmax_all"], axis=1),
                   helper.make_node("Slice", ["head_softmax_all", "head_visible_start", "head_visible_end",
                                              "head_visible_axis"], ["head_softmax"])]


def _centroid_nodes(head: Head) -> tuple[list, list]:
    """Format-1 heads: z = (cos(embedding, centroid) − at) / scale, as Head.familiarity."""
    from onnx import helper, numpy_helper

    assert head.centroids is not None and head.familiar_at is not None and head.familiar_scale is not None
    inits = [numpy_helper.from_array(np.ascontiguousarray(head.centroids.T, dtype=np.float32), "head_centroids_t"),
             numpy_helper.from_array(head.familiar_at.astype(np.float32), "head_familiar_at"),
             numpy_helper.from_array(head.familiar_scale.astype(np.float32), "head_familiar_scale")]
    nodes = [helper.make_node("MatMul", ["head_z", "head_centroids_t"], ["head_cos"]),
             helper.make_node("Sub", ["head_cos", "head_familiar_at"], ["head_cos_shift"]),
             helper.make_node("Div", ["head_cos_shift", "head_familiar_scale"], ["head_familiar_z"])]
    return inits, nodes


def _nearest_nodes(head: Head) -> tuple[list, list]:
    """z = slope · (cosine to the nearest bank image of each label) + offset, as Head.familiarity."""
    from onnx import helper, numpy_helper

    assert head.bank is not None and head.familiar_offset is not None
    labels, rows, _ = head.bank.shape
    inits, nodes = nearest_cosine_nodes(labels, rows)
    inits += [numpy_helper.from_array(bank_rows(head.bank), BANK),
              numpy_helper.from_array(np.array(head.familiar_slope, dtype=np.float32), "head_familiar_slope"),
              numpy_helper.from_array(head.familiar_offset.astype(np.float32), "head_familiar_offset")]
    nodes += [helper.make_node("Mul", ["head_nearest", "head_familiar_slope"], ["head_nearest_scaled"]),
              helper.make_node("Add", ["head_nearest_scaled", "head_familiar_offset"], ["head_familiar_z"])]
    return inits, nodes


def build_full_model_onnx(
    backbone_onnx_path: str | Path, head: Head, out_path: str | Path, *, model_version: str | None = None,
    input_view: str = "crop",
) -> Path:
    """One ONNX file = backbone + head + softmax, written atomically to `out_path`.

    Input `input` float32 N×3×224×224 preprocessed as `images.to_input` on the version's `input_view` (dynamic
    N; the graph does not preprocess); output `probabilities` N×labels. Metadata: `labels` (JSON list, column
    order), `model_version` when given, `input_view`, `preprocessing` (that view in words) and the backbone
    fingerprint.
    """
    import onnx
    from onnx import compose, helper

    backbone = onnx.load(str(backbone_onnx_path))
    opset = next(o.version for o in backbone.opset_import if o.domain in ("", "ai.onnx"))
    head_model = helper.make_model(_head_graph(head, opset), opset_imports=[helper.make_opsetid("", opset)],
                                   ir_version=backbone.ir_version)
    merged = compose.merge_models(backbone, head_model, io_map=[("embedding", "embedding")],
                                  outputs=["probabilities"])
    _prune_dead_nodes(merged.graph)
    meta = {p.key: p.value for p in backbone.metadata_props}
    del merged.metadata_props[:]
    values = {"labels": json.dumps(list(head.labels)), "input_view": input_view,
              "preprocessing": VIEW_PREPROCESSING[input_view],
              "backbone_fingerprint": meta.get(FINGERPRINT_KEY, "")}
    if model_version is not None:
        values["model_version"] = str(model_version)
    _set_metadata(merged, values)
    onnx.checker.check_model(merged)
    return atomic_write_bytes(out_path, merged.SerializeToString())
