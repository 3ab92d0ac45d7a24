"""The ONNX backward graphs of camcaffe.methods.backward against float64 finite differences, one small Caffe
net per supported layer type after the feature blob, and the refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from camcaffe.explain.methods.backward import GradientError, build_tail
from camcaffe.runtime.session import ModelSession
from tests.helpers import convert_text, net_text
from tests.onnx_graphs import (
    FEATURE,
    dense_head,
    graph_model,
    int64s,
    op_node,
    reduce_tail,
    runtime_reshape,
    transpose_squeeze,
)

TOLERANCE = 1e-3


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float64 (initializers, constants and declared types)."""
    double = onnx.ModelProto()
    double.CopyFrom(model)
    for init in double.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for node in double.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.DOUBLE
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == onnx.TensorProto.FLOAT:
                value = numpy_helper.to_array(attr.t).astype(np.float64)
                attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
    for info in [*double.graph.input, *double.graph.output, *double.graph.value_info]:
        if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            info.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return double


def onnx_gradient(model: onnx.ModelProto, feature: str, score: str, features: np.ndarray, index: int):
    """(scores, d score[:, index] / d feature) from the backward graph run in onnxruntime (float32, CPU)."""
    tail = build_tail(model, feature, score, gradient=True)
    session = ModelSession(tail.model, "cpu")
    seed = np.zeros((len(features), int(np.prod(tail.score_shape[1:]))), np.float32)
    seed[:, index] = 1.0
    seed = seed.reshape(len(features), *tail.score_shape[1:])
    values = session.run({feature: features, tail.seed: seed}, [score, tail.gradient])
    return values[score].reshape(len(features), -1), values[tail.gradient]


def finite_difference_error(
    model: onnx.ModelProto,
    feature: str,
    score: str,
    features: np.ndarray,
    index: int,
    directions: int | None = None,
    step: float = 1e-6,
    seed: int = 0,
) -> float:
    """max |finite difference - analytic| / max |analytic| over every coordinate of one feature map
    (directions=None), or over random unit directions (|fd - <g, v>| / |g|)."""
    features = np.asarray(features[:1], np.float32)
    _, grad = onnx_gradient(model, feature, score, features, index)
    grad = grad[0].astype(np.float64)
    forward = ReferenceEvaluator(to_float64(build_tail(model, feature, score, gradient=False).model))
    base = features[0].astype(np.float64)
    if directions is None:
        moves = np.eye(base.size).reshape(base.size, *base.shape)
    else:
        rng = np.random.default_rng(seed)
        moves = rng.normal(size=(directions, *base.shape))
        moves[0] = grad
        moves /= np.sqrt((moves**2).sum(axis=tuple(range(1, moves.ndim)), keepdims=True))
    fd = np.empty(len(moves))
    for start in range(0, len(moves), 64):
        part = moves[start : start + 64]
        plus = forward.run(None, {feature: base + step * part})[0].reshape(len(part), -1)[:, index]
        minus = forward.run(None, {feature: base - step * part})[0].reshape(len(part), -1)[:, index]
        fd[start : start + 64] = (plus - minus) / (2 * step)
    analytic = (moves * grad).reshape(len(moves), -1).sum(axis=1)
    if directions is None:
        return float(np.abs(fd - analytic).max() / max(np.abs(analytic).max(), 1e-30))
    return float(np.abs(fd - analytic).max() / max(np.sqrt((grad**2).sum()), 1e-30))


SHAPE = (1, 6, 8, 8)


def _fc(bottom: str, top: str = "fc", outputs: int = 5) -> str:
    return (
        f'layer {{ name: "{top}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" '
        f"inner_product_param {{ num_output: {outputs} }} }}\n"
    )


def _layer(name: str, kind: str, bottoms: list[str], tops: list[str] | None = None, param: str = "") -> str:
    text = " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops or [name])
    return f'layer {{ name: "{name}" type: "{kind}" {text} {param} }}\n'


def _pool(name: str, bottom: str, param: str) -> str:
    return _layer(name, "Pooling", [bottom], param=f"pooling_param {{ {param} }}")


# Each tail starts at the input blob `data` (the feature) and ends in the scores `fc` (or `score`).
TAILS = {
    "InnerProduct": _fc("data"),
    "ReLU": _layer("relu", "ReLU", ["data"], ["r"]) + _fc("r"),
    "ReLU_leaky": _layer("relu", "ReLU", ["data"], ["r"], "relu_param { negative_slope: 0.1 }") + _fc("r"),
    "Dropout": _layer("drop", "Dropout", ["data"], ["d"]) + _fc("d"),
    "Pooling_MAX": _pool("p", "data", "pool: MAX kernel_size: 3 stride: 2") + _fc("p"),
    "Pooling_MAX_pad": _pool("p", "data", "pool: MAX kernel_size: 3 stride: 2 pad: 1") + _fc("p"),
    "Pooling_AVE": _pool("p", "data", "pool: AVE kernel_size: 3 stride: 2") + _fc("p"),
    "Pooling_AVE_pad": _pool("p", "data", "pool: AVE kernel_size: 3 stride: 2 pad: 1") + _fc("p"),
    "Pooling_AVE_covering": _pool("p", "data", "pool: AVE kernel_size: 8 stride: 8") + _fc("p"),
    "Pooling_global_AVE": _pool("p", "data", "pool: AVE global_pooling: true") + _fc("p"),
    "Pooling_global_MAX": _pool("p", "data", "pool: MAX global_pooling: true") + _fc("p"),
    "Convolution": _layer(
        "c",
        "Convolution",
        ["data"],
        param="convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 }",
    )
    + _fc("c"),
    "Convolution_group_dilation": _layer(
        "c",
        "Convolution",
        ["data"],
        param="convolution_param { num_output: 4 kernel_size: 3 group: 2 dilation: 2 }",
    )
    + _fc("c"),
    "Convolution_1x1_class_map": _layer(
        "c", "Convolution", ["data"], param="convolution_param { num_output: 5 kernel_size: 1 }"
    )
    + _layer("cr", "ReLU", ["c"], ["c"])
    + _pool("p", "c", "pool: AVE global_pooling: true")
    + _layer("f", "Flatten", ["p"], ["fc"]),
    "Deconvolution": _layer(
        "d", "Deconvolution", ["data"], param="convolution_param { num_output: 3 kernel_size: 3 stride: 2 }"
    )
    + _fc("d"),
    "Concat": _pool("p", "data", "pool: MAX kernel_size: 2 stride: 2")
    + _pool("q", "data", "pool: AVE kernel_size: 2 stride: 2")
    + _layer("cat", "Concat", ["p", "q"])
    + _fc("cat"),
    "Slice": _layer("s", "Slice", ["data"], ["s1", "s2"], "slice_param { axis: 1 slice_point: 2 }")
    + _fc("s2"),
    "Split": _layer("sp", "Split", ["data"], ["a", "b"])
    + _layer("ra", "ReLU", ["a"], ["a2"])
    + _layer("sum", "Eltwise", ["a2", "b"])
    + _fc("sum"),
    "Flatten_Reshape": _layer("f", "Flatten", ["data"], ["f"])
    + _layer("rs", "Reshape", ["f"], param="reshape_param { shape { dim: 0 dim: 12 dim: -1 } }")
    + _fc("rs"),
    "Softmax": _fc("data", "fc0") + _layer("prob", "Softmax", ["fc0"], ["fc"]),
    "Softmax_4d": _layer("sm", "Softmax", ["data"]) + _fc("sm"),
    "LRN_across": _layer("n", "LRN", ["data"], param="lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 }")
    + _fc("n"),
    "LRN_across_k2": _layer(
        "n", "LRN", ["data"], param="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"
    )
    + _fc("n"),
    "LRN_within": _layer(
        "n",
        "LRN",
        ["data"],
        param="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }",
    )
    + _fc("n"),
    "Eltwise_SUM_coeff": _pool("p", "data", "pool: MAX kernel_size: 2 stride: 2")
    + _pool("q", "data", "pool: AVE kernel_size: 2 stride: 2")
    + _layer("e", "Eltwise", ["p", "q"], param="eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }")
    + _fc("e"),
    "Eltwise_PROD": _layer("r", "Sigmoid", ["data"])
    + _layer("e", "Eltwise", ["data", "r"], param="eltwise_param { operation: PROD }")
    + _fc("e"),
    "Im2col": _layer("i", "Im2col", ["data"], param="convolution_param { kernel_size: 3 stride: 2 }")
    + _fc("i"),
    "Im2col_pad": _layer("i", "Im2col", ["data"], param="convolution_param { kernel_size: 3 pad: 1 }")
    + _fc("i"),
    "Clip": _layer("c", "Clip", ["data"], param="clip_param { min: -0.5 max: 0.5 }") + _fc("c"),
    "ReLU6": _layer("s", "Power", ["data"], param="power_param { scale: 8 }")
    + _layer("r", "ReLU6", ["s"])
    + _fc("r"),
    "ReLU6_slope": _layer("s", "Power", ["data"], param="power_param { scale: 8 }")
    + _layer("r", "ReLU6", ["s"], param="relu6_param { negative_slope: 0.1 }")
    + _fc("r"),
    "Tile": _layer("t", "Tile", ["data"], param="tile_param { axis: 2 tiles: 3 }") + _fc("t"),
    "Reduction_ASUM": _layer(
        "r", "Reduction", ["data"], param="reduction_param { operation: ASUM axis: 2 coeff: 0.5 }"
    )
    + _fc("r"),
    "Reduction_SUMSQ": _layer(
        "r", "Reduction", ["data"], param="reduction_param { operation: SUMSQ axis: 2 }"
    )
    + _fc("r"),
    "Eltwise_MAX": _layer("t", "TanH", ["data"])
    + _layer("e", "Eltwise", ["data", "t"], param="eltwise_param { operation: MAX }")
    + _fc("e"),
    "BatchNorm_Scale": _layer("bn", "BatchNorm", ["data"], ["bn"])
    + _layer("sc", "Scale", ["bn"], ["bn"], "scale_param { bias_term: true }")
    + _fc("bn"),
    "Sigmoid_TanH_ELU_PReLU": _layer("a", "Sigmoid", ["data"])
    + _layer("b", "TanH", ["a"])
    + _layer("c", "ELU", ["b"])
    + _layer("d", "PReLU", ["c"])
    + _fc("d"),
    "Power_AbsVal_Exp": _layer("a", "Power", ["data"], param="power_param { power: 2 scale: 0.5 shift: 3 }")
    + _layer("b", "AbsVal", ["a"])
    + _layer("c", "Exp", ["b"], param="exp_param { scale: 0.1 }")
    + _fc("c"),
    "InnerProduct_axis2": _layer(
        "ip", "InnerProduct", ["data"], param="inner_product_param { num_output: 3 axis: 2 }"
    )
    + _fc("ip"),
    "AlexNet_like": _layer("r", "ReLU", ["data"], ["data2"])
    + _layer("n", "LRN", ["data2"], param="lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    + _pool("p", "n", "pool: MAX kernel_size: 3 stride: 2")
    + _fc("p", "fc6", 16)
    + _layer("r6", "ReLU", ["fc6"], ["fc6"])
    + _layer("d6", "Dropout", ["fc6"], ["fc6"])
    + _fc("fc6", "fc")
    + _layer("prob", "Softmax", ["fc"]),
}


def _tail_model(tmp_path, layers: str, shape=SHAPE, seed: int = 0):
    _, _, path = convert_text(tmp_path, net_text(shape, layers), seed=seed)
    return ModelSession(path, "cpu")


@pytest.mark.parametrize("name", sorted(TAILS))
def test_gradient_matches_finite_differences(tmp_path, name):
    session = _tail_model(tmp_path, TAILS[name])
    score = session.tensor_for("fc")
    features = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    error = finite_difference_error(session.model, "data", score, features, index=1)
    assert error <= TOLERANCE, f"{name}: relative error {error:.3g}"


def test_gradient_is_batched_per_row(tmp_path):
    session = _tail_model(tmp_path, TAILS["AlexNet_like"])
    features = np.random.default_rng(2).normal(size=(3, *SHAPE[1:])).astype(np.float32)
    _, together = onnx_gradient(session.model, "data", "fc", features, 2)
    for i in range(3):
        _, alone = onnx_gradient(session.model, "data", "fc", features[i : i + 1], 2)
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-5, atol=1e-7)


def test_maxpool_overlapping_windows_add_up(tmp_path):
    """Two overlapping windows with the same maximum: its gradient is the sum of both (MaxUnpool would keep one)."""
    session = _tail_model(
        tmp_path,
        _pool("p", "data", "pool: MAX kernel_size: 3 stride: 1") + _layer("f", "Flatten", ["p"], ["fc"]),
        (1, 1, 3, 4),
    )
    features = np.zeros((1, 1, 3, 4), np.float32)
    features[0, 0, 1, 1] = 5.0  # the maximum of both windows (columns 0-2 and 1-3)
    tail = build_tail(session.model, "data", "fc")
    run = ModelSession(tail.model, "cpu")
    seed = np.ones((1, 2), np.float32)
    grad = run.run({"data": features, tail.seed: seed}, [tail.gradient])[tail.gradient]
    assert grad[0, 0, 1, 1] == 2.0 and grad.sum() == 2.0


def test_global_maxpool_tie_sends_the_gradient_to_the_first_maximum(tmp_path):
    """Caffe's max pooling (global_pooling: a kernel over the whole map) scans with a strict `>`: of tied
    maxima only the first in row-major order gets the gradient."""
    session = _tail_model(
        tmp_path,
        _pool("p", "data", "pool: MAX global_pooling: true") + _layer("f", "Flatten", ["p"], ["fc"]),
        (2, 2, 3, 4),
    )
    features = np.zeros((2, 2, 3, 4), np.float32)  # map (0, 0): all tied at 0
    features[0, 1, 1, 2] = features[0, 1, 2, 3] = 3.0
    features[1] = -1.0
    features[1, 0, 2, 1] = features[1, 0, 0, 3] = 2.0
    tail = build_tail(session.model, "data", "fc")
    run = ModelSession(tail.model, "cpu")
    seed = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    grad = run.run({"data": features, tail.seed: seed}, [tail.gradient])[tail.gradient]
    expected = np.zeros_like(features)
    expected[0, 0, 0, 0] = 1.0
    expected[0, 1, 1, 2] = 2.0
    expected[1, 0, 0, 3] = 3.0
    expected[1, 1, 0, 0] = 4.0
    np.testing.assert_array_equal(grad, expected)


def test_tail_reads_only_the_layers_after_the_feature(tmp_path):
    layers = _layer(
        "c", "Convolution", ["data"], ["feat"], "convolution_param { num_output: 4 kernel_size: 3 }"
    )
    layers += (
        _layer("r", "ReLU", ["feat"], ["feat"])
        + _pool("p", "feat", "pool: AVE global_pooling: true")
        + _fc("p")
    )
    session = _tail_model(tmp_path, layers)
    tail = build_tail(session.model, "feat", "fc")
    ops = [node.op_type for node in tail.model.graph.node if not node.name.startswith("backward")]
    assert "Conv" not in ops and "Relu" not in ops and ops[0] == "GlobalAveragePool"
    assert [i.name for i in tail.model.graph.input] == ["feat", tail.seed] and tail.side_inputs == []


def test_refuses_a_layer_without_backward_by_name(tmp_path):
    layers = _layer("thr", "Threshold", ["data"], ["t"], "threshold_param { threshold: 0.5 }") + _fc("t")
    session = _tail_model(tmp_path, layers)
    with pytest.raises(
        GradientError, match=r"'thr' \(Cast\) casts the result of a Greater .*; name a later --feature-layer"
    ) as info:
        build_tail(session.model, "data", "fc")
    assert "\n" not in str(info.value)


def test_score_must_depend_on_the_feature(tmp_path):
    layers = _layer(
        "c", "Convolution", ["data"], ["feat"], "convolution_param { num_output: 4 kernel_size: 3 }"
    )
    layers += _fc("data", "fc") + _fc("feat", "other")
    session = _tail_model(tmp_path, layers)
    with pytest.raises(GradientError, match="does not depend on feature 'feat'"):
        build_tail(session.model, "feat", "fc")


def test_side_inputs_are_declared(tmp_path):
    """A tail that also reads a branch skipping the feature takes that branch's value as an input."""
    layers = _layer(
        "c", "Convolution", ["data"], ["feat"], "convolution_param { num_output: 6 kernel_size: 1 }"
    )
    layers += _layer("e", "Eltwise", ["feat", "data"]) + _fc("e")
    session = _tail_model(tmp_path, layers)
    tail = build_tail(session.model, "feat", "fc")
    assert tail.side_inputs == ["data"]
    features = np.random.default_rng(3).normal(size=SHAPE).astype(np.float32)
    run = ModelSession(tail.model, "cpu")
    seed = np.eye(5, dtype=np.float32)[[0]]
    values = run.run({"feat": features, "data": features, tail.seed: seed}, ["fc", tail.gradient])
    weights = session.model.graph.initializer
    fc_w = next(
        np.frombuffer(w.raw_data, np.float32) for w in weights if w.name.startswith("fc") and len(w.dims) == 2
    )
    np.testing.assert_allclose(values[tail.gradient].reshape(-1), fc_w.reshape(5, -1)[0], rtol=1e-6)


# ------------------------------------------------------------------------------- heads of real deploy files

REAL_HEADS = {
    # deploy, feature blob (final value, after the in-place ReLU), score blob
    "vgg16_cam": ("conv5_3", "CAM_fc"),
    "bvlc_alexnet": ("conv5", "fc8"),
    "bvlc_googlenet": ("inception_5b/output", "loss3/classifier"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL_HEADS))
def test_gradient_of_real_heads_with_random_weights(tmp_path, name):
    from camcaffe.convert.api import convert_files
    from camcaffe.convert.random_model import write_random_caffemodel
    from tests.helpers import shared_path

    deploy = shared_path("data", "models", name, "deploy.prototxt")
    write_random_caffemodel(deploy, tmp_path / "w.caffemodel", seed=5)
    convert_files(deploy, tmp_path / "w.caffemodel", tmp_path / "m.onnx")
    session = ModelSession(tmp_path / "m.onnx", "cpu")
    feature_blob, score_blob = REAL_HEADS[name]
    feature, score = session.tensor_for(feature_blob), session.tensor_for(score_blob)
    tail = build_tail(session.model, feature, score)
    assert tail.side_inputs == [] and len(tail.model.graph.node) < 60  # only the head is recomputed
    shape = (1, *tail.feature_shape[1:])
    # Random features (not ReLU outputs): no exact ties for max pooling, where the gradient is one-sided.
    features = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    error = finite_difference_error(session.model, feature, score, features, index=7, directions=6)
    assert error <= TOLERANCE, f"{name}: relative error {error:.3g}"


# ------------------------------------------------------------------------- tails as other exporters write them

EXPORTED_TAILS = {
    "ReduceMean_nchw_keepdims0": lambda: reduce_tail("ReduceMean", [2, 3], 0, FEATURE[1]),
    "ReduceMean_nchw_keepdims1": lambda: reduce_tail("ReduceMean", [-2, -1], 1, FEATURE[1]),
    "ReduceMean_nhwc_cast": lambda: reduce_tail("ReduceMean", [1, 2], 0, FEATURE[3], cast=True),
    "ReduceSum": lambda: reduce_tail("ReduceSum", [2, 3], 0, FEATURE[1]),
    "ReduceMax": lambda: reduce_tail("ReduceMax", [2, 3], 1, FEATURE[1]),
    "Reshape_runtime_shape": runtime_reshape,
    "Transpose_Squeeze_Unsqueeze_Cast_Softmax": transpose_squeeze,
}


@pytest.mark.parametrize("name", sorted(EXPORTED_TAILS))
def test_exported_tail_gradient_matches_finite_differences(name):
    model = EXPORTED_TAILS[name]()
    features = np.random.default_rng(7).normal(size=FEATURE).astype(np.float32)
    error = finite_difference_error(model, "x", "score", features, index=1)
    assert error <= TOLERANCE, f"{name}: relative error {error:.3g}"


def test_reduce_mean_over_axes_of_opset_13_attribute():
    nodes = [op_node("ReduceMean", ["x"], "pooled", axes=[2, 3], keepdims=0)]
    dense, inits = dense_head("pooled", FEATURE[1])
    model = graph_model(nodes + dense, inits, opset=13)
    features = np.random.default_rng(8).normal(size=FEATURE).astype(np.float32)
    assert finite_difference_error(model, "x", "score", features, index=2) <= TOLERANCE


def test_cast_to_an_integer_type_is_refused():
    nodes = [
        op_node("Cast", ["x"], "ints", to=onnx.TensorProto.INT64),
        op_node("Cast", ["ints"], "back", to=1),
    ]
    nodes.append(op_node("ReduceMean", ["back", "axes"], "pooled", keepdims=0))
    dense, inits = dense_head("pooled", FEATURE[1])
    with pytest.raises(GradientError, match=r"'ints' \(Cast\) casts to a non-float type"):
        build_tail(graph_model(nodes + dense, [int64s("axes", [2, 3]), *inits]), "x", "score")
