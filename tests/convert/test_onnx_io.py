"""Properties of the written ONNX file: opset/IR, checker, symbolic batch, metadata, external data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from camcaffe.convert.api import Preprocessing, convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.convert.onnx_io import IR_VERSION, OPSET
from camcaffe.convert.random_model import write_random_caffemodel
from camcaffe.errors import UnsupportedLayerError
from tests.helpers import net_text, run_onnx

CAM_NET = net_text(
    (10, 3, 16, 16),
    """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "CAM_conv" type: "Convolution" bottom: "conv1" top: "CAM_conv" convolution_param { num_output: 12 kernel_size: 3 pad: 1 } }
layer { name: "CAM_relu" type: "ReLU" bottom: "CAM_conv" top: "CAM_conv" }
layer { name: "CAM_pool" type: "Pooling" bottom: "CAM_conv" top: "CAM_pool" pooling_param { pool: AVE kernel_size: 16 stride: 16 } }
layer { name: "CAM_fc_5" type: "InnerProduct" bottom: "CAM_pool" top: "CAM_fc_5" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "CAM_fc_5" top: "prob" }
""",
    name="tiny_cam",
)


@pytest.fixture
def tiny(tmp_path):
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(CAM_NET)
    caffemodel = tmp_path / "tiny.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=5)
    return prototxt, caffemodel


def test_opset_ir_checker_and_onnxruntime(tiny, tmp_path):
    prototxt, caffemodel = tiny
    out = tmp_path / "m.onnx"
    convert_files(prototxt, caffemodel, out)
    model = onnx.load(str(out))
    assert model.ir_version == IR_VERSION and model.opset_import[0].version == OPSET
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    values = run_onnx(out, {"data": x})
    assert values["prob"].shape == (3, 5)
    assert values["CAM_conv"].shape == (3, 12, 16, 16)  # the CAM feature blob is a graph output
    assert values["CAM_conv"].min() >= 0


def test_symbolic_batch_and_fixed_batch(tiny, tmp_path):
    prototxt, caffemodel = tiny
    convert_files(prototxt, caffemodel, tmp_path / "sym.onnx")
    convert_files(prototxt, caffemodel, tmp_path / "fixed.onnx", ConvertOptions(batch=4))
    dims = onnx.load(str(tmp_path / "sym.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    dims = onnx.load(str(tmp_path / "fixed.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 4
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    a = run_onnx(tmp_path / "sym.onnx", {"data": x})["prob"]
    b = run_onnx(tmp_path / "fixed.onnx", {"data": x})["prob"]
    single = run_onnx(tmp_path / "sym.onnx", {"data": x[1:2]})["prob"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a[1:2], single, rtol=1e-5, atol=1e-6)


def test_metadata(tiny, tmp_path):
    prototxt, caffemodel = tiny
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"{i} class_{i}" for i in range(5)) + "\n")
    out = tmp_path / "m.onnx"
    convert_files(
        prototxt,
        caffemodel,
        out,
        preprocessing=Preprocessing(mean=[104, 117, 123], raw_scale=255, channel_swap=[2, 1, 0]),
        labels_path=labels,
    )
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    import hashlib

    assert meta["camcaffe.source.caffemodel.sha256"] == hashlib.sha256(caffemodel.read_bytes()).hexdigest()
    assert meta["camcaffe.source.prototxt.sha256"] == hashlib.sha256(prototxt.read_bytes()).hexdigest()
    assert json.loads(meta["camcaffe.preprocess"]) == {
        "mean": [104, 117, 123],
        "raw_scale": 255,
        "channel_swap": [2, 1, 0],
    }
    assert json.loads(meta["camcaffe.labels"])[4] == "class_4"
    head = json.loads(meta["camcaffe.cam_head"])
    assert (head["feature_blob"], head["fc_layer"], head["num_classes"]) == ("CAM_conv", "CAM_fc_5", 5)
    layers = json.loads(meta["camcaffe.layers"])
    assert layers["CAM_fc_5"]["params"] == ["CAM_fc_5_W", "CAM_fc_5_B"]
    assert layers["CAM_fc_5"]["param_shapes"] == [[5, 12], [5]]
    assert "camcaffe.version" in meta


def test_external_data_round_trip(tiny, tmp_path):
    prototxt, caffemodel = tiny
    inline, external = tmp_path / "inline.onnx", tmp_path / "ext" / "m.onnx"
    external.parent.mkdir()
    convert_files(prototxt, caffemodel, inline)
    result = convert_files(prototxt, caffemodel, external, external_data=True)
    assert [p.name for p in result.paths] == ["m.onnx", "m.onnx.data"]
    weights_bytes = (external.parent / "m.onnx.data").stat().st_size
    assert weights_bytes > 4000 and external.stat().st_size < inline.stat().st_size - 4000
    onnx.checker.check_model(str(external), full_check=True)
    x = np.ones((1, 3, 16, 16), np.float32)
    np.testing.assert_array_equal(
        run_onnx(inline, {"data": x})["prob"], run_onnx(external, {"data": x})["prob"]
    )


def test_all_unsupported_layers_are_listed_at_once(tmp_path):
    prototxt = tmp_path / "d.prototxt"
    prototxt.write_text(
        net_text(
            (1, 3, 8, 8),
            """
layer { name: "norm" type: "FancyNorm" bottom: "data" top: "norm" }
layer { name: "perm" type: "FancyPermute" bottom: "norm" top: "perm" }
layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }
layer { name: "py" type: "Python" bottom: "r" top: "py" }
""",
        )
    )
    with pytest.raises(UnsupportedLayerError) as info:
        convert_files(prototxt, None, tmp_path / "m.onnx", random_seed=0)
    assert info.value.layers == [("norm", "FancyNorm"), ("perm", "FancyPermute"), ("py", "Python")]
    assert "unsupported type(s): FancyNorm, FancyPermute" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_weights_go_external_automatically_above_the_threshold(tiny, tmp_path, monkeypatch):
    prototxt, caffemodel = tiny
    monkeypatch.setenv("CAMCAFFE_EXTERNAL_DATA_THRESHOLD", "1000")
    result = convert_files(prototxt, caffemodel, tmp_path / "big.onnx")
    assert [p.name for p in result.paths] == ["big.onnx", "big.onnx.data"]
    x = np.ones((2, 3, 16, 16), np.float32)
    assert run_onnx(tmp_path / "big.onnx", {"data": x})["prob"].shape == (2, 5)
