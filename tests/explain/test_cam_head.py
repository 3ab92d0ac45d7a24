"""CAM head detection on small ONNX graphs built for each pattern (opset 17, IR 8)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from camcaffe.errors import CamHeadError
from camcaffe.explain.cam import compute_cams, global_average_pool
from camcaffe.explain.cam_head import CamHead, describe, find_cam_head

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _vi(name: str, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: dict[str, np.ndarray],
    list_inits_as_inputs: bool = False,
) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    if list_inits_as_inputs:  # old exporters (caffe2onnx) also declare initializers as graph inputs
        inputs = inputs + [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for k, v in inits.items()
        ]
    graph = helper.make_graph(nodes, "test_net", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, outputs: list[str], x: np.ndarray) -> list[np.ndarray]:
    extra = [_vi(name, None) for name in outputs if name not in {o.name for o in model.graph.output}]
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.extend(extra)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, {session.get_inputs()[0].name: x})


def _check_logits(model: onnx.ModelProto, head: CamHead, logits_name: str, x: np.ndarray) -> None:
    """GAP(feature) @ W.T + b must reproduce the classifier output computed by ONNX Runtime."""
    feature, logits = _run(model, [head.feature_blob, logits_name], x)
    ours = global_average_pool(feature) @ head.weights.T + (0 if head.bias is None else head.bias)
    np.testing.assert_allclose(ours, logits.reshape(ours.shape), rtol=1e-4, atol=1e-4)
    cams = compute_cams(feature, head.weights, np.tile(np.arange(head.num_classes), (x.shape[0], 1)))
    np.testing.assert_allclose(
        cams.mean(axis=(2, 3)), ours - (0 if head.bias is None else head.bias), atol=1e-4
    )


# ----------------------------------------------------------------------------------------------------------
# Graph builders


def camcaffe_style() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """camcaffe's converter: the in-place ReLU's output carries the Caffe blob name CAM_conv."""
    p = {"conv_w": _w(8, 3, 3, 3), "conv_b": _w(8), "fc_w": _w(5, 8), "fc_b": _w(5)}
    nodes = [
        helper.make_node(
            "Conv", ["data", "CAM_conv/W", "CAM_conv/b"], ["CAM_conv/pre_relu"], "CAM_conv", pads=[1] * 4
        ),
        helper.make_node("Relu", ["CAM_conv/pre_relu"], ["CAM_conv"], "CAM_relu"),
        helper.make_node(
            "AveragePool", ["CAM_conv"], ["CAM_pool"], "CAM_pool", kernel_shape=[6, 6], strides=[6, 6]
        ),
        helper.make_node("Flatten", ["CAM_pool"], ["CAM_fc/flat"], "CAM_fc/flatten", axis=1),
        helper.make_node(
            "Gemm", ["CAM_fc/flat", "CAM_fc/weight", "CAM_fc/bias"], ["CAM_fc"], "CAM_fc", transB=1
        ),
        helper.make_node("Softmax", ["CAM_fc"], ["prob"], "prob", axis=1),
    ]
    inits = {
        "CAM_conv/W": p["conv_w"],
        "CAM_conv/b": p["conv_b"],
        "CAM_fc/weight": p["fc_w"],
        "CAM_fc/bias": p["fc_b"],
    }
    return _model(nodes, [_vi("data", ["N", 3, 6, 6])], [_vi("prob", ["N", 5])], inits), p


def caffe2onnx_style(fc_name: str = "CAM_fc", node_names: bool = True) -> tuple[onnx.ModelProto, dict]:
    """caffe2onnx / caffe-onnx: the ReLU layer names the features; Gemm transB=1; <layer>_W, <layer>_B."""
    p = {"conv_w": _w(6, 4, 1, 1), "fc_w": _w(3, 6), "fc_b": _w(3)}

    def name(n: str) -> str:
        return n if node_names else ""

    nodes = [
        helper.make_node("Conv", ["data", "CAM_conv_W"], ["CAM_conv"], name("CAM_conv")),
        helper.make_node("Relu", ["CAM_conv"], ["CAM_relu"], name("CAM_relu")),
        helper.make_node(
            "AveragePool",
            ["CAM_relu"],
            ["CAM_pool"],
            name("CAM_pool"),
            kernel_shape=[14, 14],
            strides=[14, 14],
        ),
        helper.make_node(
            "Reshape", ["CAM_pool", "CAM_pool_shape"], ["CAM_pool_reshaped"], name("CAM_pool_reshape")
        ),
        helper.make_node(
            "Gemm", ["CAM_pool_reshaped", f"{fc_name}_W", f"{fc_name}_B"], ["fc_out"], name(fc_name), transB=1
        ),
        helper.make_node("Softmax", ["fc_out"], ["prob"], name("prob"), axis=1),
    ]
    inits = {
        "CAM_conv_W": p["conv_w"],
        "CAM_pool_shape": np.array([0, -1], np.int64),
        f"{fc_name}_W": p["fc_w"],
        f"{fc_name}_B": p["fc_b"],
    }
    model = _model(
        nodes, [_vi("data", [2, 4, 14, 14])], [_vi("prob", [2, 3])], inits, list_inits_as_inputs=True
    )
    return model, p


def open_nsfw_style() -> tuple[onnx.ModelProto, dict]:
    """ResNet tail: Eltwise SUM -> in-place ReLU -> AVE 7 stride 1 (ceil) -> InnerProduct as Gemm transB=0."""
    p = {"a": _w(8, 4, 1, 1), "b": _w(8, 4, 1, 1), "fc_b": _w(8, 2), "fc_c": _w(2)}
    nodes = [
        helper.make_node("Conv", ["data", "a_W"], ["branch_a"], "branch_a"),
        helper.make_node("Conv", ["data", "b_W"], ["branch_b"], "branch_b"),
        helper.make_node("Add", ["branch_a", "branch_b"], ["eltwise_stage3_block2"], "eltwise_stage3_block2"),
        helper.make_node("Relu", ["eltwise_stage3_block2"], ["relu_stage3_block2"], "relu_stage3_block2"),
        helper.make_node(
            "AveragePool",
            ["relu_stage3_block2"],
            ["pool"],
            "pool",
            kernel_shape=[7, 7],
            strides=[1, 1],
            ceil_mode=1,
        ),
        helper.make_node("Flatten", ["pool"], ["pool_flat"], "pool_flatten"),
        helper.make_node(
            "Gemm", ["pool_flat", "fc_nsfw_B", "fc_nsfw_C"], ["fc_nsfw"], "fc_nsfw", alpha=0.5, beta=2.0
        ),
        helper.make_node("Softmax", ["fc_nsfw"], ["prob"], "prob"),
    ]
    inits = {"a_W": p["a"], "b_W": p["b"], "fc_nsfw_B": p["fc_b"], "fc_nsfw_C": p["fc_c"]}
    return _model(nodes, [_vi("data", ["N", 4, 7, 7])], [_vi("prob", ["N", 2])], inits), p


def squeezenet_style(global_pool: bool = True) -> tuple[onnx.ModelProto, dict]:
    """1x1 class conv (pad 1, like SqueezeNet v1.0 DC) -> ReLU -> global pooling -> [Softmax]."""
    p = {"w": _w(6, 4, 1, 1), "b": _w(6)}
    nodes = [
        helper.make_node("Conv", ["data", "conv10_W", "conv10_B"], ["conv10"], "conv10", pads=[1] * 4),
        helper.make_node("Relu", ["conv10"], ["relu_conv10"], "relu_conv10"),
    ]
    if global_pool:
        nodes += [
            helper.make_node("GlobalAveragePool", ["relu_conv10"], ["pool10"], "pool10"),
            helper.make_node("Flatten", ["pool10"], ["pool10_flat"], "flatten"),
            helper.make_node("Softmax", ["pool10_flat"], ["prob"], "prob"),
        ]
        outputs = [_vi("prob", ["N", 6])]
    else:
        nodes.append(
            helper.make_node(
                "AveragePool", ["relu_conv10"], ["pool_final"], "pool_final", kernel_shape=[7, 7]
            )
        )
        outputs = [_vi("pool_final", ["N", 6, 1, 1])]
    inits = {"conv10_W": p["w"], "conv10_B": p["b"]}
    return _model(nodes, [_vi("data", ["N", 4, 5, 5])], outputs, inits), p


def se_style() -> tuple[onnx.ModelProto, dict]:
    """A squeeze-excitation block (GAP -> 1x1 convs -> Sigmoid gate) before the real CAM head."""
    p = {"c1": _w(8, 3, 3, 3), "s1": _w(2, 8, 1, 1), "s2": _w(8, 2, 1, 1), "fc": _w(4, 8), "fc_b": _w(4)}
    nodes = [
        helper.make_node("Conv", ["data", "c1"], ["f1"], "conv1", pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["f1"], ["s"], "se_pool"),
        helper.make_node("Conv", ["s", "s1"], ["s_fc1"], "se_fc1"),
        helper.make_node("Relu", ["s_fc1"], ["s_relu"], "se_relu"),
        helper.make_node("Conv", ["s_relu", "s2"], ["s_fc2"], "se_fc2"),
        helper.make_node("Sigmoid", ["s_fc2"], ["gate"], "se_gate"),
        helper.make_node("Mul", ["f1", "gate"], ["scaled"], "se_scale"),
        helper.make_node("Relu", ["scaled"], ["feat"], "relu_final"),
        helper.make_node("GlobalAveragePool", ["feat"], ["pool"], "pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], "fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], "prob"),
    ]
    return _model(nodes, [_vi("data", ["N", 3, 6, 6])], [_vi("prob", ["N", 4])], p), p


# ----------------------------------------------------------------------------------------------------------
# Automatic detection


def test_camcaffe_style_head() -> None:
    model, p = camcaffe_style()
    head = find_cam_head(model)
    assert (head.feature_blob, head.kind, head.fc_node, head.prob_output) == (
        "CAM_conv",
        "gap_linear",
        "CAM_fc",
        "prob",
    )
    assert head.num_classes == 5 and head.pool_node == "CAM_pool"
    np.testing.assert_array_equal(head.weights, p["fc_w"])
    np.testing.assert_array_equal(head.bias, p["fc_b"])
    _check_logits(model, head, "CAM_fc", _w(2, 3, 6, 6))
    assert "CAM_conv" in describe(head) and "\n" not in describe(head)


def test_caffe2onnx_style_head_and_overrides() -> None:
    model, p = caffe2onnx_style()
    head = find_cam_head(model)
    assert (head.feature_blob, head.fc_node, head.kind, head.prob_output) == (
        "CAM_relu",
        "CAM_fc",
        "gap_linear",
        "prob",
    )
    np.testing.assert_array_equal(head.weights, p["fc_w"])
    _check_logits(model, head, "fc_out", _w(2, 4, 14, 14))
    # Caffe blob CAM_conv is the in-place ReLU output in Caffe: follow the ReLU to the pooled tensor
    for feature in ("CAM_conv", "CAM_relu"):
        assert find_cam_head(model, feature_layer=feature).feature_blob == "CAM_relu"
    for fc in ("CAM_fc", "fc_out", "CAM_fc_W"):
        assert find_cam_head(model, fc_layer=fc).fc_node == "CAM_fc"
    both = find_cam_head(model, feature_layer="CAM_conv", fc_layer="CAM_fc")
    assert both.feature_blob == "CAM_relu"


def test_fc_layer_by_initializer_prefix_on_unnamed_nodes() -> None:
    model, p = caffe2onnx_style(fc_name="CAM_fc_14", node_names=False)
    head = find_cam_head(model, feature_layer="CAM_conv", fc_layer="CAM_fc_14")
    assert head.fc_node == "fc_out"  # unnamed node: its output names it
    np.testing.assert_array_equal(head.bias, p["fc_b"])
    with pytest.raises(
        CamHeadError, match=r"fc layer 'CAM_fc_1' is not in test_net; closest names: .*CAM_fc_14"
    ):
        find_cam_head(model, fc_layer="CAM_fc_1")


def test_open_nsfw_style_gemm_alpha_beta_trans_b_0() -> None:
    model, p = open_nsfw_style()
    head = find_cam_head(model)
    assert (head.feature_blob, head.fc_node, head.num_classes) == ("relu_stage3_block2", "fc_nsfw", 2)
    np.testing.assert_allclose(head.weights, 0.5 * p["fc_b"].T)
    np.testing.assert_allclose(head.bias, 2.0 * p["fc_c"])
    _check_logits(model, head, "fc_nsfw", _w(3, 4, 7, 7))
    assert find_cam_head(model, feature_layer="eltwise_stage3_block2").feature_blob == "relu_stage3_block2"


def test_global_pool_squeeze_matmul_add_without_softmax() -> None:
    w, b = _w(6, 3), _w(3)
    nodes = [
        helper.make_node("Relu", ["data"], ["feat"], "relu"),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"], "gap"),
        helper.make_node("Squeeze", ["gap", "axes"], ["gap_sq"], "squeeze"),
        helper.make_node("MatMul", ["gap_sq", "W"], ["mm"], "fc"),
        helper.make_node("Constant", [], ["bias"], "bias_const", value=numpy_helper.from_array(b, "bias")),
        helper.make_node("Add", ["mm", "bias"], ["logits"], "fc_bias"),
    ]
    model = _model(
        nodes,
        [_vi("data", ["N", 6, 4, 4])],
        [_vi("logits", ["N", 3])],
        {"W": w, "axes": np.array([2, 3], np.int64)},
    )
    head = find_cam_head(model)
    assert (head.feature_blob, head.fc_node, head.prob_output) == ("feat", "fc", None)
    np.testing.assert_array_equal(head.weights, w.T)
    np.testing.assert_array_equal(head.bias, b)
    _check_logits(model, head, "logits", _w(2, 6, 4, 4))
    assert find_cam_head(model, fc_layer="fc_bias").fc_node == "fc"  # the Add of MatMul + Add names it too


def test_global_pool_then_1x1_conv_classifier() -> None:
    w, b = _w(4, 5, 1, 1), _w(4)
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["gap"], "gap"),
        helper.make_node("Conv", ["gap", "W", "B"], ["cls"], "fc_conv"),
        helper.make_node("Flatten", ["cls"], ["cls_flat"], "flatten"),
        helper.make_node("Softmax", ["cls_flat"], ["prob"], "prob"),
    ]
    model = _model(nodes, [_vi("data", ["N", 5, 3, 3])], [_vi("prob", ["N", 4])], {"W": w, "B": b})
    head = find_cam_head(model)
    assert (head.feature_blob, head.fc_node, head.kind, head.prob_output) == (
        "data",
        "fc_conv",
        "gap_linear",
        "prob",
    )
    np.testing.assert_array_equal(head.weights, w[:, :, 0, 0])
    _check_logits(model, head, "cls", _w(2, 5, 3, 3))


@pytest.mark.parametrize("global_pool", [True, False])
def test_squeezenet_class_conv(global_pool: bool) -> None:
    model, p = squeezenet_style(global_pool)
    head = find_cam_head(model)
    assert (head.kind, head.feature_blob, head.fc_node, head.num_classes) == (
        "class_conv",
        "relu_conv10",
        "conv10",
        6,
    )
    assert head.prob_output == ("prob" if global_pool else None)
    np.testing.assert_array_equal(head.weights, np.eye(6, dtype=np.float32))
    assert head.bias is None
    x = _w(2, 4, 5, 5)
    pooled_name = "pool10" if global_pool else "pool_final"
    feature, pooled = _run(model, ["relu_conv10", pooled_name], x)
    assert feature.shape == (2, 6, 7, 7)  # pad 1 on a 1x1 conv
    idx = np.array([[5, 0], [2, 3]])
    cams = compute_cams(feature, head.weights, idx)
    np.testing.assert_array_equal(cams, np.take_along_axis(feature, idx[:, :, None, None], axis=1))
    np.testing.assert_allclose(
        cams.mean(axis=(2, 3)), pooled.reshape(2, 6)[np.arange(2)[:, None], idx], atol=1e-5
    )
    assert find_cam_head(model, fc_layer="conv10").kind == "class_conv"
    assert find_cam_head(model, feature_layer="conv10").feature_blob == "relu_conv10"


def test_squeeze_excitation_gap_is_not_the_head() -> None:
    model, p = se_style()
    head = find_cam_head(model)
    assert (head.feature_blob, head.fc_node, head.pool_node) == ("feat", "fc", "pool")
    _check_logits(model, head, "logits", _w(2, 3, 6, 6))


def test_gating_branch_listed_after_the_head_is_not_the_head() -> None:
    # a second pooled branch whose 1x1 conv feeds a Sigmoid gate, not an output, comes last in node order
    p = {"fc": _w(3, 4), "g": _w(4, 4, 1, 1)}
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pool"], "pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], "fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], "prob"),
        helper.make_node("GlobalAveragePool", ["data"], ["side_pool"], "side_pool"),
        helper.make_node("Conv", ["side_pool", "g"], ["side_fc"], "side_fc"),
        helper.make_node("Sigmoid", ["side_fc"], ["gate"], "gate"),
        helper.make_node("Mul", ["data", "gate"], ["attention"], "attention"),
    ]
    outputs = [_vi("prob", ["N", 3]), _vi("attention", ["N", 4, 5, 5])]
    model = _model(nodes, [_vi("data", ["N", 4, 5, 5])], outputs, p)
    assert find_cam_head(model).fc_node == "fc"


def test_shapes_are_inferred_through_large_weights() -> None:
    # the covering check needs the pooled map's size, inferred through a conv whose weights are large
    p = {"W": _w(128, 16, 1, 1), "fc": _w(2, 128)}
    nodes = [
        helper.make_node("Conv", ["data", "W"], ["feat"], "conv"),
        helper.make_node("AveragePool", ["feat"], ["pool"], "pool", kernel_shape=[7, 7]),
        helper.make_node("Flatten", ["pool"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], "fc", transB=1),
    ]
    model = _model(nodes, [_vi("data", ["N", 16, 7, 7])], [_vi("logits", ["N", 2])], p)
    assert model.graph.initializer[0].ByteSize() > 4096
    head = find_cam_head(model)
    assert (head.feature_blob, head.num_classes, head.weights.shape) == ("feat", 2, (2, 128))


# ----------------------------------------------------------------------------------------------------------
# Refusals


def test_average_pool_that_does_not_cover_the_map() -> None:
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "W"], ["logits"], "fc", transB=1),
    ]
    model = _model(nodes, [_vi("data", [1, 3, 4, 4])], [_vi("logits", [1, 2])], {"W": _w(2, 12)})
    with pytest.raises(
        CamHeadError, match=r"no CAM head found in test_net.*kernel \[2, 2\] does not cover its 4x4"
    ):
        find_cam_head(model)
    with pytest.raises(CamHeadError, match="not global"):
        find_cam_head(model, fc_layer="fc")


def test_unknown_spatial_size_is_explained() -> None:
    nodes = [
        helper.make_node("AveragePool", ["data"], ["pooled"], "pool", kernel_shape=[7, 7]),
        helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "W"], ["logits"], "fc", transB=1),
    ]
    model = _model(nodes, [_vi("data", ["N", 3, "H", "W"])], [_vi("logits", ["N", 2])], {"W": _w(2, 3)})
    with pytest.raises(CamHeadError, match="spatial size is unknown"):
        find_cam_head(model)


def test_no_pooling_at_all() -> None:
    nodes = [
        helper.make_node("Flatten", ["data"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "W"], ["logits"], "fc", transB=1),
    ]
    model = _model(nodes, [_vi("data", [1, 3, 2, 2])], [_vi("logits", [1, 2])], {"W": _w(2, 12)})
    with pytest.raises(CamHeadError, match="no average pooling.*--feature-layer and --fc-layer"):
        find_cam_head(model)


def test_bad_override_names() -> None:
    model, _ = camcaffe_style()
    with pytest.raises(
        CamHeadError, match=r"feature layer 'CAM_cnv' is not in test_net; closest names: .*CAM_conv"
    ):
        find_cam_head(model, feature_layer="CAM_cnv")
    with pytest.raises(CamHeadError, match=r"fc layer 'CAM_relu' is a Relu node"):
        find_cam_head(model, fc_layer="CAM_relu")
    with pytest.raises(
        CamHeadError, match=r"feature layer 'CAM_fc/flat' does not feed a global average pooling"
    ):
        find_cam_head(model, feature_layer="CAM_fc/flat")


def test_feature_and_fc_that_do_not_belong_together() -> None:
    model, _ = se_style()
    with pytest.raises(CamHeadError, match=r"feature layer 'f1' does not feed fc layer 'fc'"):
        find_cam_head(model, feature_layer="f1", fc_layer="fc")
    assert find_cam_head(model, feature_layer="scaled", fc_layer="fc").feature_blob == "feat"


def test_error_messages_are_one_line() -> None:
    model, _ = camcaffe_style()
    for kwargs in ({"feature_layer": "nope"}, {"fc_layer": "nope"}, {"fc_layer": "prob"}):
        with pytest.raises(CamHeadError) as info:
            find_cam_head(model, **kwargs)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------- graphs as torch / Keras exporters write them


def _weights_and_bias(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits["W"], inits["b"]


def test_keras_style_head_channels_last_with_casts() -> None:
    """Keras 3 on the torch backend: Cast around every op, ReduceMean over axes (1, 2) of an NHWC map,
    MatMul -> Cast -> Add -> Cast -> Softmax."""
    from tests.onnx_graphs import FEATURE, op_node, reduce_tail

    model = reduce_tail("ReduceMean", [1, 2], 0, FEATURE[3], cast=True)
    model.graph.node.extend([op_node("Cast", ["score"], "score_cast", to=1)])
    model.graph.node.extend([op_node("Softmax", ["score_cast"], "prob", axis=-1)])
    model.graph.output[0].name = "prob"
    head = find_cam_head(model)
    weights, bias = _weights_and_bias(model)
    assert head.layout == "nhwc" and head.feature_blob == "x" and head.prob_output == "prob"
    np.testing.assert_array_equal(head.weights, weights.T)
    np.testing.assert_array_equal(head.bias, bias)
    assert find_cam_head(model, fc_layer="mm").layout == "nhwc"


def test_cast_to_an_integer_type_is_not_looked_through() -> None:
    from tests.onnx_graphs import FEATURE, reduce_tail

    model = reduce_tail("ReduceMean", [2, 3], 0, FEATURE[1], cast=True)
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    cast.attribute[0].i = TensorProto.INT64
    with pytest.raises(CamHeadError, match="no CAM head found"):
        find_cam_head(model)


@pytest.mark.parametrize("axes", [[2, 3], [-2, -1]])
def test_torch_dynamo_style_head_reduce_mean_keepdims(axes: list[int]) -> None:
    from tests.onnx_graphs import FEATURE, reduce_tail

    model = reduce_tail("ReduceMean", axes, 1, FEATURE[1])
    head = find_cam_head(model)
    assert head.layout == "nchw" and head.feature_blob == "x" and head.pool_node == "pooled"
    np.testing.assert_array_equal(head.weights, _weights_and_bias(model)[0].T)


def test_reshape_to_a_shape_computed_at_run_time() -> None:
    from tests.onnx_graphs import runtime_reshape

    model = runtime_reshape()
    head = find_cam_head(model)
    assert head.fc_node == "mm" and head.pool_node == "pooled"
    np.testing.assert_array_equal(head.bias, _weights_and_bias(model)[1])


def test_reduce_mean_over_other_axes_is_not_a_global_pool() -> None:
    from tests.onnx_graphs import FEATURE, reduce_tail

    model = reduce_tail("ReduceMean", [1, 3], 0, FEATURE[2])
    with pytest.raises(CamHeadError, match="no CAM head found"):
        find_cam_head(model)
