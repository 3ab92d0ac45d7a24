"""In-graph CAM outputs: the maps, top-K and resized maps the exported graph computes equal what the Python
pipeline computes from the fetched feature map (explain.cam), on small nets, the golden nets (real Caffe
weights) and the real SqueezeNet v1.0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from camcaffe.convert.api import convert_files
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import CamcaffeError, CamHeadError, InputFileError
from camcaffe.explain import cam_export
from camcaffe.explain.cam import compute_cams, normalize, softmax, top_k, upsample
from camcaffe.explain.cam_head import find_cam_head, head_from_metadata
from camcaffe.runtime.session import ModelSession
from tests.helpers import net_text, shared_path

GAP_NET = net_text(
    (2, 3, 20, 24),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "gap" type: "Pooling" bottom: "feat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 6 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""",
)
# SqueezeNet's head: a 1x1 class convolution before the global pooling, and no Softmax.
CLASS_CONV_NET = net_text(
    (2, 3, 20, 24),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "feat" top: "feat" }
layer { name: "classes" type: "Convolution" bottom: "feat" top: "classes" convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "classes" top: "classes" }
layer { name: "gap" type: "Pooling" bottom: "classes" top: "gap" pooling_param { pool: AVE global_pooling: true } }
""",
)
NO_HEAD_NET = net_text(
    (1, 3, 8, 8),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "feat" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "pool" type: "Pooling" bottom: "feat" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
""",
)
RNG = np.random.default_rng(7)


def _convert(folder: Path, text: str, seed: int = 3) -> Path:
    (folder / "d.prototxt").write_text(text)
    write_random_caffemodel(folder / "d.prototxt", folder / "w.caffemodel", seed=seed)
    convert_files(folder / "d.prototxt", folder / "w.caffemodel", folder / "m.onnx")
    return folder / "m.onnx"


def _run(path: Path, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds), strict=True))


def _check(plain: Path, exported: Path, x: np.ndarray, k: int, rel: float = 1e-5) -> dict[str, np.ndarray]:
    """The exported outputs against explain.cam on the plain model's feature map and probabilities."""
    session = ModelSession(plain, "cpu")
    head = head_from_metadata(session) or find_cam_head(session.model)  # external weights: from the graph
    record = cam_export.record_of(
        ModelSession(exported, "cpu").info.metadata,
        {o.name for o in onnx.load(exported).graph.output},
        {i.name for i in onnx.load(exported).graph.input},
    )
    assert record is not None and record.top_k == k
    scores = head.prob_output or head.logits
    reference = session.run({session.input_names[0]: x}, [head.feature_blob, scores])
    names = [record.top_classes, record.top_probabilities, record.maps, record.maps_resized]
    got = _run(exported, {session.input_names[0]: x}, names)
    probabilities = reference[scores].reshape(len(x), -1)
    if head.prob_output is None:  # the graph adds the softmax of the class scores, in float32
        pipeline = softmax(probabilities, axis=1)
        probabilities = _run(exported, {session.input_names[0]: x}, [record.probabilities])[
            record.probabilities
        ]
        np.testing.assert_allclose(probabilities, pipeline, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(top_k(pipeline, k)[0], top_k(probabilities, k)[0])
    classes, values = top_k(probabilities, k)
    np.testing.assert_array_equal(got[record.top_classes], classes)
    np.testing.assert_array_equal(got[record.top_probabilities], values)
    maps = compute_cams(reference[head.feature_blob], head.weights, classes)
    assert got[record.maps].shape == maps.shape
    assert np.abs(got[record.maps] - maps).max() <= rel * max(np.abs(maps).max(), 1e-30)
    resized = normalize(upsample(maps, x.shape[2:]))
    assert got[record.maps_resized].shape == (*maps.shape[:2], *x.shape[2:])
    np.testing.assert_allclose(got[record.maps_resized], resized, atol=1e-5)
    return got


@pytest.mark.parametrize("text", [GAP_NET, CLASS_CONV_NET], ids=["gap_linear", "class_conv"])
def test_in_graph_maps_top_k_and_resized_maps_equal_the_pipeline(tmp_path, text):
    plain = _convert(tmp_path, text)
    exported = tmp_path / "cam.onnx"
    record = cam_export.export_cam_file(plain, exported, 3)
    model = onnx.load(exported)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    meta = json.loads({p.key: p.value for p in model.metadata_props}[cam_export.METADATA_KEY])
    assert meta["version"] == 2 and meta["maps"] == "cam_maps" and meta["class_input"] is None
    assert meta["feature_layout"] == meta["input_layout"] == "nchw"
    assert record.kind == ("class_conv" if "classes" in text else "gap_linear")
    # the plain model's metadata and outputs are all still there
    assert {o.name for o in onnx.load(plain).graph.output} < {o.name for o in model.graph.output}
    x = RNG.uniform(-100, 100, (2, 3, 20, 24)).astype(np.float32)
    _check(plain, exported, x, 3)


def test_declared_output_shapes(tmp_path):
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(_convert(tmp_path, GAP_NET), exported, 2, class_input=True)
    model = onnx.load(exported)

    def dims(values, name):
        (value,) = [v for v in values if v.name == name]
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]

    assert dims(model.graph.output, "cam_top_classes") == ["batch", 2]
    assert dims(model.graph.output, "cam_maps") == ["batch", 2, 9, 11]
    assert dims(model.graph.output, "cam_maps_resized") == ["batch", 2, 20, 24]
    assert dims(model.graph.input, "cam_class") == ["cam_class_n", "cam_class_m"]
    assert dims(model.graph.output, "cam_class_maps") == ["batch", "cam_class_m", 9, 11]
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types["cam_top_classes"] == types["cam_class"] == onnx.TensorProto.INT64


@pytest.mark.parametrize("text", [GAP_NET, CLASS_CONV_NET], ids=["gap_linear", "class_conv"])
def test_class_input_maps_the_classes_asked_for_and_defaults_to_class_0(tmp_path, text):
    plain = _convert(tmp_path, text)
    exported = tmp_path / "cam.onnx"
    record = cam_export.export_cam_file(plain, exported, 1, class_input=True)
    session = ModelSession(plain, "cpu")
    head = head_from_metadata(session)
    x = RNG.uniform(-100, 100, (2, 3, 20, 24)).astype(np.float32)
    feature = session.run({"data": x}, [head.feature_blob])[head.feature_blob]
    asked = np.array([[4, 0, 2], [1, 1, 3]], np.int64)
    names = [record.class_probabilities, record.class_maps, record.class_maps_resized, record.probabilities]
    got = _run(exported, {"data": x, "cam_class": asked}, names)
    maps = compute_cams(feature, head.weights, asked)
    np.testing.assert_allclose(got[record.class_maps], maps, rtol=1e-5, atol=1e-5 * np.abs(maps).max())
    np.testing.assert_allclose(got[record.class_maps_resized], normalize(upsample(maps, (20, 24))), atol=1e-5)
    np.testing.assert_array_equal(
        got[record.class_probabilities], np.take_along_axis(got[record.probabilities], asked, axis=1)
    )
    one_row = _run(exported, {"data": x, "cam_class": asked[:1]}, [record.class_maps])[record.class_maps]
    np.testing.assert_allclose(
        one_row, compute_cams(feature, head.weights, np.repeat(asked[:1], 2, 0)), atol=1e-4
    )
    default = _run(exported, {"data": x}, [record.class_maps])[record.class_maps]
    np.testing.assert_allclose(
        default, compute_cams(feature, head.weights, np.zeros((2, 1), np.int64)), atol=1e-4
    )


def test_equal_probabilities_rank_the_lower_class_first(tmp_path):
    """Identical classifier rows give equal probabilities: TopK must order them as the pipeline's stable sort."""
    plain = _convert(tmp_path, GAP_NET)
    model = onnx.load(plain)
    for init in model.graph.initializer:
        if init.name == "fc_W":
            w = onnx.numpy_helper.to_array(init).copy()
            w[[1, 3, 4]] = w[5]
            init.CopyFrom(onnx.numpy_helper.from_array(w, "fc_W"))
        if init.name == "fc_B":
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(6, np.float32), "fc_B"))
    onnx.save(model, plain)
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(plain, exported, 6)
    x = RNG.uniform(-100, 100, (2, 3, 20, 24)).astype(np.float32)
    got = _check(plain, exported, x, 6)
    ranks = got["cam_top_classes"][0].tolist()
    tied = [c for c in ranks if c in (1, 3, 4, 5)]
    assert tied == [1, 3, 4, 5]


def test_no_resize_and_a_foreign_model_without_metadata(tmp_path):
    plain = _convert(tmp_path, GAP_NET)
    model = onnx.load(plain)
    del model.metadata_props[:]  # a foreign file: the head comes from the graph
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, foreign)
    exported = tmp_path / "cam.onnx"
    record = cam_export.export_cam_file(foreign, exported, 2, resize=False)
    assert record.maps_resized is None
    assert "cam_maps_resized" not in {o.name for o in onnx.load(exported).graph.output}
    head = find_cam_head(model)
    x = RNG.uniform(-100, 100, (1, 3, 20, 24)).astype(np.float32)
    values = _run(plain, {"data": x}, [head.feature_blob, "prob"])
    got = _run(exported, {"data": x}, ["cam_top_classes", "cam_maps"])
    classes, _ = top_k(values["prob"], 2)
    np.testing.assert_array_equal(got["cam_top_classes"], classes)
    np.testing.assert_allclose(
        got["cam_maps"], compute_cams(values[head.feature_blob], head.weights, classes), rtol=1e-5, atol=1e-5
    )


def test_a_model_with_external_data_keeps_its_weights_in_a_data_file(tmp_path):
    (tmp_path / "d.prototxt").write_text(GAP_NET)
    write_random_caffemodel(tmp_path / "d.prototxt", tmp_path / "w.caffemodel", seed=3)
    plain = tmp_path / "m.onnx"
    convert_files(tmp_path / "d.prototxt", tmp_path / "w.caffemodel", plain, external_data=True)
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(plain, exported, 2)
    assert (tmp_path / "cam.onnx.data").stat().st_size > 0
    assert any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.load(exported, load_external_data=False).graph.initializer
    )
    _check(plain, exported, RNG.uniform(-100, 100, (2, 3, 20, 24)).astype(np.float32), 2)
    cam_export.export_cam_file(plain, plain, 2)  # in place, as convert --with-cam does
    _check(exported, plain, RNG.uniform(-100, 100, (1, 3, 20, 24)).astype(np.float32), 2)


def test_refusals_are_typed_one_line_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    no_head = _convert(tmp_path / "a", NO_HEAD_NET)
    with pytest.raises(CamHeadError, match="cannot add CAM outputs: no CAM head found") as info:
        cam_export.export_cam_file(no_head, tmp_path / "x.onnx", 1)
    assert "\n" not in str(info.value)
    plain = _convert(tmp_path / "b", GAP_NET)
    with pytest.raises(CamcaffeError, match="--top-k 7 must lie between 1 and the classifier's 6 classes"):
        cam_export.export_cam_file(plain, tmp_path / "x.onnx", 7)
    with pytest.raises(InputFileError, match="not found"):
        cam_export.export_cam_file(tmp_path / "missing.onnx", tmp_path / "x.onnx", 1)
    with pytest.raises(InputFileError, match="output folder does not exist"):
        cam_export.export_cam_file(plain, tmp_path / "nowhere" / "x.onnx", 1)
    cam_export.export_cam_file(plain, tmp_path / "x.onnx", 1)
    with pytest.raises(CamcaffeError, match="already has CAM outputs"):
        cam_export.export_cam_file(tmp_path / "x.onnx", tmp_path / "y.onnx", 1)
    assert not (tmp_path / "y.onnx").exists()


def test_record_of_ignores_records_that_do_not_match_the_graph():
    names = [
        "cam_top_classes",
        "cam_top_probabilities",
        "cam_maps",
        "cam_maps_resized",
        None,
        None,
        None,
        None,
    ]
    record = cam_export.CamOutputs(3, "gap_linear", 10, "f", "prob", None, *names)
    meta = {cam_export.METADATA_KEY: record.to_json()}
    outputs = {"cam_top_classes", "cam_top_probabilities", "cam_maps", "cam_maps_resized"}
    assert cam_export.record_of(meta, outputs, {"data"}) == record
    assert cam_export.record_of(meta, outputs - {"cam_maps"}, {"data"}) is None
    assert cam_export.record_of({cam_export.METADATA_KEY: "{not json"}, outputs, {"data"}) is None
    assert cam_export.record_of({}, outputs, {"data"}) is None


GOLDEN = ["googlenet_cam", "googlenet_cam14", "squeezenet_v1.1"]


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_nets_in_graph_maps_within_1e5(tmp_path, name):
    folder = shared_path("golden", name)
    plain = tmp_path / "m.onnx"
    convert_files(folder / "deploy.prototxt", folder / "weights.caffemodel", plain)
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(plain, exported, 5, class_input=True)
    _check(plain, exported, np.load(folder / "input.npy"), 5)


def test_real_squeezenet_v1_0_in_graph_maps_within_1e5(tmp_path):
    folder = shared_path("data", "models", "squeezenet_v1.0")
    plain = tmp_path / "m.onnx"
    convert_files(folder / "deploy.prototxt", folder / "weights.caffemodel", plain)
    exported = tmp_path / "cam.onnx"
    record = cam_export.export_cam_file(plain, exported, 5)
    assert record.kind == "class_conv" and record.logits is not None  # no Softmax: the graph adds one
    x = np.random.default_rng(123).uniform(-128, 128, (3, 3, 227, 227)).astype(np.float32)
    _check(plain, exported, x, 5)


# --- the model's own opset -----------------------------------------------------------------------------------

OPSETS = list(range(cam_export.MIN_OPSET, cam_export.MAX_OPSET + 1))


@pytest.fixture(scope="module")
def plain_models(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    models = {}
    for kind, text in (("gap_linear", GAP_NET), ("class_conv", CLASS_CONV_NET)):
        models[kind] = onnx.load(_convert(tmp_path_factory.mktemp(kind), text))
    return models


def _at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model importing the default domain at `opset` (its Conv/Relu/GAP/Gemm/Softmax read the same there)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for entry in copy.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    if opset <= onnx.defs.onnx_opset_version():
        copy.ir_version = max(copy.ir_version, onnx.helper.find_min_ir_version_for(list(copy.opset_import)))
    return copy


def _ort_loads(model: onnx.ModelProto) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - an opset newer than this onnxruntime: the checker alone then
        assert "opset" in str(exc).lower() or "ir version" in str(exc).lower(), exc
        return False
    return True


@pytest.mark.parametrize("kind", ["gap_linear", "class_conv"])
@pytest.mark.parametrize("opset", OPSETS)
def test_every_op_takes_the_form_of_the_models_opset(tmp_path, plain_models, kind, opset):
    """ReduceMin/Max with axes as an input from opset 18 (an attribute is an invalid graph there), Unsqueeze's
    axes an input from 13, Resize's roi and scales given before 13: the full checker accepts the model at every
    opset export-cam writes for, and onnxruntime (where it knows the opset) gives the pipeline's maps."""
    plain = tmp_path / "m.onnx"
    onnx.save(_at_opset(plain_models[kind], opset), plain)
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(plain, exported, 2, class_input=True)
    model = onnx.load(exported)
    assert cam_export.default_opset(model) == opset
    onnx.checker.check_model(model, full_check=True)
    ours = [n for n in model.graph.node if n.name.startswith("cam/")]
    for node in ours:
        attributes = {a.name for a in node.attribute}
        if node.op_type in ("ReduceMin", "ReduceMax", "ReduceMean"):
            assert ("axes" in attributes) == (opset < 18) and (len(node.input) == 2) == (opset >= 18)
        if node.op_type == "Unsqueeze":
            assert ("axes" in attributes) == (opset < 13)
        if node.op_type == "Resize":
            assert all(node.input[1:3]) == (opset < 13)
    if _ort_loads(model):
        x = RNG.uniform(-100, 100, (2, 3, 20, 24)).astype(np.float32)
        _check(plain, exported, x, 2)
    else:
        assert opset > 21  # onnxruntime 1.31 runs up to opset 26


@pytest.mark.parametrize("opset", [cam_export.MIN_OPSET - 1, cam_export.MAX_OPSET + 1])
def test_an_opset_export_cam_cannot_write_for_is_refused_in_one_line(tmp_path, plain_models, opset):
    plain = tmp_path / "m.onnx"
    onnx.save(_at_opset(plain_models["gap_linear"], opset), plain)
    with pytest.raises(
        CamcaffeError, match=f"default-domain opset {opset}; in-graph CAM outputs are written"
    ) as info:
        cam_export.export_cam_file(plain, tmp_path / "cam.onnx", 2)
    assert "\n" not in str(info.value) and "version_converter" in str(info.value)
    assert not (tmp_path / "cam.onnx").exists()


# --- channels-last heads (Keras, tf2onnx) and other float types -------------------------------------------

CHANNELS = 6  # = the feature map's height: a channels-last map read as N, C, h, w would still multiply


def channels_last_model(
    path: Path, opset: int, softmax: bool = True, size: tuple = (6, 6), half: bool = False
) -> Path:
    """A Keras-style classifier: NHWC input -> Transpose -> 3x3 Conv -> Relu -> Transpose back to NHWC -> Cast
    -> ReduceMean over axes 1, 2 -> Cast -> MatMul -> Cast -> Add -> [Softmax] (Keras 3 on the torch backend
    wraps ops in float casts; `half`: the feature map is float16, cast back before the classifier)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    weights = {
        "W": rng.normal(0, 0.4, (CHANNELS, 3, 3, 3)).astype(np.float32),
        "kernel": rng.normal(0, 1.0, (CHANNELS, 4)).astype(np.float32),
        "bias": rng.normal(0, 0.1, 4).astype(np.float32),
    }
    feature_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    if opset >= 18:
        weights["axes"] = np.array([1, 2], np.int64)
        mean = helper.make_node("ReduceMean", ["feat", "axes"], ["gap"], keepdims=0)
    else:
        mean = helper.make_node("ReduceMean", ["feat"], ["gap"], axes=[1, 2], keepdims=0)
    nodes = [
        helper.make_node("Transpose", ["data"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "W"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Cast", ["nhwc"], ["feat"], to=feature_type),
        mean,
        helper.make_node("Cast", ["gap"], ["gap32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["gap32", "kernel"], ["product"]),
        helper.make_node("Cast", ["product"], ["product32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["product32", "bias"], ["logits"]),
    ]
    outputs = ["logits"]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=-1))
        outputs = ["prob"]
    graph = helper.make_graph(
        nodes,
        "channels_last",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", *size, 3])],
        [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    onnx.save(model, path)
    return path


def _check_channels_last(
    plain: Path, exported: Path, x: np.ndarray, k: int, probability_rtol: float = 1e-6
) -> dict[str, np.ndarray]:
    """The exported outputs of a channels-last model against explain.cam on its feature map read as N, C, h, w
    (the pipeline's from_layout), on an NHWC input x."""
    model = onnx.load(plain)
    head = find_cam_head(model)
    assert head.layout == "nhwc"
    scores = head.prob_output or head.logits
    reference = _run_with(plain, {"data": x}, [head.feature_blob, scores])
    features = reference[head.feature_blob].astype(np.float32).transpose(0, 3, 1, 2)
    probabilities = reference[scores] if head.prob_output else softmax(reference[scores], axis=1)
    names = ["cam_top_classes", "cam_top_probabilities", "cam_maps", "cam_maps_resized"]
    got = _run(exported, {"data": x}, names)
    classes, values = top_k(probabilities, k)
    np.testing.assert_array_equal(got["cam_top_classes"], classes)
    np.testing.assert_allclose(got["cam_top_probabilities"], values, rtol=probability_rtol)
    maps = compute_cams(features, head.weights, classes)
    assert got["cam_maps"].shape == maps.shape == (len(x), k, *x.shape[1:3])
    assert np.abs(got["cam_maps"] - maps).max() <= 1e-5 * np.abs(maps).max()
    assert got["cam_maps_resized"].shape == (len(x), k, *x.shape[1:3])  # H, W of an NHWC input: dims 1, 2
    np.testing.assert_allclose(got["cam_maps_resized"], normalize(upsample(maps, x.shape[1:3])), atol=1e-5)
    return got


def _run_with(path: Path, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Run with inner tensors added as outputs."""
    model = onnx.load(path)
    declared = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in declared)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize("softmax_in_model", [True, False], ids=["softmax", "logits"])
@pytest.mark.parametrize("opset", [13, 17, 18, 20])
def test_channels_last_head_maps_equal_the_pipelines(tmp_path, opset, softmax_in_model):
    """Before: the NHWC feature map was reshaped as if N, C, h, w; with h == C the graph ran and its maps were
    wrong (max difference 6.8 on maps of magnitude 8.5), and cam_maps_resized took the input's W, C as H, W."""
    plain = channels_last_model(tmp_path / "m.onnx", opset, softmax=softmax_in_model)
    exported = tmp_path / "cam.onnx"
    record = cam_export.export_cam_file(plain, exported, 3, class_input=True)
    assert record.feature_layout == record.input_layout == "nhwc"
    onnx.checker.check_model(onnx.load(exported), full_check=True)
    x = RNG.uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32)
    _check_channels_last(plain, exported, x, 3)
    asked = np.array([[3, 0], [1, 1]], np.int64)
    got = _run(exported, {"data": x, "cam_class": asked}, ["cam_class_maps", "cam_class_maps_resized"])
    head = find_cam_head(onnx.load(plain))
    features = _run_with(plain, {"data": x}, [head.feature_blob])[head.feature_blob].transpose(0, 3, 1, 2)
    maps = compute_cams(features, head.weights, asked)
    np.testing.assert_allclose(got["cam_class_maps"], maps, rtol=1e-5, atol=1e-5 * np.abs(maps).max())
    assert got["cam_class_maps_resized"].shape == (2, 2, 6, 6)


def test_channels_last_declared_shapes_and_the_run_time_input_size(tmp_path):
    """A variable H, W: the maps and resized maps follow each input's own size (dims 1, 2 of the NHWC input)."""
    plain = channels_last_model(tmp_path / "m.onnx", 20, size=("height", "width"))
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(plain, exported, 2)
    model = onnx.load(exported)
    declared = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in model.graph.output
    }
    assert declared["cam_maps"][1] == 2 and declared["cam_maps_resized"] == ["batch", 2, "height", "width"]
    for size in ((6, 6), (9, 13), (16, 5)):
        _check_channels_last(plain, exported, RNG.uniform(-1, 1, (1, *size, 3)).astype(np.float32), 2)


def test_a_float16_feature_map_is_cast_to_float32_as_the_pipeline_reads_it(tmp_path):
    """(onnxruntime runs float16 nodes on the CPU in float32 between casts it places by the graph's shape: one
    more reader of the float16 map moves the model's own probabilities by ~1e-5, hence their tolerance.)"""
    plain = channels_last_model(tmp_path / "m.onnx", 17, half=True)
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(plain, exported, 2)
    onnx.checker.check_model(onnx.load(exported), full_check=True)
    assert any(n.op_type == "Cast" and n.name.startswith("cam/") for n in onnx.load(exported).graph.node)
    x = RNG.uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32)
    _check_channels_last(plain, exported, x, 2, probability_rtol=1e-4)


def test_a_class_conv_head_on_a_channels_last_map_gathers_its_class_channels(tmp_path):
    """(Head detection finds class-conv heads channels-first; a head named so channels-last is mapped too.)"""
    plain = channels_last_model(tmp_path / "m.onnx", 18)
    model = onnx.load(plain)
    head = cam_export.CamHead(
        "feat",
        np.eye(CHANNELS, dtype=np.float32),
        None,
        "class_conv",
        "conv",
        CHANNELS,
        None,
        logits="gap",
        layout="nhwc",
    )
    exported = tmp_path / "cam.onnx"
    onnx.save(cam_export.add_cam_outputs(model, head, 2, class_input=True), exported)
    onnx.checker.check_model(onnx.load(exported), full_check=True)
    x = RNG.uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32)
    asked = np.array([[5, 1, 2]], np.int64)
    got = _run(exported, {"data": x, "cam_class": asked}, ["cam_top_classes", "cam_maps", "cam_class_maps"])
    features = _run_with(plain, {"data": x}, ["feat"])["feat"].transpose(0, 3, 1, 2)
    classes, _ = top_k(softmax(features.mean(axis=(2, 3)), axis=1), 2)
    np.testing.assert_array_equal(got["cam_top_classes"], classes)
    np.testing.assert_array_equal(got["cam_maps"], np.take_along_axis(features, classes[:, :, None, None], 1))
    np.testing.assert_array_equal(got["cam_class_maps"], features[:, [5, 1, 2]])


def test_head_detection_on_an_exported_model_leaves_export_cams_own_nodes_out(tmp_path):
    """A model without a Softmax gets cam_probabilities, a Softmax of its class scores; found as the model's own
    probabilities, `camcaffe cam` on the exported torch ResNet ranked with that float32 softmax instead of the
    plain model's float64 one (results.csv probabilities off in the last bit: 0.42502257 for 0.42502254)."""
    plain = channels_last_model(tmp_path / "m.onnx", 18, softmax=False)
    exported = tmp_path / "cam.onnx"
    cam_export.export_cam_file(plain, exported, 2)
    before, after = find_cam_head(onnx.load(plain)), find_cam_head(onnx.load(exported))
    assert after.prob_output is None and after.logits == before.logits == "logits"
    assert (after.feature_blob, after.fc_node, after.layout) == (before.feature_blob, before.fc_node, "nhwc")
