"""Eltwise, Concat, Slice, Split, Flatten, Reshape, Crop, ArgMax."""

from __future__ import annotations

import re

import numpy as np
import pytest

from camcaffe.errors import UnsupportedLayerError
from tests.helpers import assert_close, blobs_of, convert_text, net_text

X = np.random.default_rng(3).uniform(-2, 2, (2, 6, 5, 4)).astype(np.float32)


def _run(tmp_path, layers: str, x=X, batch=None):
    result, weights, path = convert_text(tmp_path, net_text(x.shape, layers), batch=batch)
    return blobs_of(result, path, {"data": x}), result


TWO = (
    'layer { name: "a" type: "Power" bottom: "data" top: "a" power_param { scale: 2 } }\n'
    'layer { name: "b" type: "Power" bottom: "data" top: "b" power_param { shift: 1 } }\n'
)


@pytest.mark.parametrize(
    "params,formula",
    [
        ("eltwise_param { operation: SUM coeff: 1 coeff: -0.5 }", lambda a, b: a - 0.5 * b),
        ("eltwise_param { operation: SUM }", lambda a, b: a + b),
        ("eltwise_param { operation: PROD }", lambda a, b: a * b),
        ("eltwise_param { operation: MAX }", np.maximum),
    ],
)
def test_eltwise(tmp_path, params, formula):
    blobs, _ = _run(
        tmp_path, TWO + f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" {params} }}'
    )
    assert_close(blobs["e"], formula(2 * X, X + 1), params)


def test_eltwise_coeff_count_must_match(tmp_path):
    with pytest.raises(UnsupportedLayerError, match="'e' \\(Eltwise: 1 coeff values for 2 bottoms"):
        _run(
            tmp_path,
            TWO + 'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" '
            "eltwise_param { coeff: 2 } }",
        )


@pytest.mark.parametrize(
    "params,axis",
    [
        ("", 1),
        ("concat_param { axis: 3 }", 3),
        ("concat_param { concat_dim: 2 }", 2),
        ("concat_param { axis: -2 }", 2),
    ],
)
def test_concat(tmp_path, params, axis):
    blobs, _ = _run(
        tmp_path, TWO + f'layer {{ name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" {params} }}'
    )
    assert_close(blobs["c"], np.concatenate([2 * X, X + 1], axis=axis), params)


def test_slice_points_and_even_split(tmp_path):
    layers = (
        'layer { name: "s" type: "Slice" bottom: "data" top: "s1" top: "s2" top: "s3" '
        "slice_param { slice_point: 1 slice_point: 4 } }\n"
        'layer { name: "t" type: "Slice" bottom: "data" top: "t1" top: "t2" slice_param { axis: -1 } }\n'
        'layer { name: "sp" type: "Split" bottom: "data" top: "u1" top: "u2" }'
    )
    blobs, _ = _run(tmp_path, layers)
    assert_close(blobs["s1"], X[:, :1], "s1")
    assert_close(blobs["s2"], X[:, 1:4], "s2")
    assert_close(blobs["s3"], X[:, 4:], "s3")
    assert_close(blobs["t2"], X[..., 2:], "t2")
    assert_close(blobs["u2"], X, "split")


@pytest.mark.parametrize(
    "params,shape",
    [
        ("", (2, 120)),
        ("flatten_param { axis: 2 }", (2, 6, 20)),
        ("flatten_param { axis: 1 end_axis: 2 }", (2, 30, 4)),
    ],
)
def test_flatten(tmp_path, params, shape):
    blobs, _ = _run(tmp_path, f'layer {{ name: "f" type: "Flatten" bottom: "data" top: "f" {params} }}')
    assert_close(blobs["f"], X.reshape(shape), params)


@pytest.mark.parametrize(
    "params,shape",
    [
        ("reshape_param { shape { dim: 0 dim: -1 } }", (2, 120)),
        ("reshape_param { shape { dim: 0 dim: 3 dim: 2 dim: -1 } }", (2, 3, 2, 20)),
        ("reshape_param { shape { dim: 2 dim: 3 } axis: 1 num_axes: 1 }", (2, 2, 3, 5, 4)),
        ("reshape_param { shape { dim: 1 } axis: 0 num_axes: 0 }", (1, 2, 6, 5, 4)),
        ("reshape_param { shape { dim: -1 dim: 4 } }", (60, 4)),
    ],
)
def test_reshape(tmp_path, params, shape):
    blobs, result = _run(tmp_path, f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r" {params} }}')
    assert_close(blobs["r"], X.reshape(shape), params)


def test_reshape_that_fixes_the_batch_keeps_deploy_batch(tmp_path):
    result = convert_text(
        tmp_path,
        net_text(
            X.shape,
            'layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
            "reshape_param { shape { dim: 12 dim: 20 } } }",
        ),
    )[0]
    assert not result.converted.symbolic_batch
    assert any("keeps the deploy batch" in w for w in result.warnings)


def test_crop_against_reference(tmp_path):
    layers = (
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "c" type: "Crop" bottom: "data" bottom: "p" top: "c" crop_param { axis: 2 offset: 1 offset: 2 } }\n'
        'layer { name: "d" type: "Crop" bottom: "data" bottom: "p" top: "d" crop_param { axis: 1 offset: 0 offset: 1 offset: 1 } }'
    )
    blobs, _ = _run(tmp_path, layers)
    assert_close(blobs["c"], X[:, :, 1:4, 2:4], "crop axis 2")
    assert_close(blobs["d"], X[:, :, 1:4, 1:3], "crop axis 1")


def test_argmax_ties_and_shapes(tmp_path):
    x = np.zeros((2, 3, 2, 2), np.float32)
    x[0, 1, 0, 0] = 5
    x[0, 2, 1, 1] = 5  # tie: Caffe returns the larger flat index first
    x[1, 0, 0, 1] = -1
    layers = (
        'layer { name: "am" type: "ArgMax" bottom: "data" top: "am" argmax_param { top_k: 2 out_max_val: true } }\n'
        'layer { name: "ax" type: "ArgMax" bottom: "data" top: "ax" argmax_param { axis: 1 } }'
    )
    blobs, _ = _run(tmp_path, layers, x=x)
    assert blobs["am"].shape == (2, 2, 2, 1)
    assert blobs["am"][0, 0, :, 0].tolist() == [11.0, 4.0]
    assert blobs["am"][0, 1, :, 0].tolist() == [5.0, 5.0]
    assert blobs["am"][1, 0, 0, 0] == 11.0  # all zero but one: the last zero wins
    assert blobs["ax"].shape == (2, 1, 2, 2)
    assert blobs["ax"][1, 0].tolist() == [[2.0, 2.0], [2.0, 2.0]]


@pytest.mark.parametrize(
    "layer,message",
    [
        (
            'layer { name: "r" type: "ReLU" bottom: "data" bottom: "data" top: "r" }',
            "takes 1 bottom(s), got 2",
        ),
        (
            'layer { name: "r" type: "Pooling" bottom: "data" top: "p" top: "mask" top: "x" pooling_param { kernel_size: 2 } }',
            "takes 1 to 2 top(s), got 3",
        ),
        ('layer { name: "r" type: "Eltwise" bottom: "data" top: "e" }', "takes at least 2 bottom(s), got 1"),
        ('layer { name: "r" type: "Crop" bottom: "data" top: "c" }', "takes 2 bottom(s), got 1"),
    ],
)
def test_wrong_bottom_or_top_counts_are_refused(tmp_path, layer, message):
    with pytest.raises(UnsupportedLayerError, match=re.escape(message)):
        _run(tmp_path, layer)
