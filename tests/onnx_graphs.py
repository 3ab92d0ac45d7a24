"""Small ONNX graphs written the way other exporters write them (torch.onnx dynamo / legacy, Keras 3 on the torch
backend, tf2onnx): ReduceMean pooling, float->float Casts, channels-last maps, shapes computed at run time."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

FEATURE = (1, 4, 3, 5)  # (N, C, h, w); channels-last tails read it as (N, h, w, C) = (1, 4, 3, 5) too


def op_node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    return onnx.helper.make_node(op, inputs, [output], name=output, **attrs)


def int64s(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def dense_head(
    pooled: str, channels: int, cast: bool = False
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """MatMul + Add (torch dynamo, Keras) from a (N, channels) tensor to 'score' (N, 3); with `cast`, Keras's
    float->float Casts around each op."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(size=(channels, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b"),
    ]
    if not cast:
        return [op_node("MatMul", [pooled, "W"], "mm"), op_node("Add", ["mm", "b"], "score")], inits
    nodes = [
        op_node("Cast", [pooled], "pooled_cast", to=1),
        op_node("MatMul", ["pooled_cast", "W"], "mm"),
        op_node("Cast", ["mm"], "mm_cast", to=1),
        op_node("Add", ["mm_cast", "b"], "score"),
    ]
    return nodes, inits


def graph_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int = 18) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        nodes,
        "tail",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(FEATURE))],
        [onnx.helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def reduce_tail(op: str, axes: list[int], keepdims: int, channels: int, cast: bool = False) -> onnx.ModelProto:
    nodes = [op_node(op, ["x", "axes"], "pooled", keepdims=keepdims)]
    if keepdims:
        nodes.append(op_node("Flatten", ["pooled"], "flat"))
    dense, inits = dense_head("flat" if keepdims else "pooled", channels, cast)
    return graph_model(nodes + dense, [int64s("axes", axes), *inits])


def runtime_reshape() -> onnx.ModelProto:
    """GlobalAveragePool -> Reshape to (N, -1) with the shape computed at run time (Shape -> Gather -> Concat),
    as torch.onnx.export writes torch.flatten with a dynamic batch."""
    nodes = [
        op_node("GlobalAveragePool", ["x"], "pooled"),
        op_node("Shape", ["pooled"], "shape"),
        op_node("Gather", ["shape", "zero"], "batch", axis=0),
        op_node("Unsqueeze", ["batch", "zero_axis"], "batch_1d"),
        op_node("Concat", ["batch_1d", "minus_one"], "new_shape", axis=0),
        op_node("Reshape", ["pooled", "new_shape"], "flat"),
    ]
    dense, inits = dense_head("flat", FEATURE[1])
    constants = [int64s("zero", 0), int64s("zero_axis", [0]), int64s("minus_one", [-1])]
    return graph_model(nodes + dense, constants + inits)


def transpose_squeeze() -> onnx.ModelProto:
    """NHWC -> NCHW Transpose, ReduceMean keeping dims, Squeeze, Unsqueeze + Squeeze round trip, Cast, Softmax."""
    nodes = [
        op_node("Cast", ["x"], "x_cast", to=1),
        op_node("Transpose", ["x_cast"], "nchw", perm=[0, 3, 1, 2]),
        op_node("ReduceMean", ["nchw", "hw"], "pooled", keepdims=1),
        op_node("Squeeze", ["pooled", "hw"], "squeezed"),
        op_node("Unsqueeze", ["squeezed", "last"], "again"),
        op_node("Squeeze", ["again", "last"], "flat"),
    ]
    dense, inits = dense_head("flat", FEATURE[3], cast=True)
    dense[-1].output[0] = "logits"
    dense[-1].name = "logits"
    dense.append(op_node("Softmax", ["logits"], "score", axis=-1))
    return graph_model(nodes + dense, [int64s("hw", [2, 3]), int64s("last", [2]), *inits])


