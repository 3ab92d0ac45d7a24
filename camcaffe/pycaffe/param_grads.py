"""Parameter gradients of Caffe layers (`net.params[layer][i].diff` after `net.backward()`), in numpy, from
the layer's bottom values and top diffs, as each layer's Backward_cpu computes them.

Caffe ADDS parameter gradients to the diff already held (solvers clear it between iterations), with one
exception kept here: Scale writes its scale gradient over the old one when the scale has as many values as
the bottom, or when the batch-like outer dimension is 1 and the scale spans several values over a spatial
inner dimension (scale_layer.cpp's shortcuts). BatchNorm computes no gradient for its statistics (their diff
stays as it is). Layer types not listed have no rule here: `gradients` raises NoParamGradient."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from camcaffe.caffe import caffe_pb2


class NoParamGradient(Exception):
    """This layer's parameter gradients are not computed (the message says why)."""


@dataclass(frozen=True)
class ParamGradient:
    value: np.ndarray | None  # None: Caffe leaves the diff as it is
    accumulate: bool = True  # add to the held diff (else overwrite it)


def _spatial(values: Sequence[int], h: int | None, w: int | None, default: int | None) -> list[int]:
    if h is not None or w is not None:
        return [int(h if h is not None else default), int(w if w is not None else default)]  # type: ignore[arg-type]
    if not values:
        if default is None:
            raise NoParamGradient("has no kernel_size")
        return [default, default]
    if len(values) == 1:
        return [int(values[0])] * 2
    if len(values) == 2:
        return [int(v) for v in values]
    raise NoParamGradient("is not a 2-D convolution")


def _conv_geometry(
    param: caffe_pb2.ConvolutionParameter,
) -> tuple[list[int], list[int], list[int], list[int]]:
    def field(name: str) -> int | None:
        return int(getattr(param, name)) if param.HasField(name) else None

    kernel = _spatial(param.kernel_size, field("kernel_h"), field("kernel_w"), None)
    stride = _spatial(param.stride, field("stride_h"), field("stride_w"), 1)
    pad = _spatial(param.pad, field("pad_h"), field("pad_w"), 0)
    dilation = _spatial(param.dilation, None, None, 1)
    return kernel, stride, pad, dilation


def conv_weight_gradient(
    x: np.ndarray,
    dy: np.ndarray,
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    group: int,
) -> np.ndarray:
    """d sum(dy * conv(x, W)) / dW for a 2-D convolution: x (N, C, H, W), dy (N, O, Ho, Wo) ->
    (O, C / group, kh, kw)."""
    n, channels = x.shape[:2]
    outputs, out_h, out_w = dy.shape[1:]
    padded = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    per_in, per_out = channels // group, outputs // group
    # im2col: the input value under each kernel tap at each output position, then one product per group
    windows = np.empty((n, channels, kernel[0], kernel[1], out_h, out_w), np.float32)
    for a in range(kernel[0]):
        top = a * dilation[0]
        for b in range(kernel[1]):
            left = b * dilation[1]
            windows[:, :, a, b] = padded[
                :,
                :,
                top : top + stride[0] * (out_h - 1) + 1 : stride[0],
                left : left + stride[1] * (out_w - 1) + 1 : stride[1],
            ]
    positions = out_h * out_w
    columns = windows.reshape(n, group, per_in * kernel[0] * kernel[1], positions)
    columns = columns.transpose(1, 0, 3, 2).reshape(group, n * positions, -1)
    grouped_dy = dy.reshape(n, group, per_out, positions).transpose(1, 2, 0, 3).reshape(group, per_out, -1)
    result = np.matmul(grouped_dy, columns)
    return result.reshape(outputs, per_in, kernel[0], kernel[1])


def _conv(layer, bottoms, top_diffs, params, deconvolution: bool) -> list[ParamGradient]:
    param = layer.convolution_param
    x, dy = bottoms[0], top_diffs[0]
    if x.ndim != 4:
        raise NoParamGradient("is not a 2-D convolution")
    if param.axis != 1:
        raise NoParamGradient("convolves along an axis other than 1")
    kernel, stride, pad, dilation = _conv_geometry(param)
    # ConvolutionDepthwise reads no group: one filter per input channel
    group = x.shape[1] if layer.type == "ConvolutionDepthwise" else int(param.group)
    if deconvolution:  # the weights of the convolution from top to bottom that the layer transposes
        weights = conv_weight_gradient(dy, x, kernel, stride, pad, dilation, group)
    else:
        weights = conv_weight_gradient(x, dy, kernel, stride, pad, dilation, group)
    result = [ParamGradient(weights.reshape(params[0].shape))]
    if len(params) > 1:
        result.append(ParamGradient(dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)))
    return result


def _canonical(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _inner_product(layer, bottoms, top_diffs, params) -> list[ParamGradient]:
    param = layer.inner_product_param
    x, dy = bottoms[0], top_diffs[0]
    axis = _canonical(int(param.axis), x.ndim)
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    x2 = x.reshape(rows, -1)
    dy2 = dy.reshape(rows, -1)
    weights = x2.T @ dy2 if param.transpose else dy2.T @ x2
    result = [ParamGradient(weights.astype(np.float32).reshape(params[0].shape))]
    if len(params) > 1:
        result.append(ParamGradient(dy2.sum(axis=0, dtype=np.float64).astype(np.float32)))
    return result


def _dims(shape: Sequence[int], axis: int, count: int) -> tuple[int, int, int]:
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    middle = int(np.prod(shape[axis : axis + count], dtype=np.int64))
    inner = int(np.prod(shape[axis + count :], dtype=np.int64))
    return outer, middle, inner


def _summed(values: np.ndarray, dims: tuple[int, int, int], shape) -> np.ndarray:
    return values.reshape(dims).sum(axis=(0, 2), dtype=np.float64).astype(np.float32).reshape(shape)


def _scale_or_bias(layer, bottoms, top_diffs, params) -> list[ParamGradient]:
    scale = layer.type == "Scale"
    param = layer.scale_param if scale else layer.bias_param
    x, dy = bottoms[0], top_diffs[0]
    axis = _canonical(int(param.axis), x.ndim)
    if len(bottoms) == 2:  # the factor (or bias) is the second bottom; a Scale's blob is its bias
        other = bottoms[1].shape
        axis = 0 if not other else axis
        dims = _dims(x.shape, axis, len(other))
        return [ParamGradient(_summed(dy, dims, params[0].shape))] if scale and params else []
    count = x.ndim - axis if param.num_axes == -1 else int(param.num_axes)
    dims = _dims(x.shape, axis, count)
    if not scale:
        return [ParamGradient(_summed(dy, dims, params[0].shape))]
    outer, middle, inner = dims
    overwrite = params[0].size == x.size or (outer == 1 and inner > 1 and middle > 1)
    factor = ParamGradient(_summed(dy * x, dims, params[0].shape), accumulate=not overwrite)
    if len(params) > 1:
        return [factor, ParamGradient(_summed(dy, dims, params[1].shape))]
    return [factor]


def _prelu(layer, bottoms, top_diffs, params) -> list[ParamGradient]:
    x, dy = bottoms[0], top_diffs[0]
    product = (dy * x * (x <= 0)).astype(np.float64)
    if layer.prelu_param.channel_shared:
        return [ParamGradient(np.asarray(product.sum(), np.float32).reshape(params[0].shape))]
    channels = x.shape[1] if x.ndim > 1 else 1
    per_channel = product.reshape(x.shape[0], channels, -1).sum(axis=(0, 2))
    return [ParamGradient(per_channel.astype(np.float32).reshape(params[0].shape))]


def _embed(layer, bottoms, top_diffs, params) -> list[ParamGradient]:
    indices = bottoms[0].reshape(-1).astype(np.int64)
    dy = top_diffs[0].reshape(indices.size, -1).astype(np.float64)
    weights = np.zeros(params[0].shape, np.float64)
    np.add.at(weights, indices, dy)
    result = [ParamGradient(weights.astype(np.float32))]
    if len(params) > 1:
        result.append(ParamGradient(dy.sum(axis=0).astype(np.float32)))
    return result


def _batch_norm(layer, bottoms, top_diffs, params) -> list[ParamGradient]:
    return [ParamGradient(None) for _ in params]


_RULES = {
    "Convolution": lambda *a: _conv(*a, deconvolution=False),
    "ConvolutionDepthwise": lambda *a: _conv(*a, deconvolution=False),
    "DepthwiseConvolution": lambda *a: _conv(*a, deconvolution=False),
    "Deconvolution": lambda *a: _conv(*a, deconvolution=True),
    "InnerProduct": _inner_product,
    "Scale": _scale_or_bias,
    "Bias": _scale_or_bias,
    "PReLU": _prelu,
    "Embed": _embed,
    "BatchNorm": _batch_norm,
}


def has_rule(layer_type: str) -> bool:
    return layer_type in _RULES


def gradients(
    layer: caffe_pb2.LayerParameter,
    bottoms: list[np.ndarray],
    top_diffs: list[np.ndarray],
    params: list[np.ndarray],
) -> list[ParamGradient]:
    """One ParamGradient per parameter blob of `layer`."""
    rule = _RULES.get(layer.type)
    if rule is None:
        raise NoParamGradient(f"camcaffe has no parameter gradient rule for {layer.type} layers")
    bottoms = [np.asarray(b, np.float32) for b in bottoms]
    top_diffs = [np.asarray(d, np.float32) for d in top_diffs]
    return rule(layer, bottoms, top_diffs, params)
