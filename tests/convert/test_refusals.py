"""One refusal lists every problem of a net (unknown fields, unsupported types, wiring, parameter
values); nets without parameters convert without a caffemodel, nets with them name what needs weights."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest

from camcaffe.caffe.net import load_net
from camcaffe.convert.api import convert_files
from camcaffe.convert.registry import is_supported
from camcaffe.errors import CaffeFormatError, NetRefusedError, UnsupportedLayerError, WeightsError
from tests.helpers import net_text

MANY_PROBLEMS = net_text(
    (1, 3, 8, 8),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 padd: 1 } }
layer { name: "odd" type: "NoSuchLayer" bottom: "conv" top: "odd" }
layer { name: "fc" type: "InnerProduct" bottom: "gapp" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "zero" type: "Convolution" bottom: "data" top: "zero" convolution_param { num_output: 0 kernel_size: 1 } }
layer { name: "clash" type: "ReLU" bottom: "data" top: "zero" }
""",
)
EXPECTED = [
    "unknown field 'padd'",
    "layer 'odd' (NoSuchLayer)",
    "layer 'fc' (InnerProduct) reads blob 'gapp' that no earlier layer produces",
    "layer 'zero' (Convolution: convolution_param.num_output must be set and positive)",
    "layer 'clash' (ReLU) writes blob 'zero', which an earlier layer already produced",
]


def test_one_error_lists_every_kind_of_problem(tmp_path):
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(MANY_PROBLEMS)
    with pytest.raises(NetRefusedError) as caught:
        convert_files(prototxt, None, tmp_path / "m.onnx", random_seed=0)
    message = str(caught.value)
    for needle in EXPECTED:
        assert needle in message, message
    assert "5 problem(s)" in message
    assert isinstance(caught.value, CaffeFormatError) and isinstance(caught.value, UnsupportedLayerError)
    assert ("odd", "NoSuchLayer") in caught.value.layers


def test_loading_alone_lists_fields_wiring_and_types(tmp_path):
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(MANY_PROBLEMS)
    with pytest.raises(NetRefusedError) as caught:
        load_net(prototxt, is_supported)
    for needle in (EXPECTED[0], "unsupported type NoSuchLayer", EXPECTED[2], EXPECTED[4]):
        assert needle in str(caught.value)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camcaffe.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_cli_refusal_is_one_line_with_everything(tmp_path):
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(MANY_PROBLEMS)
    result = _cli("convert", prototxt, "-o", tmp_path / "m.onnx", "--random-weights", "0")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camcaffe: error: ")
    for needle in EXPECTED:
        assert needle in lines[0]
    assert not (tmp_path / "m.onnx").exists()


PARAMETER_FREE = net_text(
    (1, 3, 8, 8),
    """
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
""",
)
WITH_PARAMETERS = net_text(
    (1, 3, 8, 8),
    """
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
""",
)


def test_parameter_free_net_converts_without_weights(tmp_path):
    prototxt = tmp_path / "d.prototxt"
    prototxt.write_text(PARAMETER_FREE)
    result = _cli("convert", prototxt, "-o", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert meta["camcaffe.source.caffemodel"] == "(none: no parameters)"


def test_net_with_parameters_needs_weights_or_random_weights(tmp_path):
    prototxt = tmp_path / "d.prototxt"
    prototxt.write_text(WITH_PARAMETERS)
    result = _cli("convert", prototxt, "-o", tmp_path / "m.onnx")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "2 layer(s) need weights: 'conv' (Convolution), 'scale' (Scale)" in result.stderr
    assert "--random-weights" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(WeightsError, match="'conv' \\(Convolution\\), 'scale' \\(Scale\\)"):
        convert_files(prototxt, None, tmp_path / "m.onnx")
    result = _cli("convert", prototxt, "-o", tmp_path / "m.onnx", "--random-weights", "3")
    assert result.returncode == 0, result.stderr
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert meta["camcaffe.source.caffemodel"] == "(random weights)"
