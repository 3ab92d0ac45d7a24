"""Element-wise layers against their Caffe formulas."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import assert_close, blobs_of, convert_text, net_text

X = np.random.default_rng(1).uniform(-3, 3, (2, 3, 4, 5)).astype(np.float32)
X[0, 0, 0, :3] = [0.0, 50.0, -50.0]


def _run(tmp_path, layer: str, x=X):
    result, weights, path = convert_text(tmp_path, net_text(x.shape, layer))
    return blobs_of(result, path, {"data": x}), weights


def _layer(type_name: str, params: str = "", top: str = "y") -> str:
    return f'layer {{ name: "y" type: "{type_name}" bottom: "data" top: "{top}" {params} }}'


CASES = [
    ("ReLU", "", lambda x: np.maximum(x, 0)),
    ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: np.where(x > 0, x, 0.1 * x)),
    ("ELU", "elu_param { alpha: 0.5 }", lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ("Sigmoid", "", lambda x: 1 / (1 + np.exp(-x))),
    ("TanH", "", np.tanh),
    ("AbsVal", "", np.abs),
    ("BNLL", "", lambda x: np.where(x > 0, x + np.log1p(np.exp(-x)), np.log1p(np.exp(x)))),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", lambda x: (1 + 0.5 * x) ** 2),
    ("Power", "power_param { power: 1 scale: -2 }", lambda x: -2 * x),
    ("Exp", "", np.exp),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", lambda x: 2.0 ** (1 + 0.5 * x)),
    ("Log", "log_param { shift: 60 }", lambda x: np.log(60 + x)),
    ("Log", "log_param { base: 10 scale: 2 shift: 101 }", lambda x: np.log10(101 + 2 * x)),
    ("Threshold", "threshold_param { threshold: 0.5 }", lambda x: (x > 0.5).astype(np.float32)),
    ("Dropout", "dropout_param { dropout_ratio: 0.3 }", lambda x: x),
    ("Dropout", "dropout_param { dropout_ratio: 0.3 scale_train: false }", lambda x: 0.7 * x),
]


@pytest.mark.parametrize("type_name,params,formula", CASES, ids=[f"{c[0]}-{c[1][:20]}" for c in CASES])
def test_elementwise_layers(tmp_path, type_name, params, formula):
    blobs, _ = _run(tmp_path, _layer(type_name, params))
    assert_close(blobs["y"], formula(X.astype(np.float64)).astype(np.float32), f"{type_name} {params}")


@pytest.mark.parametrize("shared", [False, True])
def test_prelu(tmp_path, shared):
    params = "prelu_param { channel_shared: true }" if shared else ""
    blobs, weights = _run(tmp_path, _layer("PReLU", params))
    slope = weights.record["y"][1][0]
    assert slope.shape == ((1,) if shared else (3,))
    a = slope.reshape(1, -1, 1, 1)
    assert_close(blobs["y"], np.where(X > 0, X, a * X), "prelu")


def test_in_place_relu_keeps_caffe_blob_semantics(tmp_path):
    layers = (
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        "convolution_param { num_output: 4 kernel_size: 1 } }\n"
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
        'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }'
    )
    result, weights, path = convert_text(tmp_path, net_text(X.shape, layers))
    tensors = result.converted.blob_tensors
    assert tensors["conv"] == "conv"
    assert "conv@conv" in result.converted.tensor_shapes  # the pre-ReLU value keeps a name of its own
    blobs = blobs_of(result, path, {"data": X})
    w, b = weights.record["conv"][1]
    pre = np.einsum("oc,nchw->nohw", w.reshape(4, 3), X) + b.reshape(1, 4, 1, 1)
    assert_close(blobs["conv"], np.maximum(pre, 0), "post-ReLU conv")
    assert_close(blobs["pool"], np.maximum(pre, 0).mean(axis=(2, 3), keepdims=True), "pool reads post-ReLU")
