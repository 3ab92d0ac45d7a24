"""Models whose input is not the usual fixed-size, variable-batch N,C,H,W: a variable height/width must
not be fed at 1x1 (it was, with exit 0), and a fixed batch of 1 must take any --batch-size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.cli.test_cli import assert_one_line_error, camcaffe


def _cam_model(path: Path, input_dims: list) -> Path:
    """conv 3->4 + ReLU, global average pool, Gemm 4->3, Softmax; input dims as given (str = symbolic)."""
    rng = np.random.default_rng(3)
    inits = {
        "W": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "B": rng.normal(0, 0.1, 4).astype(np.float32),
        "fcW": rng.normal(0, 1.0, (3, 4)).astype(np.float32),
        "fcB": rng.normal(0, 0.1, 3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["data", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fcW", "fcB"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(5):
        cv2.imwrite(str(folder / f"p{index}.png"), rng.integers(0, 255, (30 + index, 40, 3), dtype=np.uint8))
    return folder


def test_variable_height_width_is_refused_without_input_size(tmp_path, photos):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out")
    assert_one_line_error(result, "variable height/width", "--input-size")
    assert not (tmp_path / "out" / "results.csv").exists()


def test_variable_height_width_runs_at_the_given_input_size(tmp_path, photos):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, "H", "W"])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", "--input-size", "24,20", "-q")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 5 and table["probability"].between(0, 1).all()
    # the same images at a fixed 24x20 model give the same probabilities
    fixed = _cam_model(tmp_path / "f.onnx", ["N", 3, 24, 20])
    again = camcaffe("cam", fixed, photos, "--out", tmp_path / "out2", "-q")
    assert again.returncode == 0, again.stderr
    reference = pd.read_csv(tmp_path / "out2" / "results.csv")
    np.testing.assert_allclose(table["probability"], reference["probability"], rtol=1e-5)


def test_input_size_that_contradicts_a_fixed_input_is_refused(tmp_path, photos):
    model = _cam_model(tmp_path / "m.onnx", ["N", 3, 24, 20])
    result = camcaffe("cam", model, photos, "--out", tmp_path / "out", "--input-size", "32,32")
    assert_one_line_error(result, "fixed at 24x20", "--input-size")


def test_fixed_batch_of_one_takes_any_batch_size(tmp_path, photos):
    one = _cam_model(tmp_path / "one.onnx", [1, 3, 24, 20])
    free = _cam_model(tmp_path / "free.onnx", ["N", 3, 24, 20])
    for model, out in ((one, "a"), (free, "b")):
        result = camcaffe("cam", model, photos, "--out", tmp_path / out, "--batch-size", "8", "-q")
        assert result.returncode == 0, result.stderr
    a, b = (pd.read_csv(tmp_path / name / "results.csv") for name in "ab")
    assert len(a) == 5
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-5)
    assert (a[["x0", "y0", "x1", "y1"]].to_numpy() == b[["x0", "y0", "x1", "y1"]].to_numpy()).all()


def test_fixed_batch_of_three_pads_the_last_run(tmp_path, photos):
    three = _cam_model(tmp_path / "three.onnx", [3, 3, 24, 20])
    free = _cam_model(tmp_path / "free.onnx", ["N", 3, 24, 20])
    for model, out in ((three, "a"), (free, "b")):
        result = camcaffe("cam", model, photos, "--out", tmp_path / out, "--batch-size", "4", "-q")
        assert result.returncode == 0, result.stderr
    a, b = (pd.read_csv(tmp_path / name / "results.csv") for name in "ab")
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-5)


SEGMENTATION = """name: "seg"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score" convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }
"""


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_a_net_without_a_classification_head_is_named_as_such(tmp_path, photos, method):
    (tmp_path / "seg.prototxt").write_text(SEGMENTATION)
    converted = camcaffe("convert", tmp_path / "seg.prototxt", "-o", tmp_path / "seg.onnx", "--random-weights", "1")
    assert converted.returncode == 0, converted.stderr
    result = camcaffe("cam", tmp_path / "seg.onnx", photos, "--out", tmp_path / "out", "--method", method)
    assert_one_line_error(result, "not an image classifier", "prob ?x5x16x16", "segmentation or detection")
    assert not (tmp_path / "out" / "results.csv").exists()
