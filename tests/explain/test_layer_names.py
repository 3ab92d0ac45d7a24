"""Framework layer names as --feature-layer / --fc-layer, on small graphs named as torch.onnx.export (legacy:
scope paths; dynamo: name_scopes metadata) and tf2onnx (Keras 3 scopes with TensorFlow's `_1` suffix) name
them: the layer's output, the classifier's scores, and one-line refusals with suggestions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from camcaffe.errors import CamHeadError
from camcaffe.explain.cam_head import find_cam_head
from camcaffe.explain.layer_names import TORCH_SCOPES, layer_output, node_scopes

# The legacy torch export of conv1 -> layer1 (two blocks: conv1 + relu each) -> avgpool -> flatten -> fc.
LEGACY = [
    ("/conv1/Conv", "Conv", ["x", "w0"]),
    ("/relu/Relu", "Relu", ["/conv1/Conv"]),
    ("/layer1/layer1.0/conv1/Conv", "Conv", ["/relu/Relu", "w1"]),
    ("/layer1/layer1.0/relu/Relu", "Relu", ["/layer1/layer1.0/conv1/Conv"]),
    ("/layer1/layer1.1/conv1/Conv", "Conv", ["/layer1/layer1.0/relu/Relu", "w1"]),
    ("/layer1/layer1.1/relu/Relu", "Relu", ["/layer1/layer1.1/conv1/Conv"]),
    ("/avgpool/GlobalAveragePool", "GlobalAveragePool", ["/layer1/layer1.1/relu/Relu"]),
    ("/Flatten", "Flatten", ["/avgpool/GlobalAveragePool"]),
    ("/fc/Gemm", "Gemm", ["/Flatten", "fcw", "fcb"]),
    ("/Softmax", "Softmax", ["/fc/Gemm"]),
]


def _model(spec, scopes: dict[str, list[str]] | None = None, output: str | None = None) -> onnx.ModelProto:
    """Nodes (name = output tensor, op, inputs); `scopes`: dynamo's name_scopes metadata per node."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(2, 4)).astype(np.float32), "fcw"),
        numpy_helper.from_array(rng.normal(size=2).astype(np.float32), "fcb"),
    ]
    nodes = []
    for name, op, inputs in spec:
        attrs = {"pads": [1, 1, 1, 1]} if op == "Conv" else {"transB": 1} if op == "Gemm" else {}
        node = helper.make_node(op, inputs, [name], name=name, **attrs)
        if scopes and name in scopes:
            entry = node.metadata_props.add()
            entry.key, entry.value = TORCH_SCOPES, repr(["", *scopes[name], name])
        nodes.append(node)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(output or spec[-1][0], TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _output(model: onnx.ModelProto, name: str, **options) -> str | None:
    graph = model.graph
    return layer_output(list(graph.node), [o.name for o in graph.output], name, "feature layer", **options)


def test_scopes_of_a_legacy_node_name_are_qualified_as_torch_names_modules():
    node = helper.make_node("Relu", ["a"], ["b"], name="/layer4/layer4.1/relu_1/Relu")
    assert [s.qualified for s in node_scopes(node)] == ["layer4", "layer4.1", "layer4.1.relu_1"]
    assert [s.last for s in node_scopes(node)] == ["layer4", "layer4.1", "relu_1"]


@pytest.mark.parametrize(
    ("name", "tensor"),
    [
        ("layer1", "/layer1/layer1.1/relu/Relu"),  # a module: the output of its last node
        ("layer1.0", "/layer1/layer1.0/relu/Relu"),
        ("layer1.0.conv1", "/layer1/layer1.0/conv1/Conv"),  # the qualified name
        ("layer1/layer1.1/conv1", "/layer1/layer1.1/conv1/Conv"),  # the path
        ("conv1", "/conv1/Conv"),  # the top-level module, not the blocks' conv1
        ("avgpool", "/avgpool/GlobalAveragePool"),
    ],
)
def test_legacy_torch_module_names(name, tensor):
    assert _output(_model(LEGACY), name) == tensor


def test_a_classifier_name_gives_its_scores_not_its_softmax():
    spec = [*LEGACY[:-1], ("/fc/Softmax", "Softmax", ["/fc/Gemm"])]
    model = _model(spec)
    assert _output(model, "fc") == "/fc/Softmax"
    assert _output(model, "fc", before_softmax=True) == "/fc/Gemm"


def test_an_ambiguous_name_lists_the_layers_it_may_mean():
    rename = {"/relu/Relu": "/act/Relu"}  # no top-level `relu`: only the blocks' ones are left
    spec = [(rename.get(name, name), op, [rename.get(i, i) for i in inputs]) for name, op, inputs in LEGACY]
    with pytest.raises(CamHeadError, match=r"'relu' names 2 layers: layer1\.0\.relu, layer1\.1\.relu; give"):
        _output(_model(spec), "relu")


def test_an_unknown_name_is_none_here_and_a_suggestion_in_the_cam_head_finder():
    model = _model(LEGACY)
    assert _output(model, "layer9") is None
    with pytest.raises(CamHeadError, match=r"feature layer 'layer9' is not in g; closest names: .*layer1"):
        find_cam_head(model, feature_layer="layer9")


def test_a_layer_with_two_unrelated_outputs_is_refused():
    spec = [
        ("/conv1/Conv", "Conv", ["x", "w0"]),
        ("/block/a/Relu", "Relu", ["/conv1/Conv"]),
        ("/block/b/Sigmoid", "Sigmoid", ["/conv1/Conv"]),
        ("/Add", "Add", ["/block/a/Relu", "/block/b/Sigmoid"]),
    ]
    with pytest.raises(
        CamHeadError, match=r"'block' \(block\) has several outputs: /block/a/Relu, /block/b/Sigmoid"
    ):
        _output(_model(spec), "block")


def test_dynamo_name_scopes_metadata():
    """torch's dynamo export names nodes node_relu_3, node_linear: the module path is in the metadata."""
    spec = [
        ("conv2d", "Conv", ["x", "w0"]),
        ("relu", "Relu", ["conv2d"]),
        ("conv2d_1", "Conv", ["relu", "w1"]),
        ("relu_1", "Relu", ["conv2d_1"]),
        ("mean", "GlobalAveragePool", ["relu_1"]),
        ("view", "Flatten", ["mean"]),
        ("linear", "Gemm", ["view", "fcw", "fcb"]),
    ]
    scopes = {
        "conv2d": ["conv1"],
        "relu": ["relu"],
        "conv2d_1": ["layer1", "layer1.0", "layer1.0.conv1"],
        "relu_1": ["layer1", "layer1.0", "layer1.0.relu"],
        "mean": ["avgpool"],
        "linear": ["fc"],
    }
    model = _model(spec, scopes)
    assert _output(model, "layer1") == "relu_1"
    assert _output(model, "layer1.0.conv1") == "conv2d_1"
    head = find_cam_head(model, feature_layer="layer1", fc_layer="fc")
    assert head.feature_blob == "relu_1" and head.num_classes == 2


def test_tf2onnx_keras_scopes_with_the_tensorflow_suffix():
    """tf2onnx keeps Keras 3's layer scopes as TensorFlow made them unique: block5_conv3 -> block5_conv3_1; the
    layer's output is after its activation, and a Dense with a softmax gives its scores to --fc-layer."""
    spec = [
        ("functional_1/block5_conv3_1/convolution", "Conv", ["x", "w0"]),
        ("functional_1/block5_conv3_1/Relu", "Relu", ["functional_1/block5_conv3_1/convolution"]),
        ("functional_1/gap_1/Mean", "GlobalAveragePool", ["functional_1/block5_conv3_1/Relu"]),
        ("functional_1/gap_1/Flatten", "Flatten", ["functional_1/gap_1/Mean"]),
        ("functional_1/predictions_1/Gemm", "Gemm", ["functional_1/gap_1/Flatten", "fcw", "fcb"]),
        ("functional_1/predictions_1/Softmax", "Softmax", ["functional_1/predictions_1/Gemm"]),
    ]
    model = _model(spec)
    assert _output(model, "block5_conv3") == "functional_1/block5_conv3_1/Relu"
    assert _output(model, "functional_1/block5_conv3_1") == "functional_1/block5_conv3_1/Relu"
    head = find_cam_head(model, feature_layer="block5_conv3", fc_layer="predictions")
    assert head.feature_blob == "functional_1/block5_conv3_1/Relu"
    assert head.fc_node == "functional_1/predictions_1/Gemm"


def test_tf2onnx_auto_named_layers_are_told_apart_by_their_suffix():
    """Keras's auto-named conv2d, conv2d_1 are scopes conv2d_1, conv2d_1_2 in a tf2onnx export (checked on a
    real one): `conv2d_1` must mean Keras's second conv, not the scope that happens to be called conv2d_1."""
    spec = [
        ("functional_1/conv2d_1/convolution", "Conv", ["x", "w0"]),
        ("functional_1/conv2d_1/Relu", "Relu", ["functional_1/conv2d_1/convolution"]),
        ("functional_1/conv2d_1_2/convolution", "Conv", ["functional_1/conv2d_1/Relu", "w1"]),
        ("functional_1/conv2d_1_2/Relu", "Relu", ["functional_1/conv2d_1_2/convolution"]),
        ("functional_1/global_average_pooling2d_1/Mean", "GlobalAveragePool", ["functional_1/conv2d_1_2/Relu"]),
        ("functional_1/flatten_1/Flatten", "Flatten", ["functional_1/global_average_pooling2d_1/Mean"]),
        ("functional_1/dense_1/Gemm", "Gemm", ["functional_1/flatten_1/Flatten", "fcw", "fcb"]),
        ("functional_1/dense_1/Softmax", "Softmax", ["functional_1/dense_1/Gemm"]),
    ]
    model = _model(spec)
    assert _output(model, "conv2d") == "functional_1/conv2d_1/Relu"
    assert _output(model, "conv2d_1") == "functional_1/conv2d_1_2/Relu"
    assert _output(model, "functional_1/conv2d_1") == "functional_1/conv2d_1/Relu"  # a full path is the scope


def test_resolve_target_takes_framework_names(tmp_path):
    from camcaffe.explain.methods.target import resolve_target
    from camcaffe.runtime.session import ModelSession

    path = tmp_path / "legacy.onnx"
    onnx.save(_model(LEGACY, output="/Softmax"), path)
    target = resolve_target(ModelSession(path, "cpu"), feature_layer="layer1.0", fc_layer="fc")
    assert target.feature_blob == "/layer1/layer1.0/relu/Relu"
    assert target.score_tensor == "/fc/Gemm" and target.prob_output == "/Softmax"
    with pytest.raises(CamHeadError, match=r"feature layer 'layer1\.9' is not in the model; closest: "):
        resolve_target(ModelSession(path, "cpu"), feature_layer="layer1.9")
