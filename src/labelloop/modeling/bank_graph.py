"""The familiarity bank's product as an ONNX graph: the nodes a head's served product and the exported model share
(README Performance, item 45). It imports no other labelloop module but the backbone's constants, so that the head
(`training`) and the export (`export`, which imports `training`) both use it."""

from __future__ import annotations

import numpy as np

from labelloop.modeling.backbone import OPSET

BANK = "head_bank"  # the familiarity bank's rows in a graph: (labels · rows) × D, label by label


def bank_rows(bank: np.ndarray) -> np.ndarray:
    """A bank (labels×R×D) as the (labels · R)×D float32 matrix the graph multiplies by (a view, not a copy, of a
    contiguous float32 bank)."""
    labels, rows, dim = bank.shape
    return np.ascontiguousarray(bank, dtype=np.float32).reshape(labels * rows, dim)


def nearest_cosine_nodes(labels: int, rows: int) -> tuple[list, list]:
    """``head_z`` (N×D unit rows) → ``head_nearest`` (N×labels): the cosine of each row to its nearest bank row of
    each label: one Gemm with the bank's rows (the initializer ``BANK``, not made here) transposed, reshaped
    N×labels×R, max over R."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([-1, labels, rows], dtype=np.int64), "head_bank_shape")]
    nodes = [helper.make_node("Gemm", ["head_z", BANK], ["head_bank_cos"], transB=1),
             helper.make_node("Reshape", ["head_bank_cos", "head_bank_shape"], ["head_bank_cos3"]),
             helper.make_node("ReduceMax", ["head_bank_cos3"], ["head_nearest"], axes=[2], keepdims=0)]
    return inits, nodes


def nearest_cosine_model(bank_shape: tuple[int, int, int], block: int) -> bytes:
    """A serialized ONNX model of :func:`nearest_cosine_nodes` alone for blocks of exactly ``block`` rows (input
    ``head_z`` block×D float32, output ``head_nearest`` block×labels float32) whose bank (``bank_shape``:
    labels×R×D) is not in the file: its ``BANK`` initializer is external, for the caller to give ONNX Runtime
    from memory (``SessionOptions.add_external_initializers``, `Head.nearest_similarity`), so the model is a
    few hundred bytes whatever the bank."""
    import onnx
    from onnx import helper
    from onnx.external_data_helper import set_external_data

    labels, rows, dim = bank_shape
    inits, nodes = nearest_cosine_nodes(labels, rows)
    bank = onnx.TensorProto(name=BANK, data_type=onnx.TensorProto.FLOAT, dims=[labels * rows, dim], raw_data=b"-")
    set_external_data(bank, location=BANK)  # where the data would be; ONNX Runtime is given it from memory
    bank.ClearField("raw_data")
    graph = helper.make_graph(
        nodes, "nearest_cosine", [helper.make_tensor_value_info("head_z", onnx.TensorProto.FLOAT, [block, dim])],
        [helper.make_tensor_value_info("head_nearest", onnx.TensorProto.FLOAT, [block, labels])],
        initializer=[*inits, bank])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()
