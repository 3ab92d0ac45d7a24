"""Parameter gradients in numpy against float64 finite differences of the Caffe oracle's layer functions,
and Caffe's accumulate / overwrite rules."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from camcaffe.caffe import caffe_pb2
from camcaffe.pycaffe.param_grads import NoParamGradient, gradients
from tests import caffe_reference


def _layer(text: str) -> caffe_pb2.LayerParameter:
    return text_format.Parse(text + ' bottom: "x" top: "y"', caffe_pb2.LayerParameter())


def _finite_differences(layer, bottoms, blobs, seed, blob_index: int, points) -> list[float]:
    def f(values) -> float:
        arrays = [b if i != blob_index else values for i, b in enumerate(blobs)]
        (top,) = caffe_reference.run_layer(layer, bottoms, arrays)
        return float((np.asarray(top, np.float64) * seed).sum())

    found = []
    for point in points:
        up, down = blobs[blob_index].copy(), blobs[blob_index].copy()
        up[point] += 0.5
        down[point] -= 0.5
        found.append(f(up) - f(down))  # a linear function of the parameter: exact for any step
    return found


CASES = {
    "conv_group_dilation_stride_pad": (
        'name: "c" type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 '
        "dilation: 2 group: 2 }",
        [(2, 4, 9, 9)],
        [(6, 2, 3, 3), (6,)],
    ),
    "conv_rectangular": (
        'name: "c" type: "Convolution" convolution_param { num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 1 '
        "stride_w: 2 pad_h: 0 pad_w: 1 bias_term: false }",
        [(1, 2, 5, 6)],
        [(3, 2, 2, 3)],
    ),
    "depthwise": (
        'name: "c" type: "ConvolutionDepthwise" convolution_param { num_output: 3 kernel_size: 3 pad: 1 }',
        [(2, 3, 5, 5)],
        [(3, 1, 3, 3), (3,)],
    ),
    "deconv_group_stride": (
        'name: "d" type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 '
        "group: 2 }",
        [(2, 6, 4, 4)],
        [(6, 2, 3, 3), (4,)],
    ),
    "inner_product": (
        'name: "f" type: "InnerProduct" inner_product_param { num_output: 5 }',
        [(3, 2, 3, 3)],
        [(5, 18), (5,)],
    ),
    "inner_product_transpose_axis2": (
        'name: "f" type: "InnerProduct" inner_product_param { num_output: 4 axis: 2 transpose: true }',
        [(2, 3, 5, 2)],
        [(10, 4), (4,)],
    ),
    "scale_bias_term": (
        'name: "s" type: "Scale" scale_param { bias_term: true }',
        [(2, 3, 4, 4)],
        [(3,), (3,)],
    ),
    "scale_axis0_num_axes2": (
        'name: "s" type: "Scale" scale_param { axis: 0 num_axes: 2 }',
        [(2, 3, 4)],
        [(2, 3)],
    ),
    "bias": ('name: "b" type: "Bias"', [(2, 3, 4, 4)], [(3,)]),
    "prelu": ('name: "p" type: "PReLU"', [(2, 3, 4, 4)], [(3,)]),
    "prelu_shared": ('name: "p" type: "PReLU" prelu_param { channel_shared: true }', [(2, 3, 4)], [(1,)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parameter_gradient_matches_finite_differences(case: str) -> None:
    text, bottom_shapes, blob_shapes = CASES[case]
    layer = _layer(text)
    rng = np.random.default_rng(len(case))
    bottoms = [rng.normal(0, 1, s) for s in bottom_shapes]
    blobs = [rng.normal(0, 1, s) for s in blob_shapes]
    (top,) = caffe_reference.run_layer(layer, bottoms, blobs)
    seed = rng.normal(0, 1, np.shape(top))
    found = gradients(layer, bottoms, [seed], [b.astype(np.float32) for b in blobs])
    assert len(found) == len(blobs)
    for index, (blob, gradient) in enumerate(zip(blobs, found, strict=True)):
        assert gradient.value is not None and gradient.value.shape == blob.shape
        points = [tuple(int(rng.integers(0, d)) for d in blob.shape) for _ in range(8)]
        expected = _finite_differences(layer, bottoms, blobs, seed, index, points)
        np.testing.assert_allclose([float(gradient.value[p]) for p in points], expected, rtol=1e-4, atol=1e-4)


def test_embed_adds_the_top_diff_to_the_rows_read() -> None:
    layer = _layer('name: "e" type: "Embed" embed_param { num_output: 2 input_dim: 4 }')
    indices = np.array([[1.0], [3.0], [1.0]])
    dy = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    (weights, bias) = gradients(
        layer, [indices], [dy], [np.zeros((4, 2), np.float32), np.zeros(2, np.float32)]
    )
    np.testing.assert_array_equal(weights.value, [[0, 0], [6, 8], [0, 0], [3, 4]])
    np.testing.assert_array_equal(bias.value, [9, 12])


def test_accumulation_follows_caffe() -> None:
    """Caffe adds parameter gradients, except Scale's factor in its eltwise and batch-of-one shortcuts;
    BatchNorm computes none for its statistics."""
    scale = _layer('name: "s" type: "Scale"')
    x = np.ones((1, 3, 2, 2), np.float32)
    (factor,) = gradients(scale, [x], [x], [np.ones(3, np.float32)])
    assert not factor.accumulate  # outer dimension 1, inner 4, three factors: gemv with beta 0
    (factor,) = gradients(scale, [np.ones((2, 3, 2, 2), np.float32)], [np.ones((2, 3, 2, 2))], [np.ones(3)])
    assert factor.accumulate
    (factor,) = gradients(scale, [np.ones((1, 3, 1, 1), np.float32)], [np.ones((1, 3, 1, 1))], [np.ones(3)])
    assert not factor.accumulate  # as many factors as values: the eltwise product is written directly
    conv = _layer('name: "c" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }')
    assert all(g.accumulate for g in gradients(conv, [x], [x[:, :1]], [np.ones((1, 3, 1, 1)), np.ones(1)]))
    batch_norm = _layer('name: "bn" type: "BatchNorm"')
    assert [g.value for g in gradients(batch_norm, [x], [x], [np.ones(3), np.ones(3), np.ones(1)])] == [
        None
    ] * 3


def test_layers_without_a_rule_say_so() -> None:
    with pytest.raises(NoParamGradient, match="Normalize"):
        gradients(_layer('name: "n" type: "Normalize"'), [np.ones((1, 2, 2, 2))], [np.ones((1, 2, 2, 2))], [])
    conv3d = _layer('name: "c" type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }')
    with pytest.raises(NoParamGradient, match="2-D"):
        gradients(conv3d, [np.ones((1, 1, 2, 2, 2))], [np.ones((1, 1, 2, 2, 2))], [np.ones((1, 1, 1, 1, 1))])
