"""Convolution, Deconvolution, Pooling, InnerProduct: Caffe semantics on small nets."""

from __future__ import annotations

import numpy as np
import pytest

from camcaffe.convert.layers_conv import pooled_size
from camcaffe.errors import UnsupportedLayerError
from tests.helpers import assert_close, blobs_of, convert_text, net_text, opencv_blobs


def _x(shape, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)


def _conv_reference(x, w, b, stride, pad, dilation, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        for oc in range(g * og, (g + 1) * og):
            for i in range(oh):
                for j in range(ow):
                    patch = xp[
                        :,
                        g * cg : (g + 1) * cg,
                        i * stride[0] : i * stride[0] + dilation[0] * (kh - 1) + 1 : dilation[0],
                        j * stride[1] : j * stride[1] + dilation[1] * (kw - 1) + 1 : dilation[1],
                    ]
                    out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + (b[oc] if b is not None else 0)
    return out


@pytest.mark.parametrize(
    "params,stride,pad,dilation,group",
    [
        ("kernel_size: 3", (1, 1), (0, 0), (1, 1), 1),
        ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (2, 1), (1, 0), (1, 1), 1),
        ("kernel_size: 3 dilation: 2 pad: 2", (1, 1), (2, 2), (2, 2), 1),
        ("kernel_size: 3 group: 2 stride: 2 pad: 1", (2, 2), (1, 1), (1, 1), 2),
        ("kernel_size: 1 bias_term: false", (1, 1), (0, 0), (1, 1), 1),
    ],
)
def test_convolution_matches_direct_computation(tmp_path, params, stride, pad, dilation, group):
    text = net_text(
        (2, 4, 7, 8),
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        f"convolution_param {{ num_output: 6 {params} }} }}",
    )
    result, weights, path = convert_text(tmp_path, text)
    blobs = weights.record["conv"][1]
    x = _x((2, 4, 7, 8))
    got = blobs_of(result, path, {"data": x})["conv"]
    expected = _conv_reference(
        x, blobs[0], blobs[1] if len(blobs) > 1 else None, stride, pad, dilation, group
    )
    assert_close(got, expected, "conv")


def test_deconvolution_matches_opencv_and_symbolic_batch(tmp_path):
    text = net_text(
        (1, 4, 5, 6),
        'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" '
        "convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }",
    )
    result, _, path = convert_text(tmp_path, text)
    x = _x((1, 4, 5, 6))
    got = blobs_of(result, path, {"data": x})["up"]
    assert got.shape == (1, 6, 10, 12)
    (expected,) = opencv_blobs(tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel", x, ["up"])
    assert_close(got, expected, "deconv")
    batch3 = blobs_of(result, path, {"data": np.concatenate([x, x, x])})["up"]
    assert_close(batch3[2:], got, "batch 3")


@pytest.mark.parametrize(
    "size,kernel,stride,pad,ceil,expected",
    [
        (32, 3, 2, 1, True, 17),
        (16, 3, 2, 1, True, 9),
        (8, 2, 2, 0, True, 4),
        (112, 3, 2, 0, True, 56),
        (14, 3, 2, 0, True, 7),
        (13, 3, 2, 0, True, 6),
        (6, 3, 2, 1, True, 4),
        (5, 2, 2, 1, True, 3),
        (7, 3, 2, 1, False, 4),
        (10, 3, 3, 0, True, 4),
    ],
)
def test_pooled_size_follows_caffe(size, kernel, stride, pad, ceil, expected):
    assert pooled_size(size, kernel, stride, pad, ceil) == expected


def _pool_reference(x, k, s, p, op, ceil=True):
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, k[0], s[0], p[0], ceil), pooled_size(w, k[1], s[1], p[1], ceil)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            out[:, :, i, j] = window.max(axis=(2, 3)) if op == "MAX" else window.sum(axis=(2, 3)) / size
    return out


@pytest.mark.parametrize("op", ["MAX", "AVE"])
@pytest.mark.parametrize(
    "geometry,k,s,p",
    [
        ("kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1)),
        ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0)),
        ("kernel_size: 2 stride: 3 pad: 1", (2, 2), (3, 3), (1, 1)),
        ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1", (3, 2), (2, 1), (1, 1)),
    ],
)
def test_pooling_ceil_padding_and_divisor(tmp_path, op, geometry, k, s, p):
    text = net_text(
        (1, 3, 9, 10),
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        f"pooling_param {{ pool: {op} {geometry} }} }}",
    )
    result, _, path = convert_text(tmp_path, text)
    x = _x((1, 3, 9, 10))
    got = blobs_of(result, path, {"data": x})["pool"]
    assert_close(got, _pool_reference(x, k, s, p, op), f"{op} {geometry}")


def test_global_pooling(tmp_path):
    text = net_text(
        (2, 3, 5, 4),
        'layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" '
        "pooling_param { pool: AVE global_pooling: true } }\n"
        'layer { name: "gmp" type: "Pooling" bottom: "data" top: "gmp" '
        "pooling_param { pool: MAX global_pooling: true } }",
    )
    result, _, path = convert_text(tmp_path, text)
    x = _x((2, 3, 5, 4))
    blobs = blobs_of(result, path, {"data": x})
    assert_close(blobs["gap"], x.mean(axis=(2, 3), keepdims=True), "gap")
    assert_close(blobs["gmp"], x.max(axis=(2, 3), keepdims=True), "gmp")


def test_stochastic_pooling_is_refused_by_name(tmp_path):
    text = net_text(
        (1, 3, 8, 8),
        'layer { name: "sp" type: "Pooling" bottom: "data" top: "sp" '
        "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }",
    )
    with pytest.raises(UnsupportedLayerError, match="'sp' \\(Pooling: STOCHASTIC"):
        convert_text(tmp_path, text)


@pytest.mark.parametrize("extra", ["", "transpose: true", "axis: 2", "bias_term: false", "axis: -1"])
def test_inner_product_axis_and_transpose(tmp_path, extra):
    text = net_text(
        (2, 3, 4, 5),
        f'layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        f"inner_product_param {{ num_output: 7 {extra} }} }}",
    )
    result, weights, path = convert_text(tmp_path, text)
    blobs = weights.record["fc"][1]
    x = _x((2, 3, 4, 5))
    axis = {"axis: 2": 2, "axis: -1": 3}.get(extra, 1)
    lead = x.shape[:axis]
    flat = x.reshape(*lead, -1)
    w = blobs[0].T if "transpose" in extra else blobs[0]
    expected = flat @ w.T + (blobs[1] if len(blobs) > 1 else 0)
    got = blobs_of(result, path, {"data": x})["fc"]
    assert_close(got, expected, f"fc {extra}")
