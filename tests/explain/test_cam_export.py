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
    assert meta["version"] == 1 and meta["maps"] == "cam_maps" and meta["class_input"] is None
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
