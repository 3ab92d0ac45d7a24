"""LRN, BatchNorm, Scale, Bias, Softmax."""

from __future__ import annotations

import numpy as np
import pytest

from camcaffe.caffe.caffemodel import write_caffemodel
from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from tests.helpers import assert_close, blobs_of, convert_text, net_text

X = np.random.default_rng(2).uniform(-2, 2, (2, 6, 5, 4)).astype(np.float32)


def _run(tmp_path, layers: str, x=X):
    result, weights, path = convert_text(tmp_path, net_text(x.shape, layers))
    return blobs_of(result, path, {"data": x}), weights


def test_lrn_across_channels_with_k(tmp_path):
    blobs, _ = _run(
        tmp_path,
        'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
        "lrn_param { local_size: 3 alpha: 0.3 beta: 0.6 k: 2 } }",
    )
    sq = np.pad(X.astype(np.float64) ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    window = sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:]
    assert_close(blobs["n"], X * (2 + 0.3 / 3 * window) ** -0.6, "lrn across")


def test_lrn_within_channel_ignores_k(tmp_path):
    blobs, _ = _run(
        tmp_path,
        'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
        "lrn_param { local_size: 3 alpha: 0.3 beta: 0.6 k: 5 norm_region: WITHIN_CHANNEL } }",
    )
    sq = np.pad(X.astype(np.float64) ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    total = sum(sq[:, :, i : i + 5, j : j + 4] for i in range(3) for j in range(3))
    assert_close(blobs["n"], X * (1 + 0.3 * total / 9) ** -0.6, "lrn within")


def _write(tmp_path, text, layers):
    (tmp_path / "d.prototxt").write_text(text)
    write_caffemodel(tmp_path / "w.caffemodel", layers)
    return convert_files(
        tmp_path / "d.prototxt",
        tmp_path / "w.caffemodel",
        tmp_path / "m.onnx",
        ConvertOptions(expose_all=True),
    )


@pytest.mark.parametrize("factor", [999.98, 0.0, 1.0])
def test_batchnorm_scale_factor_and_eps(tmp_path, factor):
    text = net_text(
        X.shape,
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { eps: 0.001 } }',
    )
    mean = np.linspace(-1, 1, 6).astype(np.float32) * 1000
    var = np.linspace(0.5, 2, 6).astype(np.float32) * 1000
    result = _write(tmp_path, text, [("bn", "BatchNorm", [mean, var, np.array([factor], np.float32)])])
    scale = 0.0 if factor == 0 else 1 / factor
    got = blobs_of(result, tmp_path / "m.onnx", {"data": X})["data"]
    expected = (X - (mean * scale).reshape(1, -1, 1, 1)) / np.sqrt((var * scale).reshape(1, -1, 1, 1) + 0.001)
    assert_close(got, expected, "bn")


def test_batchnorm_with_batch_statistics(tmp_path):
    text = net_text(
        X.shape,
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "y" '
        "batch_norm_param { use_global_stats: false } }",
    )
    zeros = np.zeros(6, np.float32)
    result = _write(tmp_path, text, [("bn", "BatchNorm", [zeros, zeros, np.ones(1, np.float32)])])
    got = blobs_of(result, tmp_path / "m.onnx", {"data": X})["y"]
    mean = X.mean(axis=(0, 2, 3), keepdims=True)
    var = ((X - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    assert_close(got, (X - mean) / np.sqrt(var + 1e-5), "bn batch stats")


@pytest.mark.parametrize(
    "params,shape_of_gamma",
    [
        ("", (6,)),
        ("scale_param { bias_term: true }", (6,)),
        ("scale_param { axis: 2 num_axes: 2 }", (5, 4)),
        ("scale_param { axis: 0 num_axes: -1 bias_term: true }", (2, 6, 5, 4)),
        ("scale_param { num_axes: 0 }", ()),
    ],
)
def test_scale_axes(tmp_path, params, shape_of_gamma):
    blobs, weights = _run(tmp_path, f'layer {{ name: "s" type: "Scale" bottom: "data" top: "s" {params} }}')
    arrays = weights.record["s"][1]
    assert arrays[0].shape == shape_of_gamma
    axis = 2 if "axis: 2" in params else 0 if "axis: 0" in params else 1
    gamma = arrays[0].reshape(shape_of_gamma + (1,) * (4 - axis - len(shape_of_gamma)))
    expected = X * gamma + (arrays[1].reshape(gamma.shape) if len(arrays) > 1 else 0)
    assert_close(blobs["s"], expected, params)


def test_scale_and_bias_from_a_second_bottom(tmp_path):
    layers = (
        'layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: AVE global_pooling: true } }\n'
        'layer { name: "f" type: "Flatten" bottom: "g" top: "f" }\n'
        'layer { name: "s" type: "Scale" bottom: "data" bottom: "f" top: "s" scale_param { axis: 0 } }\n'
        'layer { name: "b" type: "Bias" bottom: "s" bottom: "f" top: "b" bias_param { axis: 0 } }'
    )
    blobs, _ = _run(tmp_path, layers)
    f = X.mean(axis=(2, 3)).reshape(2, 6, 1, 1)
    assert_close(blobs["s"], X * f, "scale 2 bottoms")
    assert_close(blobs["b"], X * f + f, "bias 2 bottoms")


def test_bias_layer(tmp_path):
    blobs, weights = _run(tmp_path, 'layer { name: "b" type: "Bias" bottom: "data" top: "b" }')
    (beta,) = weights.record["b"][1]
    assert_close(blobs["b"], X + beta.reshape(1, 6, 1, 1), "bias")


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax_along_axis_of_4d_blob(tmp_path, axis):
    blobs, _ = _run(
        tmp_path,
        f'layer {{ name: "p" type: "Softmax" bottom: "data" top: "p" softmax_param {{ axis: {axis} }} }}',
    )
    e = np.exp(X - X.max(axis=axis, keepdims=True))
    assert_close(blobs["p"], e / e.sum(axis=axis, keepdims=True), f"softmax axis {axis}")
