"""An independent numpy implementation of Caffe's TEST-phase forward pass, the oracle of the fuzz tests.

Written from BVLC Caffe's layer definitions (src/caffe/layers/*.cpp), not from camcaffe's converter:
every layer reads float32 blobs, computes in float64 and stores float32, and a blob written by several
layers (in-place ReLU, BatchNorm, Scale, ...) holds its last writer's value, as `net.blobs` does in Caffe.
The layer functions raise `ReferenceError` for configurations Caffe would reject with a CHECK, which the
random net generator uses to discard invalid candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from google.protobuf import text_format

from camcaffe.caffe import caffe_pb2

TEST_PHASE = caffe_pb2.TEST
FLT_MAX = float(np.finfo(np.float32).max)
Blobs = list[np.ndarray]
WeightSource = Callable[[caffe_pb2.LayerParameter, list[np.ndarray]], Blobs]


class ReferenceError(ValueError):
    """A net or layer configuration that Caffe itself would refuse (a failed CHECK)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ReferenceError(message)


# ------------------------------------------------------------------------------------------- parsing


def parse_net(net_param_text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(net_param_text, caffe_pb2.NetParameter())


def _rule_matches(rule: caffe_pb2.NetStateRule, phase: int) -> bool:
    return not rule.HasField("phase") or rule.phase == phase


def layer_in_phase(layer: caffe_pb2.LayerParameter, phase: int = TEST_PHASE) -> bool:
    """Caffe's Net::FilterNet for the phase part of include/exclude rules."""
    if layer.include:
        return any(_rule_matches(rule, phase) for rule in layer.include)
    return not any(_rule_matches(rule, phase) for rule in layer.exclude)


def declared_inputs(net: caffe_pb2.NetParameter) -> dict[str, tuple[int, ...]]:
    """Input blobs and their declared shapes, from `input:` + `input_dim`/`input_shape` or Input layers."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, name in enumerate(net.input):
        if net.input_shape:
            shape = net.input_shape[min(i, len(net.input_shape) - 1)].dim
        else:
            shape = net.input_dim[4 * i : 4 * i + 4]
        shapes[name] = tuple(int(d) for d in shape)
    for layer in net.layer:
        if layer.type == "Input" and layer_in_phase(layer):
            param_shapes = layer.input_param.shape
            for j, top in enumerate(layer.top):
                shape = param_shapes[0 if len(param_shapes) == 1 else j].dim
                shapes[top] = tuple(int(d) for d in shape)
    return shapes


# ------------------------------------------------------------------------------------------- helpers


def canonical_axis(axis: int, num_axes: int) -> int:
    check(-num_axes <= axis < num_axes, f"axis {axis} out of range for {num_axes}-D blob")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    return int(np.prod(shape[start:end], dtype=np.int64))


def _spatial_params(
    repeated: Sequence[int], has_h: bool, h: int, has_w: bool, w: int, default: int, what: str
) -> tuple[int, int]:
    """BaseConvolutionLayer's rule for kernel/stride/pad/dilation: _h/_w, or 0, 1 or 2 repeated values."""
    if has_h or has_w:
        check(len(repeated) == 0, f"{what}: either {what}_size or {what}_h/_w, not both")
        return h, w
    check(len(repeated) in (0, 1, 2), f"{what} must be given 0, 1 or 2 times")
    if not repeated:
        return default, default
    return (repeated[0], repeated[0]) if len(repeated) == 1 else (repeated[0], repeated[1])


def conv_geometry(p: caffe_pb2.ConvolutionParameter) -> dict[str, tuple[int, int]]:
    check(p.axis in (1, -3), "only axis 1 (NCHW) convolution is modelled")
    kernel = _spatial_params(
        p.kernel_size, p.HasField("kernel_h"), p.kernel_h, p.HasField("kernel_w"), p.kernel_w, 0, "kernel"
    )
    check(p.HasField("kernel_h") == p.HasField("kernel_w"), "kernel_h and kernel_w go together")
    check(p.HasField("stride_h") == p.HasField("stride_w"), "stride_h and stride_w go together")
    stride = _spatial_params(
        p.stride, p.HasField("stride_h"), p.stride_h, p.HasField("stride_w"), p.stride_w, 1, "stride"
    )
    pad = _spatial_params(p.pad, p.HasField("pad_h"), p.pad_h, p.HasField("pad_w"), p.pad_w, 0, "pad")
    check(len(p.dilation) in (0, 1, 2), "dilation must be given 0, 1 or 2 times")
    if not p.dilation:
        dilation = (1, 1)
    elif len(p.dilation) == 1:
        dilation = (p.dilation[0], p.dilation[0])
    else:
        dilation = (p.dilation[0], p.dilation[1])
    check(min(kernel) > 0 and min(stride) > 0 and min(dilation) > 0, "kernel, stride, dilation must be > 0")
    return {"kernel": kernel, "stride": stride, "pad": pad, "dilation": dilation}


# ------------------------------------------------------------------------------------------- vision layers


def convolution(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.convolution_param
    g = conv_geometry(p)
    check(x.ndim == 4, "Convolution needs a 4-D bottom")
    n, c, h, w = x.shape
    group, num_output = p.group, p.num_output
    check(num_output > 0 and c % group == 0 and num_output % group == 0, "bad group/num_output/channels")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["kernel"], g["stride"], g["pad"], g["dilation"]
    weight = np.asarray(blobs[0], dtype=np.float64)
    check(weight.shape == (num_output, c // group, kh, kw), f"conv weight shape {weight.shape}")
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    out_h, out_w = (h + 2 * ph - ext_h) // sh + 1, (w + 2 * pw - ext_w) // sw + 1
    check(out_h > 0 and out_w > 0, "convolution output would be empty")
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, num_output, out_h, out_w))
    cg, og = c // group, num_output // group
    for gi in range(group):
        xg = xp[:, gi * cg : (gi + 1) * cg]
        for ky in range(kh):
            for kx in range(kw):
                y0, x0 = ky * dh, kx * dw
                patch = xg[:, :, y0 : y0 + sh * (out_h - 1) + 1 : sh, x0 : x0 + sw * (out_w - 1) + 1 : sw]
                wk = weight[gi * og : (gi + 1) * og, :, ky, kx]
                out[:, gi * og : (gi + 1) * og] += np.einsum("nchw,oc->nohw", patch, wk)
    if p.bias_term:
        bias = np.asarray(blobs[1], dtype=np.float64)
        check(bias.shape == (num_output,), "conv bias shape")
        out += bias[None, :, None, None]
    return out


def deconvolution(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    """Caffe's Deconvolution: the transpose of Convolution, weights (C_in, C_out/group, kh, kw)."""
    p = layer.convolution_param
    g = conv_geometry(p)
    check(x.ndim == 4, "Deconvolution needs a 4-D bottom")
    n, c, h, w = x.shape
    group, num_output = p.group, p.num_output
    check(num_output > 0 and c % group == 0 and num_output % group == 0, "bad group/num_output/channels")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["kernel"], g["stride"], g["pad"], g["dilation"]
    weight = np.asarray(blobs[0], dtype=np.float64)
    check(weight.shape == (c, num_output // group, kh, kw), f"deconv weight shape {weight.shape}")
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    full_h, full_w = sh * (h - 1) + ext_h, sw * (w - 1) + ext_w
    out_h, out_w = full_h - 2 * ph, full_w - 2 * pw
    check(out_h > 0 and out_w > 0, "deconvolution output would be empty")
    full = np.zeros((n, num_output, full_h, full_w))
    cg, og = c // group, num_output // group
    xd = x.astype(np.float64)
    for gi in range(group):
        xg = xd[:, gi * cg : (gi + 1) * cg]
        for ky in range(kh):
            for kx in range(kw):
                contrib = np.einsum("nchw,co->nohw", xg, weight[gi * cg : (gi + 1) * cg, :, ky, kx])
                y0, x0 = ky * dh, kx * dw
                rows = slice(y0, y0 + sh * (h - 1) + 1, sh)
                cols = slice(x0, x0 + sw * (w - 1) + 1, sw)
                full[:, gi * og : (gi + 1) * og, rows, cols] += contrib
    out = full[:, :, ph : ph + out_h, pw : pw + out_w]
    if p.bias_term:
        bias = np.asarray(blobs[1], dtype=np.float64)
        check(bias.shape == (num_output,), "deconv bias shape")
        out = out + bias[None, :, None, None]
    return out


def pooling_geometry(p: caffe_pb2.PoolingParameter, h: int, w: int) -> dict[str, tuple[int, int]]:
    if p.global_pooling:
        check(
            not (p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")),
            "global pooling takes no kernel",
        )
        kernel = (h, w)
    else:
        check(
            p.HasField("kernel_size") != (p.HasField("kernel_h") and p.HasField("kernel_w")),
            "kernel_size OR kernel_h and kernel_w",
        )
        kernel = (p.kernel_size, p.kernel_size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
    check(
        (not p.HasField("pad") and p.HasField("pad_h") and p.HasField("pad_w"))
        or (not p.HasField("pad_h") and not p.HasField("pad_w")),
        "pad OR pad_h and pad_w",
    )
    check(
        (not p.HasField("stride") and p.HasField("stride_h") and p.HasField("stride_w"))
        or (not p.HasField("stride_h") and not p.HasField("stride_w")),
        "stride OR stride_h and stride_w",
    )
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
    stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
    check(min(kernel) > 0 and min(stride) > 0, "kernel and stride must be > 0")
    if p.global_pooling:
        check(pad == (0, 0) and stride == (1, 1), "global pooling needs pad 0 and stride 1")
    if pad != (0, 0):
        check(p.pool in (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE), "pad: MAX/AVE only")
        check(pad[0] < kernel[0] and pad[1] < kernel[1], "pad must be smaller than kernel")
    ceil_mode = p.ceil_mode if p.HasField("ceil_mode") else p.round_mode == caffe_pb2.PoolingParameter.CEIL
    rounding = math.ceil if ceil_mode else math.floor
    pooled = []
    for size, k, s, pd in zip((h, w), kernel, stride, pad, strict=True):
        # Caffe divides in float32 before rounding; exact for these small integers.
        out = int(rounding((size + 2 * pd - k) / s)) + 1
        if any(pad) and (out - 1) * s >= size + pd:
            out -= 1  # the last window must start inside the image; checked on both axes if either has pad
        check(out > 0, "pooling output would be empty")
        check(not any(pad) or (out - 1) * s < size + pd, "pooling window starts in padding")
        pooled.append(out)
    return {"kernel": kernel, "stride": stride, "pad": pad, "pooled": (pooled[0], pooled[1])}


def pooling_has_empty_window(p: caffe_pb2.PoolingParameter, h: int, w: int) -> bool:
    """True when Caffe's last window starts past the image (CEIL, no pad, stride > kernel): a Caffe quirk
    that yields -FLT_MAX (MAX) or 0/0 (AVE), which no deploy net relies on."""
    g = pooling_geometry(p, h, w)
    starts = [(out - 1) * s - pd for out, s, pd in zip(g["pooled"], g["stride"], g["pad"], strict=True)]
    return starts[0] >= h or starts[1] >= w


def pooling(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.pooling_param
    check(x.ndim == 4, "Pooling needs a 4-D bottom")
    check(p.pool != caffe_pb2.PoolingParameter.STOCHASTIC, "STOCHASTIC pooling is not modelled")
    n, c, h, w = x.shape
    g = pooling_geometry(p, h, w)
    (kh, kw), (sh, sw), (ph, pw), (out_h, out_w) = g["kernel"], g["stride"], g["pad"], g["pooled"]
    xd = x.astype(np.float64)
    out = np.empty((n, c, out_h, out_w))
    is_max = p.pool == caffe_pb2.PoolingParameter.MAX
    for oy in range(out_h):
        for ox in range(out_w):
            hs, ws = oy * sh - ph, ox * sw - pw
            if is_max:
                # window clipped to the image: padding never wins a max
                he, we = min(hs + kh, h), min(ws + kw, w)
                window = xd[:, :, max(hs, 0) : he, max(ws, 0) : we]
                # Caffe starts from -FLT_MAX: a window wholly outside the image (possible with CEIL
                # rounding, no padding and stride > kernel) yields -FLT_MAX
                out[:, :, oy, ox] = window.max(axis=(2, 3), initial=-FLT_MAX)
            else:
                # divisor: window clipped to the PADDED image; sum: window clipped to the image
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                pool_size = (he - hs) * (we - ws)
                window = xd[:, :, max(hs, 0) : min(he, h), max(ws, 0) : min(we, w)]
                with np.errstate(invalid="ignore", divide="ignore"):  # empty window: 0 / (<= 0), as Caffe
                    out[:, :, oy, ox] = window.sum(axis=(2, 3)) / pool_size
    return out


def max_pooling_with_mask(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's MAX pooling with top_mask: the first maximum in row-major scan order (strict '>'
    from -FLT_MAX), its index h*W+w inside the (n, c) plane as float; -1 for an empty window."""
    n, c, h, w = x.shape
    g = pooling_geometry(layer.pooling_param, h, w)
    (kh, kw), (sh, sw), (ph, pw), (out_h, out_w) = g["kernel"], g["stride"], g["pad"], g["pooled"]
    out = np.full((n, c, out_h, out_w), -FLT_MAX)
    mask = np.full((n, c, out_h, out_w), -1.0)
    for oy in range(out_h):
        for ox in range(out_w):
            hs, ws = oy * sh - ph, ox * sw - pw
            for yy in range(max(hs, 0), min(hs + kh, h)):
                for xx in range(max(ws, 0), min(ws + kw, w)):
                    better = x[:, :, yy, xx] > out[:, :, oy, ox]
                    out[:, :, oy, ox] = np.where(better, x[:, :, yy, xx], out[:, :, oy, ox])
                    mask[:, :, oy, ox] = np.where(better, yy * w + xx, mask[:, :, oy, ox])
    return out, mask


def lrn(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.lrn_param
    check(x.ndim == 4, "LRN needs a 4-D bottom")
    size = p.local_size
    check(size % 2 == 1, "LRN local_size must be odd")
    pre_pad = (size - 1) // 2
    xd = x.astype(np.float64)
    n, c, h, w = x.shape
    sq = xd * xd
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        padded = np.pad(sq, ((0, 0), (pre_pad, size - 1 - pre_pad), (0, 0), (0, 0)))
        window_sum = sum(padded[:, i : i + c] for i in range(size))
        scale = p.k + (p.alpha / size) * window_sum
        return xd * scale ** (-p.beta)
    # WITHIN_CHANNEL: Split -> Power(2) -> AVE pool(size, pad pre_pad) -> Power(1 + alpha*s)^-beta -> PROD
    padded = np.pad(sq, ((0, 0), (0, 0), (pre_pad, pre_pad), (pre_pad, pre_pad)))
    window_sum = sum(padded[:, :, i : i + h, j : j + w] for i in range(size) for j in range(size))
    mean = window_sum / (size * size)
    return xd * (1.0 + p.alpha * mean) ** (-p.beta)


def inner_product(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.inner_product_param
    axis = canonical_axis(p.axis, x.ndim)
    outer, k = count(x.shape, 0, axis), count(x.shape, axis)
    weight = np.asarray(blobs[0], dtype=np.float64)
    expected = (k, p.num_output) if p.transpose else (p.num_output, k)
    check(weight.size == k * p.num_output, f"InnerProduct weight has {weight.size} values, needs {expected}")
    weight = weight.reshape(expected)
    flat = x.astype(np.float64).reshape(outer, k)
    out = flat @ weight if p.transpose else flat @ weight.T
    if p.bias_term:
        bias = np.asarray(blobs[1], dtype=np.float64).reshape(-1)
        check(bias.size == p.num_output, "InnerProduct bias size")
        out = out + bias
    return out.reshape(*x.shape[:axis], p.num_output)


# ------------------------------------------------------------------------------------------- neurons


def neuron(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    t = layer.type
    xd = x.astype(np.float64)
    if t == "ReLU":
        slope = layer.relu_param.negative_slope
        return np.maximum(xd, 0) + slope * np.minimum(xd, 0)
    if t == "PReLU":
        check(x.ndim >= 2, "PReLU needs >= 2 axes")
        slope = np.asarray(blobs[0], dtype=np.float64)
        if layer.prelu_param.channel_shared:
            check(slope.size == 1, "channel_shared PReLU has one slope")
            s = slope.reshape(())
        else:
            check(slope.size == x.shape[1], "PReLU needs one slope per channel")
            s = slope.reshape((1, x.shape[1]) + (1,) * (x.ndim - 2))
        return np.maximum(xd, 0) + s * np.minimum(xd, 0)
    if t == "ELU":
        alpha = layer.elu_param.alpha
        return np.maximum(xd, 0) + alpha * (np.exp(np.minimum(xd, 0)) - 1)
    if t == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-xd))
    if t == "TanH":
        return np.tanh(xd)
    if t == "AbsVal":
        return np.abs(xd)
    if t == "BNLL":
        return np.where(xd > 0, xd + np.log1p(np.exp(-np.abs(xd))), np.log1p(np.exp(np.minimum(xd, 0))))
    if t == "Power":
        p = layer.power_param
        return (p.shift + p.scale * xd) ** p.power
    if t == "Exp":
        p = layer.exp_param
        check(p.base == -1 or p.base > 0, "Exp base must be > 0 or -1")
        log_base = 1.0 if p.base == -1 else math.log(p.base)
        return np.exp(log_base * (p.shift + p.scale * xd))
    if t == "Log":
        p = layer.log_param
        check(p.base == -1 or p.base > 0, "Log base must be > 0 or -1")
        base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
        return np.log(p.shift + p.scale * xd) * base_scale
    if t == "Threshold":
        return (xd > layer.threshold_param.threshold).astype(np.float64)
    if t == "Dropout":
        p = layer.dropout_param
        return xd if p.scale_train else xd * (1.0 - p.dropout_ratio)
    raise ReferenceError(f"not a neuron layer: {t}")


NEURON_TYPES = frozenset(
    {"ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL"}
    | {"Power", "Exp", "Log", "Threshold", "Dropout"}
)


# ------------------------------------------------------------------------------------------- normalisation


def batch_norm(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.batch_norm_param
    use_global = p.use_global_stats if p.HasField("use_global_stats") else True  # TEST phase
    check(use_global, "BatchNorm with use_global_stats false (batch statistics) is not modelled")
    channels = 1 if x.ndim == 1 else x.shape[1]
    mean, var, factor = (np.asarray(b, dtype=np.float64).reshape(-1) for b in blobs[:3])
    check(mean.size == channels and var.size == channels and factor.size == 1, "BatchNorm blob sizes")
    scale = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    mean, var = mean * scale, var * scale
    shape = (1, channels) + (1,) * (x.ndim - 2) if x.ndim >= 2 else (channels,)
    return (x.astype(np.float64) - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + p.eps)


def _broadcast_param(
    x: np.ndarray, param: np.ndarray, axis_arg: int, param_shape: tuple[int, ...]
) -> np.ndarray:
    """Reshape a Scale/Bias parameter of shape `param_shape` to broadcast from `axis` of x (Caffe's
    outer_dim x scale_dim x inner_dim loop)."""
    if len(param_shape) == 0:
        return param.reshape(())
    axis = canonical_axis(axis_arg, x.ndim)
    check(x.ndim >= axis + len(param_shape), "parameter extends past the bottom's shape")
    check(tuple(x.shape[axis : axis + len(param_shape)]) == tuple(param_shape), "parameter shape mismatch")
    return param.reshape((1,) * axis + tuple(param_shape) + (1,) * (x.ndim - axis - len(param_shape)))


def _param_shape(x: np.ndarray, axis_arg: int, num_axes: int) -> tuple[int, ...]:
    axis = canonical_axis(axis_arg, x.ndim)
    check(num_axes >= -1, "num_axes must be >= -1")
    if num_axes >= 0:
        check(x.ndim >= axis + num_axes, "num_axes extends past the bottom's shape")
    return tuple(x.shape[axis:]) if num_axes == -1 else tuple(x.shape[axis : axis + num_axes])


def scale_layer(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.scale_param
    x = bottoms[0].astype(np.float64)
    if len(bottoms) > 1:
        shape = tuple(bottoms[1].shape)
        scale = bottoms[1].astype(np.float64)
        bias_blobs = blobs
    else:
        shape = _param_shape(x, p.axis, p.num_axes)
        scale = np.asarray(blobs[0], dtype=np.float64)
        bias_blobs = blobs[1:]
    check(scale.size == count(shape), "Scale parameter size")
    out = x * _broadcast_param(x, scale, p.axis, shape)
    if p.bias_term:
        bias = np.asarray(bias_blobs[0], dtype=np.float64)
        check(bias.size == count(shape), "Scale bias size")
        out = out + _broadcast_param(x, bias, p.axis, shape)
    return out


def bias_layer(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.bias_param
    x = bottoms[0].astype(np.float64)
    if len(bottoms) > 1:
        shape, bias = tuple(bottoms[1].shape), bottoms[1].astype(np.float64)
    else:
        shape, bias = _param_shape(x, p.axis, p.num_axes), np.asarray(blobs[0], dtype=np.float64)
    check(bias.size == count(shape), "Bias parameter size")
    return x + _broadcast_param(x, bias, p.axis, shape)


def softmax(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    axis = canonical_axis(layer.softmax_param.axis, x.ndim)
    xd = x.astype(np.float64)
    e = np.exp(xd - xd.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------------------------------- tensor layers


def eltwise(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.eltwise_param
    check(len(bottoms) >= 2, "Eltwise needs >= 2 bottoms")
    check(all(b.shape == bottoms[0].shape for b in bottoms), "Eltwise bottoms must have the same shape")
    xs = [b.astype(np.float64) for b in bottoms]
    if p.operation == caffe_pb2.EltwiseParameter.SUM:
        check(len(p.coeff) in (0, len(bottoms)), "Eltwise takes one coefficient per bottom")
        coeffs = list(p.coeff) or [1.0] * len(bottoms)
        return sum(c * b for c, b in zip(coeffs, xs, strict=True))
    check(len(p.coeff) == 0, "Eltwise coeff is for SUM only")
    if p.operation == caffe_pb2.EltwiseParameter.PROD:
        out = xs[0]
        for b in xs[1:]:
            out = out * b
        return out
    return np.maximum.reduce(xs)


def concat(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.concat_param
    nd = bottoms[0].ndim
    axis = p.concat_dim if p.HasField("concat_dim") else canonical_axis(p.axis, nd)
    check(0 <= axis < nd, "concat axis out of range")
    for b in bottoms:
        check(b.ndim == nd, "Concat bottoms must have the same number of axes")
        check(
            b.shape[:axis] + b.shape[axis + 1 :] == bottoms[0].shape[:axis] + bottoms[0].shape[axis + 1 :],
            "Concat bottoms differ off the concat axis",
        )
    return np.concatenate(bottoms, axis=axis)


def slice_layer(x: np.ndarray, layer: caffe_pb2.LayerParameter, num_tops: int) -> list[np.ndarray]:
    p = layer.slice_param
    axis = p.slice_dim if p.HasField("slice_dim") else canonical_axis(p.axis, x.ndim)
    check(0 <= axis < x.ndim, "slice axis out of range")
    dim = x.shape[axis]
    if p.slice_point:
        points = list(p.slice_point)
        check(len(points) == num_tops - 1, "Slice needs len(slice_point) == tops - 1")
        bounds = [0, *points, dim]
        check(bool(np.all(np.diff(bounds) > 0)), "slice points must increase inside the axis")
    else:
        check(dim % num_tops == 0, "even Slice needs the axis divisible by the number of tops")
        points = [dim // num_tops * i for i in range(1, num_tops)]
    return np.split(x, points, axis=axis)


def flatten(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.flatten_param
    start = canonical_axis(p.axis, x.ndim)
    end = canonical_axis(p.end_axis, x.ndim)
    check(start <= end + 1, "Flatten end_axis before axis")
    return x.reshape(x.shape[:start] + (count(x.shape, start, end + 1),) + x.shape[end + 1 :])


def reshape(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.reshape_param
    nd = x.ndim
    start = p.axis if p.axis >= 0 else nd + p.axis + 1
    check(0 <= start <= nd, "Reshape axis out of range")
    check(p.num_axes >= -1, "Reshape num_axes must be >= -1")
    end = nd if p.num_axes == -1 else start + p.num_axes
    check(end <= nd, "Reshape axis + num_axes out of range")
    dims = list(p.shape.dim)
    check(sum(1 for d in dims if d == -1) <= 1, "at most one -1 in a Reshape")
    new = list(x.shape[:start]) + [int(d) for d in dims] + list(x.shape[end:])
    for i, d in enumerate(dims):
        if d == 0:
            check(start + i < nd, "a 0 in Reshape with no bottom axis to copy")
            new[start + i] = x.shape[start + i]
        else:
            check(d >= -1, "Reshape dims must be >= -1")
    if -1 in dims:
        i = start + dims.index(-1)
        known = count([d for j, d in enumerate(new) if j != i])
        check(known > 0 and x.size % known == 0, "Reshape -1 cannot be inferred")
        new[i] = x.size // known
    check(count(new) == x.size, f"Reshape to {new} changes the count")
    return x.reshape(new)


def crop(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.crop_param
    x, ref = bottoms
    check(x.ndim == ref.ndim, "Crop bottoms must have the same number of axes")
    axis = canonical_axis(p.axis, x.ndim)
    offsets = list(p.offset)
    if len(offsets) > 1:
        check(axis + len(offsets) == x.ndim, "Crop needs one offset per axis from `axis` on")
    index = []
    for i in range(x.ndim):
        if i < axis:
            off, size = 0, x.shape[i]
        else:
            off = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - axis]
            size = ref.shape[i]
        check(i < axis or x.shape[i] - off >= ref.shape[i], f"Crop out of range on axis {i}")  # HED: 1 vs 3 ch
        index.append(slice(off, off + size))
    return x[tuple(index)]


def _ranked(rows: np.ndarray) -> np.ndarray:
    """Per row, the indices ordered by (value, index) descending: std::greater on std::pair."""
    idx = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    return np.lexsort((-idx, -rows), axis=-1)


def argmax(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    """Caffe's ArgMax: partial_sort of (value, index) pairs with std::greater, so among equal values the
    LARGER index ranks first. Indices are written as floats."""
    p = layer.argmax_param
    top_k = p.top_k
    check(top_k >= 1, "top_k must be >= 1")
    if p.HasField("axis"):
        axis = canonical_axis(p.axis, x.ndim)
        check(top_k <= x.shape[axis], "top_k larger than the axis")
        moved = np.moveaxis(x.astype(np.float64), axis, -1)
        dim = moved.shape[-1]
        # lexsort: last key is primary; sort by value then index, both descending
        flat = moved.reshape(-1, dim)
        order = _ranked(flat)[:, :top_k]
        rows = np.arange(flat.shape[0])[:, None]
        chosen = flat[rows, order] if p.out_max_val else order.astype(np.float64)
        chosen = chosen.reshape(moved.shape[:-1] + (top_k,))
        return np.moveaxis(chosen, -1, axis)
    n = x.shape[0]
    flat = x.astype(np.float64).reshape(n, -1)
    dim = flat.shape[1]
    check(top_k <= dim, "top_k larger than the flattened blob")
    order = _ranked(flat)[:, :top_k]
    values = flat[np.arange(n)[:, None], order]
    num_top_axes = max(x.ndim, 3)
    shape = [1] * num_top_axes
    shape[0], shape[2] = n, top_k
    if p.out_max_val:
        shape[1] = 2
        return np.stack([order.astype(np.float64), values], axis=1).reshape(shape)
    return order.astype(np.float64).reshape(shape)


# ------------------------------------------------------------------------------------------- fork layers
# Axpy (hujie-frank/SENet), ConvolutionDepthwise (conv_dw_layer.cpp, BVLC PR 5665), DepthwiseConvolution
# (yonghenglh6: BaseConvolution CPU path), ShuffleChannel (farmingyard/ShuffleNet), Reorg (darknet's
# reorg_cpu as the YOLOv2 ports call it), SPP and Im2col (BVLC). Loops follow the C++ index arithmetic.


def axpy(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> np.ndarray:
    check(len(bottoms) == 3, "Axpy takes scale, x, y")
    scale, x, y = (np.asarray(b, dtype=np.float64) for b in bottoms)
    check(x.ndim >= 2 and scale.ndim >= 2, "Axpy: scale and x need a channel axis")
    check(scale.shape[0] == x.shape[0] and scale.shape[1] == x.shape[1], "Axpy: scale (N, C) != x (N, C)")
    if scale.ndim == 4:
        check(scale.shape[2] == 1 and scale.shape[3] == 1, "Axpy: 4-D scale must be (N, C, 1, 1)")
    check(x.shape == y.shape, "Axpy: x and y shapes differ")
    check(scale.size == x.shape[0] * x.shape[1], "Axpy: scale values beyond N*C are not modelled")
    check(layer.top[0] not in layer.bottom, "Axpy in place is not modelled")
    n, c = x.shape[:2]
    flat_scale = scale.reshape(-1)
    top = y.reshape(n * c, -1).copy()
    xs = x.reshape(n * c, -1)
    for offset in range(n * c):  # caffe_axpy per (n, c) plane
        top[offset] += flat_scale[offset] * xs[offset]
    return top.reshape(x.shape)


def convolution_depthwise(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.convolution_param
    check(x.ndim == 4, "ConvolutionDepthwise needs a 4-D bottom")
    n, c, h, w = x.shape
    check(not p.HasField("num_output") or p.num_output == c, "num_output != C is fork-dependent")
    g = conv_geometry(p)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["kernel"], g["stride"], g["pad"], g["dilation"]
    out_h = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    check(out_h > 0 and out_w > 0, "ConvolutionDepthwise output would be empty")
    weight = np.asarray(blobs[0], dtype=np.float64)
    check(weight.shape == (c, 1, kh, kw), f"ConvolutionDepthwise weight shape {weight.shape}")
    # h_in = -pad + y * stride + ky * dilation; inputs outside the image count as 0
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, c, out_h, out_w))
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            patch = xp[:, :, y0 : y0 + sh * (out_h - 1) + 1 : sh, x0 : x0 + sw * (out_w - 1) + 1 : sw]
            out += patch * weight[None, :, 0, ky, kx, None, None]
    if p.bias_term:
        bias = np.asarray(blobs[1], dtype=np.float64)
        check(bias.shape == (c,), "ConvolutionDepthwise bias shape")
        out += bias[None, :, None, None]
    return out


def shuffle_channel(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    group = layer.shuffle_channel_param.group
    check(x.ndim >= 2, "ShuffleChannel needs a channel axis")
    chs = x.shape[1]
    check(group > 0 and chs % group == 0, "ShuffleChannel: group must divide the channels")
    rows, cols = group, chs // group
    top = np.empty_like(x, dtype=np.float64)
    for i in range(rows):  # Resize_cpu: input channel i*cols + j -> output channel j*rows + i
        for j in range(cols):
            top[:, j * rows + i] = x[:, i * cols + j]
    return top


def reorg(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.reorg_param
    check(x.ndim == 4 and p.HasField("stride"), "Reorg needs a 4-D bottom and a stride")
    b_, c, h, w = x.shape
    s = p.stride
    check(s > 0 and c % (s * s) == 0, "Reorg: stride^2 must divide the channels")
    if p.reverse:
        top_shape = (b_, c // (s * s), h * s, w * s)
    else:
        check(h % s == 0 and w % s == 0, "Reorg: height and width must be multiples of the stride")
        top_shape = (b_, c * s * s, h // s, w // s)
    src = x.reshape(-1).astype(np.float64)
    out = np.empty_like(src)
    out_c = c // (s * s)
    for b in range(b_):  # darknet reorg_cpu(x, w, h, c, batch, stride, forward = reverse, out)
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2, h2 = i * s + offset % s, j * s + offset // s
                    out_index = w2 + w * s * (h2 + h * s * (c2 + out_c * b))
                    if p.reverse:
                        out[out_index] = src[in_index]
                    else:
                        out[in_index] = src[out_index]
    return out.reshape(top_shape)


def spp(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.spp_param
    check(x.ndim == 4, "SPP needs a 4-D bottom")
    check(p.pyramid_height >= 1, "SPP: pyramid_height must be at least 1")
    check(p.pool != caffe_pb2.SPPParameter.STOCHASTIC, "STOCHASTIC pooling is not modelled")
    h, w = x.shape[2:]
    flat = []
    for level in range(p.pyramid_height):
        bins = 2**level
        pool = caffe_pb2.LayerParameter(name=f"{layer.name}/{level}", type="Pooling")
        pp = pool.pooling_param
        is_max = p.pool == caffe_pb2.SPPParameter.MAX
        pp.pool = caffe_pb2.PoolingParameter.MAX if is_max else caffe_pb2.PoolingParameter.AVE
        kernel_h, kernel_w = math.ceil(h / bins), math.ceil(w / bins)
        pp.kernel_h, pp.kernel_w = kernel_h, kernel_w
        pp.stride_h, pp.stride_w = kernel_h, kernel_w
        pp.pad_h, pp.pad_w = (kernel_h * bins - h + 1) // 2, (kernel_w * bins - w + 1) // 2
        pooled = pooling(x, pool)
        if p.pyramid_height == 1:
            return pooled
        flat.append(pooled.reshape(x.shape[0], -1))
    return np.concatenate(flat, axis=1)


def im2col(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    check(x.ndim == 4, "Im2col is modelled for 4-D bottoms")
    g = conv_geometry(layer.convolution_param)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["kernel"], g["stride"], g["pad"], g["dilation"]
    n, c, h, w = x.shape
    out_h = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    check(out_h > 0 and out_w > 0, "Im2col output would be empty")
    top = np.zeros((n, c * kh * kw, out_h, out_w))
    for ch in range(c):  # im2col_cpu: channel_col = (c * kh + i) * kw + j
        for i in range(kh):
            for j in range(kw):
                for oy in range(out_h):
                    row = -ph + i * dh + oy * sh
                    if not 0 <= row < h:
                        continue
                    for ox in range(out_w):
                        col = -pw + j * dw + ox * sw
                        if 0 <= col < w:
                            top[:, (ch * kh + i) * kw + j, oy, ox] = x[:, ch, row, col]
    return top


FORK_TYPES = frozenset(
    {"Axpy", "ConvolutionDepthwise", "DepthwiseConvolution", "ShuffleChannel", "Reorg", "SPP", "Im2col"}
)


def fork_layer(layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray], blobs: Blobs) -> np.ndarray:
    t = layer.type
    check(len(layer.top) == 1 and (t == "Axpy" or len(bottoms) == 1), f"{t}: wrong number of bottoms/tops")
    if t == "Axpy":
        return axpy(bottoms, layer)
    if t == "ConvolutionDepthwise":
        return convolution_depthwise(bottoms[0], layer, blobs)
    if t == "DepthwiseConvolution":
        return convolution(bottoms[0], layer, blobs)
    if t == "ShuffleChannel":
        return shuffle_channel(bottoms[0], layer)
    if t == "Reorg":
        return reorg(bottoms[0], layer)
    if t == "SPP":
        return spp(bottoms[0], layer)
    return im2col(bottoms[0], layer)


# ------------------------------------------------------------------------------------ simple fork layers
# ReLU6/HardSwish/HardSigmoid from brocolli-caffe, Clip/Swish/Reduction/Tile/MVN/Embed/Parameter/
# BatchReindex/Filter/Silence from BVLC master (same code in the forks), Mish as the forks define it.

SIMPLE_NEURON_TYPES = frozenset({"ReLU6", "HardSwish", "HardSigmoid", "Clip", "Swish", "Mish"})
SIMPLE_FORK_TYPES = SIMPLE_NEURON_TYPES | {
    "Reduction", "Tile", "Silence", "MVN", "Embed", "Parameter", "BatchReindex", "Filter",
}  # fmt: skip


def simple_fork_neuron(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    t = layer.type
    xd = x.astype(np.float64)
    if t == "ReLU6":
        p = layer.relu6_param
        return np.minimum(np.maximum(xd, 0) + p.negative_slope * np.minimum(xd, 0), p.threshold)
    if t == "HardSwish":
        return xd * np.minimum(1.0, np.maximum(0.0, xd / 6 + 0.5))
    if t == "HardSigmoid":
        p = layer.hardsigmoid_param
        return np.minimum(1.0, np.maximum(0.0, p.alpha * xd + p.beta))
    if t == "Clip":
        p = layer.clip_param
        check(p.HasField("min") and p.HasField("max"), "Clip needs min and max")
        return np.maximum(p.min, np.minimum(xd, p.max))
    if t == "Swish":
        return xd * (0.5 * np.tanh(0.5 * layer.swish_param.beta * xd) + 0.5)
    if t == "Mish":
        return xd * np.tanh(np.logaddexp(0.0, xd))
    raise ReferenceError(f"not a simple fork neuron layer: {t}")


def reduction(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.reduction_param
    axis = canonical_axis(p.axis, x.ndim)
    rows = x.astype(np.float64).reshape(count(x.shape, 0, axis), -1)
    op = caffe_pb2.ReductionParameter
    if p.operation in (op.SUM, op.MEAN):
        out = rows.sum(axis=1)
    elif p.operation == op.ASUM:
        out = np.abs(rows).sum(axis=1)
    else:
        check(p.operation == op.SUMSQ, "unknown reduction op")
        out = (rows * rows).sum(axis=1)
    coeff = p.coeff / rows.shape[1] if p.operation == op.MEAN else p.coeff
    return (out * coeff).reshape(x.shape[:axis])


def tile(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.tile_param
    axis = canonical_axis(p.axis, x.ndim)
    check(p.HasField("tiles") and p.tiles > 0, "Tile needs a positive tiles")
    reps = [1] * x.ndim
    reps[axis] = p.tiles
    return np.tile(x.astype(np.float64), reps)


def mvn(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    """Caffe's legacy 4-D view (num, channels, height, width): the top is 4-D whatever the bottom."""
    p = layer.mvn_param
    check(1 <= x.ndim <= 4, "MVN uses num()/channels(): at most 4 axes")
    y = x.astype(np.float64).reshape(tuple(x.shape) + (1,) * (4 - x.ndim))
    axes = (1, 2, 3) if p.across_channels else (2, 3)
    y = y - y.mean(axis=axes, keepdims=True)
    if p.normalize_variance:
        y = y / (np.sqrt((y * y).mean(axis=axes, keepdims=True)) + p.eps)  # eps on the std
    return y


def embed(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.embed_param
    check(p.num_output > 0 and p.input_dim > 0, "Embed needs num_output and input_dim")
    index = np.trunc(x.astype(np.float64)).astype(np.int64)  # static_cast<int>
    # Caffe only DCHECKs the range: a release build reads outside the weights.
    check(bool(np.all((index >= 0) & (index < p.input_dim))), "Embed index out of range")
    weight = np.asarray(blobs[0], np.float64).reshape(p.input_dim, p.num_output)
    out = weight[index]
    if p.bias_term:
        out = out + np.asarray(blobs[1], np.float64).reshape(p.num_output)
    return out


def batch_reindex(bottoms: list[np.ndarray]) -> np.ndarray:
    x, order = bottoms
    check(order.ndim == 1, "BatchReindex: the permutation must be 1-D")
    check(bool(np.all((order >= 0) & (order < x.shape[0]))), "BatchReindex index out of range")
    return x.astype(np.float64)[order.astype(np.int64)]


def filter_layer(bottoms: list[np.ndarray], ntop: int) -> list[np.ndarray]:
    *data, selector = bottoms
    check(ntop == len(data), "Filter: one top per bottom but the selector")
    check(all(d == 1 for d in selector.shape[1:]), "Filter: selector axes after the first must be 1")
    check(all(b.shape[0] == selector.shape[0] for b in data), "Filter: bottoms differ on axis 0")
    keep = selector.reshape(-1) != 0  # NaN counts as non-zero, as in C++
    return [b.astype(np.float64)[keep] for b in data]


def simple_fork_layer(
    layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray], blobs: Blobs
) -> list[np.ndarray]:
    t = layer.type
    if t in SIMPLE_NEURON_TYPES:
        return [simple_fork_neuron(bottoms[0], layer)]
    if t == "Reduction":
        return [reduction(bottoms[0], layer)]
    if t == "Tile":
        return [tile(bottoms[0], layer)]
    if t == "Silence":
        check(len(layer.top) == 0, "Silence has no tops")
        return []
    if t == "MVN":
        return [mvn(bottoms[0], layer)]
    if t == "Embed":
        return [embed(bottoms[0], layer, blobs)]
    if t == "Parameter":
        check(not bottoms, "Parameter takes no bottom")
        shape = tuple(int(d) for d in layer.parameter_param.shape.dim)
        return [np.asarray(blobs[0], np.float64).reshape(shape)]
    if t == "BatchReindex":
        return [batch_reindex(bottoms)]
    check(t == "Filter", f"not a simple fork layer: {t}")
    return filter_layer(bottoms, len(layer.top))


# ------------------------------------------------------------- segmentation / resampling fork layers
# Transcribed from the forks' C++ loops: brocolli-caffe 9.0.2 (MaxUnPool, Upsample, Pad, PixelShuffle,
# Resize, BilinearInterpolate, BN with 2-D blobs), alexgkendall/caffe-segnet (two-bottom Upsample, BN
# with 2 blobs), hszhao/PSPNet (Interp = caffe_cpu_interp2, BN with 4-D blobs).

RESAMPLE_TYPES = frozenset(
    {"MaxUnPool", "Upsample", "BN", "Interp", "Pad", "PixelShuffle", "Resize", "BilinearInterpolate"}
)


def mask_unpool(x: np.ndarray, mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """plane.flat[int(mask[i])] = x[i] for i in increasing order (later writes win)."""
    n, c = x.shape[:2]
    values, index = x.reshape(n, c, -1), mask.reshape(n, c, -1).astype(np.int64)
    check(bool((index >= 0).all() and (index < out_h * out_w).all()), "unpool index out of range")
    out = np.zeros((n, c, out_h * out_w), np.float64)
    nn, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    for i in range(values.shape[2]):
        out[nn, cc, index[:, :, i]] = values[:, :, i]
    return out.reshape(n, c, out_h, out_w)


def upsample(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.upsample_param
    x = bottoms[0]
    if len(bottoms) == 1:  # brocolli-caffe / YOLO: nearest, out[h, w] = in[h / scale, w / scale]
        scale = p.scale if p.HasField("scale") else 1
        axes = (2, 3) if p.dims_num == 4 else (x.ndim - 1,)
        check(x.ndim == p.dims_num, "Upsample: dims_num must match the bottom's rank")
        for axis in axes:
            x = np.repeat(x, scale, axis=axis)
        return x.astype(np.float64)
    if p.HasField("upsample_h") and p.HasField("upsample_w"):  # caffe-segnet
        out_h, out_w = p.upsample_h, p.upsample_w
        check(out_h > 1 and out_w > 1, "Upsample: upsample_h/upsample_w must exceed 1 (CHECK_GT)")
    else:
        sh, sw = (
            (p.scale_h, p.scale_w)
            if p.HasField("scale_h")
            else ((p.scale if p.HasField("scale") else 2),) * 2
        )
        check(sh > 1 and sw > 1, "Upsample: scale must exceed 1 (CHECK_GT)")
        check((not p.pad_out_h or sh == 2) and (not p.pad_out_w or sw == 2), "pad_out needs scale 2")
        out_h = x.shape[2] * sh - int(p.pad_out_h)
        out_w = x.shape[3] * sw - int(p.pad_out_w)
    return mask_unpool(x, bottoms[1], out_h, out_w)


def bn_fork(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.bn_param
    c = x.shape[1]

    def per_channel(blob: np.ndarray) -> np.ndarray:
        return np.asarray(blob, np.float64).reshape(1, c, 1, 1)

    x64 = x.astype(np.float64)
    if len(blobs) == 2:  # caffe-segnet: scale, shift
        scale, shift = (per_channel(b) for b in blobs)
        if p.bn_mode == caffe_pb2.BNParameter.INFERENCE:
            return x64 * scale + shift
        mean = x64.mean(axis=(0, 2, 3), keepdims=True)
        var = (x64**2).mean(axis=(0, 2, 3), keepdims=True) - mean**2
        return (x64 - mean) / np.sqrt(var + 1e-9) * scale + shift
    check(len(blobs) == 4, "BN: 2 or 4 blobs")
    slope, bias, mean, last = (per_channel(b) for b in blobs)
    # PSPNet's 4-D blobs hold the running variance, brocolli-caffe's (1, C) ones the inverse std (no eps).
    stores_inverse_std = np.asarray(blobs[0]).ndim != 4
    inv_std = last if stores_inverse_std else (last + np.float64(np.float32(p.eps))) ** -0.5
    return (x64 - mean) * inv_std * slope + bias


def interp(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.interp_param
    check(p.pad_beg <= 0 and p.pad_end <= 0, "Interp: only cropping pads")
    n, c, h, w = x.shape
    h1, w1 = h + p.pad_beg + p.pad_end, w + p.pad_beg + p.pad_end
    if p.HasField("shrink_factor") and not p.HasField("zoom_factor"):
        h2, w2 = (h1 - 1) // p.shrink_factor + 1, (w1 - 1) // p.shrink_factor + 1
    elif p.HasField("zoom_factor") and not p.HasField("shrink_factor"):
        h2, w2 = h1 + (h1 - 1) * (p.zoom_factor - 1), w1 + (w1 - 1) * (p.zoom_factor - 1)
    elif p.HasField("height") and p.HasField("width"):
        h2, w2 = p.height, p.width
    else:
        h2, w2 = (h1 - 1) // p.shrink_factor + 1, (w1 - 1) // p.shrink_factor + 1
        h2, w2 = h2 + (h2 - 1) * (p.zoom_factor - 1), w2 + (w2 - 1) * (p.zoom_factor - 1)
    src = x[:, :, -p.pad_beg : -p.pad_beg + h1, -p.pad_beg : -p.pad_beg + w1].astype(np.float64)
    if (h1, w1) == (h2, w2):
        return src
    rh = np.float32(h1 - 1) / np.float32(h2 - 1) if h2 > 1 else np.float32(0)
    rw = np.float32(w1 - 1) / np.float32(w2 - 1) if w2 > 1 else np.float32(0)
    out = np.zeros((n, c, h2, w2))
    for y2 in range(h2):
        y1r = np.float32(rh * np.float32(y2))
        y1 = int(y1r)
        y1p = 1 if y1 < h1 - 1 else 0
        ly1 = float(np.float32(y1r - y1))
        for x2 in range(w2):
            x1r = np.float32(rw * np.float32(x2))
            x1 = int(x1r)
            x1p = 1 if x1 < w1 - 1 else 0
            lx1 = float(np.float32(x1r - x1))
            top = (1 - lx1) * src[:, :, y1, x1] + lx1 * src[:, :, y1, x1 + x1p]
            bottom = (1 - lx1) * src[:, :, y1 + y1p, x1] + lx1 * src[:, :, y1 + y1p, x1 + x1p]
            out[:, :, y2, x2] = (1 - ly1) * top + ly1 * bottom
    return out


def pad_fork(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.pad_param
    u, d, left, r = p.pad_u, p.pad_d, p.pad_l, p.pad_r
    h, w = x.shape[2:]
    if u < 0 and d < 0 and left < 0 and r < 0:
        return x[:, :, -u : h + d, -left : w + r].astype(np.float64)
    check(min(u, d, left, r) >= 0, "Pad: mixed-sign pads write outside the top")
    widths = ((0, 0), (0, 0), (u, d), (left, r))
    if p.pad_type == caffe_pb2.PadParameter.CONSTANT:
        return np.pad(x.astype(np.float64), widths, constant_values=np.float32(p.pad_value))
    if p.pad_type == caffe_pb2.PadParameter.REPLICATE:
        return np.pad(x.astype(np.float64), widths, mode="edge")
    check(max(u, d) < h and max(left, r) < w, "Pad REFLECT: pads must be smaller than the input")
    return np.pad(x.astype(np.float64), widths, mode="reflect")


def pixel_shuffle(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    r = layer.pixelshuffle_param.upscale_factor
    n, c, h, w = x.shape
    check(c % r == 0, "PixelShuffle: channels % r")
    out = np.zeros((n, c // (r * r), h * r, w * r))
    for p in range(c // (r * r)):
        for sh in range(r):
            for sw in range(r):
                out[:, p, sh::r, sw::r] = x[:, p * r * r + sh * r + sw]
    return out


def resize_fork(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    """util_img BiLinearResizeMat_cpu: float32 coordinates, +1 neighbours dropped past the border."""
    p = layer.resize_param
    n, c, h, w = x.shape
    if p.is_pyramid_test:
        dh = int(np.float32(p.out_height_scale) * np.float32(h))
        dw = int(np.float32(p.out_width_scale) * np.float32(w))
    else:
        dh, dw = p.height, p.width
    scale_w, scale_h = np.float32(w) / np.float32(dw), np.float32(h) / np.float32(dh)
    out = np.zeros((n, c, dh, dw))
    x64 = x.astype(np.float64)
    for yd in range(dh):
        fh = np.float32(np.float32(yd) * scale_h)
        ys = int(np.floor(fh))
        fh = np.float32(fh - ys)
        wh0, wh1 = float(abs(np.float32(1) - fh)), float(abs(fh))
        for xd in range(dw):
            fw = np.float32(np.float32(xd) * scale_w)
            xs = int(np.floor(fw))
            fw = np.float32(fw - xs)
            ww0, ww1 = float(abs(np.float32(1) - fw)), float(abs(fw))
            value = wh0 * ww0 * x64[:, :, ys, xs]
            flag = 0
            if xs + 1 < w:
                value = value + wh0 * ww1 * x64[:, :, ys, xs + 1]
                flag += 1
            if ys + 1 < h:
                value = value + wh1 * ww0 * x64[:, :, ys + 1, xs]
                flag += 1
            if flag > 1:
                value = value + wh1 * ww1 * x64[:, :, ys + 1, xs + 1]
            out[:, :, yd, xd] = value
    return out


def bilinear_interpolate(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.bilinear_interpolate_param
    n, c, h, w = x.shape
    if p.HasField("scale_factor"):
        dh = int(np.float32(h) * np.float32(p.scale_factor))
        dw = int(np.float32(w) * np.float32(p.scale_factor))
    else:
        dh = p.dst_h if p.HasField("dst_h") else h
        dw = p.dst_w if p.HasField("dst_w") else w

    def source(d: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(d, dtype=np.float32)
        if p.align_corners:
            coord = np.float32(s - 1) / np.float32(d - 1) * pos
        else:
            coord = np.float32(s) / np.float32(d) * (pos + np.float32(0.5)) - np.float32(0.5)
        coord = np.clip(coord, 0, s - 1).astype(np.float32)
        low = np.clip(np.floor(coord).astype(np.int64), 0, s - 2)
        return coord.astype(np.float64), low

    hy, y0 = source(dh, h)
    wx, x0 = source(dw, w)
    x64 = x.astype(np.float64)
    q = lambda ys, xs: x64[:, :, ys][:, :, :, xs]  # noqa: E731
    r0 = (x0 + 1 - wx) * q(y0, x0) + (wx - x0) * q(y0, x0 + 1)
    r1 = (x0 + 1 - wx) * q(y0 + 1, x0) + (wx - x0) * q(y0 + 1, x0 + 1)
    return (y0 + 1 - hy)[:, None] * r0 + (hy - y0)[:, None] * r1


def resample_layer(layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray], blobs: Blobs) -> np.ndarray:
    t = layer.type
    if t == "MaxUnPool":
        p = layer.max_unpool_param
        return mask_unpool(bottoms[0], bottoms[1], p.dst_h, p.dst_w)
    if t == "Upsample":
        return upsample(bottoms, layer)
    if t == "BN":
        return bn_fork(bottoms[0], layer, blobs)
    if t == "Interp":
        return interp(bottoms[0], layer)
    if t == "Pad":
        return pad_fork(bottoms[0], layer)
    if t == "PixelShuffle":
        return pixel_shuffle(bottoms[0], layer)
    if t == "Resize":
        return resize_fork(bottoms[0], layer)
    check(t == "BilinearInterpolate", f"not a resampling layer: {t}")
    return bilinear_interpolate(bottoms[0], layer)



# ------------------------------------------------------------------------------------------- the net


# ------------------------------------------------------------------------------------------ SSD layers
# weiliu89/caffe as brocolli-caffe builds it (the golden_v2 producer): normalize_layer.cpp, permute_layer.cpp,
# prior_box_layer.cpp, detection_output_layer.cpp and util/bbox_util.cpp (DecodeBBox, JaccardOverlap,
# GetMaxScoreIndex, ApplyNMSFast), followed statement by statement in float32 where Caffe uses floats.

SSD_TYPES = frozenset({"Normalize", "Permute", "PriorBox", "DetectionOutput"})


def ssd_normalize(x: np.ndarray, layer: caffe_pb2.LayerParameter, blobs: Blobs) -> np.ndarray:
    p = layer.norm_param
    check(2 <= x.ndim <= 4, "Normalize: Caffe's legacy accessors need 2 to 4 axes")
    x64 = np.asarray(x, dtype=np.float64)
    axes = tuple(range(1, x.ndim)) if p.across_spatial else (1,)
    norm = np.sqrt((x64**2).sum(axis=axes, keepdims=True) + float(np.float32(p.eps)))
    scale = np.asarray(blobs[0], dtype=np.float64).reshape(-1)
    check(scale.size == (1 if p.channel_shared else x.shape[1]), "Normalize: scale size")
    scale = scale.reshape((1, -1) + (1,) * (x.ndim - 2)) if not p.channel_shared else scale[0]
    return x64 / norm * scale


def ssd_permute(x: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    order = [int(a) for a in layer.permute_param.order]
    check(all(a < x.ndim for a in order), "Permute: order should be less than the input dimension")
    check(len(set(order)) == len(order), "Permute: there are duplicate orders")
    order += [a for a in range(x.ndim) if a not in order]
    return np.ascontiguousarray(np.transpose(x, order))


def _legacy(shape: tuple[int, ...], index: int) -> int:
    check(len(shape) <= 4, "legacy height()/width() need at most 4 axes")
    return shape[index] if index < len(shape) else 1


def ssd_prior_box(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> np.ndarray:
    p = layer.prior_box_param
    f32 = np.float32
    check(len(bottoms) == 2, "PriorBox takes two bottoms")
    check(len(p.min_size) > 0 and all(v > 0 for v in p.min_size), "PriorBox: min_size")
    ratios = [f32(1.0)]
    for ar in p.aspect_ratio:
        ar = f32(ar)
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios.append(ar)
            if p.flip:
                ratios.append(f32(1.0 / float(ar)))
    if p.max_size:
        check(len(p.max_size) == len(p.min_size), "PriorBox: as many max_size as min_size")
        check(all(hi > lo for lo, hi in zip(p.min_size, p.max_size, strict=True)), "PriorBox: max > min")
    variances = list(p.variance) or [0.1]
    check(len(variances) in (1, 4) and all(v > 0 for v in variances), "PriorBox: variance")
    img_h = img_w = 0
    if p.HasField("img_h") or p.HasField("img_w"):
        check(not p.HasField("img_size") and p.img_h > 0 and p.img_w > 0, "PriorBox: img_h/img_w")
        img_h, img_w = p.img_h, p.img_w
    elif p.HasField("img_size"):
        check(p.img_size > 0, "PriorBox: img_size")
        img_h = img_w = p.img_size
    step_h = step_w = 0.0
    if p.HasField("step_h") or p.HasField("step_w"):
        check(not p.HasField("step") and p.step_h > 0 and p.step_w > 0, "PriorBox: step_h/step_w")
        step_h, step_w = p.step_h, p.step_w
    elif p.HasField("step"):
        check(p.step > 0, "PriorBox: step")
        step_h = step_w = p.step
    layer_h, layer_w = _legacy(bottoms[0].shape, 2), _legacy(bottoms[0].shape, 3)
    if img_h == 0 or img_w == 0:
        img_h, img_w = _legacy(bottoms[1].shape, 2), _legacy(bottoms[1].shape, 3)
    if step_h == 0 or step_w == 0:
        step_w, step_h = f32(img_w) / f32(layer_w), f32(img_h) / f32(layer_h)
    step_w, step_h, offset = f32(step_w), f32(step_h), f32(p.offset)
    out: list[float] = []
    for h in range(layer_h):
        for w in range(layer_w):
            center_x, center_y = f32(f32(w) + offset) * step_w, f32(f32(h) + offset) * step_h
            boxes: list[tuple[float, float]] = []
            for s, min_value in enumerate(p.min_size):
                min_size = int(min_value)  # Caffe: `int min_size_ = min_sizes_[s]`
                boxes.append((f32(min_size), f32(min_size)))
                if p.max_size:
                    side = f32(math.sqrt(min_size * int(p.max_size[s])))
                    boxes.append((side, side))
                for ar in ratios:
                    if abs(float(ar) - 1.0) < 1e-6:
                        continue
                    root = f32(math.sqrt(ar))
                    boxes.append((f32(f32(min_size) * root), f32(f32(min_size) / root)))
            for bw, bh in boxes:
                out += [
                    (float(center_x) - float(bw) / 2.0) / img_w,
                    (float(center_y) - float(bh) / 2.0) / img_h,
                    (float(center_x) + float(bw) / 2.0) / img_w,
                    (float(center_y) + float(bh) / 2.0) / img_h,
                ]
    coords = np.array(out, dtype=np.float32)
    if p.clip:
        coords = np.minimum(np.maximum(coords, f32(0)), f32(1))
    var = np.tile(np.array(variances * 4 if len(variances) == 1 else variances, np.float32), coords.size // 4)
    return np.stack([coords, var])[None]


def _bbox_size(b: tuple) -> np.float32:
    if b[2] < b[0] or b[3] < b[1]:
        return np.float32(0)
    return np.float32(np.float32(b[2] - b[0]) * np.float32(b[3] - b[1]))


def _jaccard(a: tuple, b: tuple) -> np.float32:
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return np.float32(0)
    iw = np.float32(min(a[2], b[2]) - max(a[0], b[0]))
    ih = np.float32(min(a[3], b[3]) - max(a[1], b[1]))
    if not (iw > 0 and ih > 0):
        return np.float32(0)
    inter = np.float32(iw * ih)
    return np.float32(inter / np.float32(np.float32(_bbox_size(a) + _bbox_size(b)) - inter))


def _decode(prior: np.ndarray, var: np.ndarray, loc: np.ndarray, code: int, encoded: bool) -> tuple:
    f32 = np.float32
    v = np.ones(4, np.float32) if encoded else var
    if code == 1:  # CORNER
        return tuple(f32(prior[k] + f32(v[k] * loc[k])) for k in range(4))
    pw, ph = f32(prior[2] - prior[0]), f32(prior[3] - prior[1])
    check(pw > 0 and ph > 0, "DetectionOutput: prior width/height must be positive (CHECK_GT)")
    if code == 3:  # CORNER_SIZE
        sizes = (pw, ph, pw, ph)
        return tuple(f32(prior[k] + f32(f32(v[k] * loc[k]) * sizes[k])) for k in range(4))
    check(code == 2, "DetectionOutput: unknown code_type")
    cx = f32(f32(f32(v[0] * loc[0]) * pw) + f32(f32(prior[0] + prior[2]) / f32(2)))
    cy = f32(f32(f32(v[1] * loc[1]) * ph) + f32(f32(prior[1] + prior[3]) / f32(2)))
    with np.errstate(over="ignore"):  # Caffe's float exp overflows to inf
        w = f32(f32(np.exp(np.float64(f32(v[2] * loc[2])))) * pw)
        h = f32(f32(np.exp(np.float64(f32(v[3] * loc[3])))) * ph)
    return (f32(cx - w / 2.0), f32(cy - h / 2.0), f32(cx + w / 2.0), f32(cy + h / 2.0))


def _nms_fast(
    boxes: list, scores: np.ndarray, threshold: float, nms: float, eta: float, top_k: int
) -> list[int]:
    order = [i for i in range(len(scores)) if scores[i] > np.float32(threshold)]
    order.sort(key=lambda i: -float(scores[i]))  # Python's sort is stable, as std::stable_sort
    if -1 < top_k < len(order):
        order = order[:top_k]
    kept: list[int] = []
    adaptive = np.float32(nms)
    for idx in order:
        keep = all(_jaccard(boxes[idx], boxes[k]) <= adaptive for k in kept)
        if keep:
            kept.append(idx)
            if eta < 1 and adaptive > 0.5:
                adaptive = np.float32(adaptive * np.float32(eta))
    return kept


def _libstdcxx_sort(items: list, greater: Callable[[object, object], bool], depth: int | None = None) -> list:
    """std::sort as libstdc++ (GCC >= 4.9) runs it: introsort with median-of-three pivots, stopping at 16
    elements, then insertion sort. Deterministic, but not stable for more than 16 elements; Caffe sorts the
    keep_top_k candidates with it."""
    a = list(items)

    def insert_unguarded(i: int) -> None:
        value, j = a[i], i - 1
        while greater(value, a[j]):
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = value

    def insertion_sort(first: int, last: int) -> None:
        for i in range(first + 1, last):
            if greater(a[i], a[first]):
                value = a[i]
                a[first + 1 : i + 1] = a[first:i]
                a[first] = value
            else:
                insert_unguarded(i)

    def median_to_first(result: int, x: int, y: int, z: int) -> None:
        if greater(a[x], a[y]):
            pick = y if greater(a[y], a[z]) else z if greater(a[x], a[z]) else x
        else:
            pick = x if greater(a[x], a[z]) else z if greater(a[y], a[z]) else y
        a[result], a[pick] = a[pick], a[result]

    def partition(first: int, last: int, pivot: int) -> int:
        while True:
            while greater(a[first], a[pivot]):
                first += 1
            last -= 1
            while greater(a[pivot], a[last]):
                last -= 1
            if not first < last:
                return first
            a[first], a[last] = a[last], a[first]
            first += 1

    def adjust_heap(first: int, hole: int, length: int, value: object) -> None:
        top, child = hole, hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if greater(a[first + child], a[first + child - 1]):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and greater(a[first + parent], value):
            a[first + hole] = a[first + parent]
            hole, parent = parent, (parent - 1) // 2
        a[first + hole] = value

    def heap_sort(first: int, last: int) -> None:  # std::__partial_sort(first, last, last)
        length = last - first
        for parent in range((length - 2) // 2, -1, -1):
            adjust_heap(first, parent, length, a[first + parent])
        while last - first > 1:
            last -= 1
            value, a[last] = a[last], a[first]
            adjust_heap(first, 0, last - first, value)

    def introsort(first: int, last: int, depth: int) -> None:
        while last - first > 16:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            median_to_first(first, first + 1, first + (last - first) // 2, last - 1)
            cut = partition(first + 1, last, first)
            introsort(cut, last, depth)
            last = cut

    if len(a) > 1:
        introsort(0, len(a), 2 * (len(a).bit_length() - 1) if depth is None else depth)
        if len(a) > 16:
            insertion_sort(0, 16)
            for i in range(16, len(a)):
                insert_unguarded(i)
        else:
            insertion_sort(0, len(a))
    return a


def ssd_detection_output(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> np.ndarray:
    """Rows [image, label, score, xmin, ymin, xmax, ymax] in Caffe's order; [1, 1, num, 7] of -1 rows
    (image id first) when nothing is kept in the whole batch."""
    p = layer.detection_output_param
    check(len(bottoms) == 3 and p.HasField("num_classes"), "DetectionOutput: three bottoms and num_classes")
    check(p.HasField("nms_param"), "DetectionOutput without nms_param differs between forks")
    check(p.nms_param.nms_threshold >= 0 and 0 < p.nms_param.eta <= 1, "DetectionOutput: nms_param")
    loc, conf, prior = (np.asarray(b, dtype=np.float32) for b in bottoms)
    num, num_classes = loc.shape[0], p.num_classes
    loc_classes = 1 if p.share_location else num_classes
    background = p.background_label_id
    check(not (p.share_location and background == -1), "label -1 has no decoded boxes: Caffe aborts")
    priors = _legacy(prior.shape, 2) // 4
    check(loc.shape[1] == priors * loc_classes * 4 and conf.shape[1] == priors * num_classes, "shapes")
    flat_prior = prior.reshape(-1)
    prior_boxes = flat_prior[: priors * 4].reshape(priors, 4)
    variances = flat_prior[priors * 4 : priors * 8].reshape(priors, 4)
    threshold = p.confidence_threshold if p.HasField("confidence_threshold") else -FLT_MAX
    top_k = p.nms_param.top_k if p.nms_param.HasField("top_k") else -1
    rows: list[list[float]] = []
    for i in range(num):
        loc_i = loc[i].reshape(priors, loc_classes, 4)
        conf_i = conf[i].reshape(priors, num_classes)
        decoded = {
            c: [_decode(prior_boxes[k], variances[k], loc_i[k, c], p.code_type, p.variance_encoded_in_target)
                for k in range(priors)]
            for c in range(loc_classes) if (-1 if p.share_location else c) != background
        }  # fmt: skip
        indices: dict[int, list[int]] = {}
        for c in range(num_classes):
            if c == background:
                continue
            boxes = decoded[0 if p.share_location else c]
            nms = p.nms_param
            indices[c] = _nms_fast(boxes, conf_i[:, c], threshold, nms.nms_threshold, nms.eta, top_k)
        total = sum(len(v) for v in indices.values())
        if -1 < p.keep_top_k < total:
            pairs = [(conf_i[k, c], c, k) for c in sorted(indices) for k in indices[c]]
            pairs = _libstdcxx_sort(pairs, lambda x, y: bool(x[0] > y[0]))
            indices = {}
            for _, c, k in pairs[: p.keep_top_k]:
                indices.setdefault(c, []).append(k)
        for c in sorted(indices):
            boxes = decoded[0 if p.share_location else c]
            for k in indices[c]:
                rows.append([i, c, float(conf_i[k, c]), *[float(v) for v in boxes[k]]])
    if not rows:
        rows = [[i, -1, -1, -1, -1, -1, -1] for i in range(num)]
    return np.array(rows, dtype=np.float32).reshape(1, 1, -1, 7)


def ssd_layer(layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray], blobs: Blobs) -> np.ndarray:
    t = layer.type
    if t == "Normalize":
        return ssd_normalize(bottoms[0], layer, blobs)
    if t == "Permute":
        return ssd_permute(bottoms[0], layer)
    if t == "PriorBox":
        return ssd_prior_box(bottoms, layer)
    return ssd_detection_output(bottoms, layer)


# ---------------------------------------------------------------- Faster R-CNN / R-FCN (float32 as the C++)

RCNN_TYPES = frozenset({"ROIPooling", "PSROIPooling", "Proposal", "Python"})


def c_round(value: float) -> int:
    """C round(): halves away from zero."""
    magnitude = math.floor(abs(value) + 0.5) if abs(value) % 1 != 0.5 else math.floor(abs(value)) + 1
    return int(magnitude if value >= 0 else -magnitude)


def _clip_range(low: int, high: int, limit: int) -> tuple[int, int]:
    return min(max(low, 0), limit), min(max(high, 0), limit)


def roi_pooling(feature: np.ndarray, rois: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    """rbgirshick/caffe-fast-rcnn ROIPoolingLayer::Forward_cpu."""
    p = layer.roi_pooling_param
    ph_count, pw_count, scale = int(p.pooled_h), int(p.pooled_w), np.float32(p.spatial_scale)
    check(ph_count > 0 and pw_count > 0, "pooled_h and pooled_w must be > 0")
    rois = rois.reshape(-1, 5).astype(np.float32)
    _, channels, height, width = feature.shape
    out = np.zeros((len(rois), channels, ph_count, pw_count), np.float32)
    for r, roi in enumerate(rois):
        image = int(roi[0])
        check(0 <= image < feature.shape[0], "roi batch index out of range")
        sw, sh, ew, eh = (c_round(float(np.float32(v * scale))) for v in roi[1:])
        bin_h = np.float32(max(eh - sh + 1, 1)) / np.float32(ph_count)
        bin_w = np.float32(max(ew - sw + 1, 1)) / np.float32(pw_count)
        for ph in range(ph_count):
            hs, he = _clip_range(
                int(np.floor(np.float32(ph) * bin_h)) + sh, int(np.ceil(np.float32(ph + 1) * bin_h)) + sh, height
            )
            for pw in range(pw_count):
                ws, we = _clip_range(
                    int(np.floor(np.float32(pw) * bin_w)) + sw, int(np.ceil(np.float32(pw + 1) * bin_w)) + sw, width
                )
                if he > hs and we > ws:
                    window = feature[image, :, hs:he, ws:we].reshape(channels, -1)
                    out[r, :, ph, pw] = np.maximum(window.max(axis=1), -FLT_MAX)
    return out


def psroi_pooling(feature: np.ndarray, rois: np.ndarray, layer: caffe_pb2.LayerParameter) -> np.ndarray:
    """daijifeng001/caffe-rfcn PSROIPoolingForward (CPU arithmetic, float32)."""
    p = layer.psroi_pooling_param
    dim, group, scale = int(p.output_dim), int(p.group_size), np.float32(p.spatial_scale)
    _, channels, height, width = feature.shape
    check(channels == dim * group * group, "input channel number does not match layer parameters")
    f32 = np.float32
    rois = rois.reshape(-1, 5).astype(f32)
    out = np.zeros((len(rois), dim, group, group), f32)
    for r, roi in enumerate(rois):
        image = int(roi[0])
        sw, sh = f32(c_round(float(roi[1]))) * scale, f32(c_round(float(roi[2]))) * scale
        ew, eh = f32(c_round(float(roi[3])) + 1.0) * scale, f32(c_round(float(roi[4])) + 1.0) * scale
        bin_w, bin_h = max(ew - sw, f32(0.1)) / f32(group), max(eh - sh, f32(0.1)) / f32(group)
        for ph in range(group):
            hs, he = _clip_range(
                int(np.floor(f32(ph) * bin_h + sh)), int(np.ceil(f32(ph + 1) * bin_h + sh)), height
            )
            for pw in range(group):
                ws, we = _clip_range(
                    int(np.floor(f32(pw) * bin_w + sw)), int(np.ceil(f32(pw + 1) * bin_w + sw)), width
                )
                if he <= hs or we <= ws:
                    continue
                channel = np.arange(dim) * group * group + ph * group + pw
                window = feature[image, channel, hs:he, ws:we].astype(np.float64)
                out[r, :, ph, pw] = window.sum(axis=(1, 2)) / ((he - hs) * (we - ws))
    return out


def _rpn_boxes(
    scores: np.ndarray, deltas: np.ndarray, info: np.ndarray, anchors: np.ndarray, stride: int, item: int
) -> tuple[np.ndarray, np.ndarray]:
    """(x1, y1, x2, y2) of every (h, w, anchor) proposal of one item, clipped to im_info's first row, and
    their foreground scores; float32 as bbox_transform_inv / transform_box."""
    f32 = np.float32
    count = len(anchors)
    height, width = scores.shape[2:]
    img_h, img_w = f32(info.reshape(-1)[0]), f32(info.reshape(-1)[1])
    boxes, fg = [], []
    for h in range(height):
        for w in range(width):
            for k in range(count):
                x1, y1, x2, y2 = (anchors[k] + f32([w * stride, h * stride, w * stride, h * stride])).astype(f32)
                dx, dy, dw, dh = deltas[item, 4 * k : 4 * k + 4, h, w]
                bw, bh = (x2 - x1) + f32(1), (y2 - y1) + f32(1)
                cx, cy = x1 + f32(0.5) * bw, y1 + f32(0.5) * bh
                pcx, pcy = dx * bw + cx, dy * bh + cy
                pw, ph = np.exp(dw) * bw, np.exp(dh) * bh
                box = [pcx - f32(0.5) * pw, pcy - f32(0.5) * ph, pcx + f32(0.5) * pw, pcy + f32(0.5) * ph]
                limits = [img_w - f32(1), img_h - f32(1)] * 2
                boxes.append([max(f32(0), min(v, lim)) for v, lim in zip(box, limits, strict=True)])
                fg.append(scores[item, count + k, h, w])
    return np.asarray(boxes, f32), np.asarray(fg, f32)


def _caffe_proposal_anchors(p: caffe_pb2.ProposalParameter) -> np.ndarray:
    f32, base = np.float32, int(p.base_size)
    area, center = f32(base * base), f32(0.5) * (f32(base) - f32(1))
    rows = []
    for ratio in map(f32, p.ratio):
        rw = f32(math.sqrt(float(area / ratio)))
        rh = f32(rw * ratio)
        for scale in map(f32, p.scale):
            hw = f32(0.5) * f32(int(float(f32(rw * scale)) / base - 1.0 + 0.5))
            hh = f32(0.5) * f32(int(float(f32(rh * scale)) / base - 1.0 + 0.5))
            rows.append([center - hw, center - hh, center + hw, center + hh])
    return np.asarray(rows, f32)


def caffe_sort_box(rows: np.ndarray, num_top: int) -> None:
    """brocolli-caffe's sort_box (descending on column 4, in place), with an explicit stack."""
    stack = [(0, len(rows) - 1)]
    while stack:
        start, end = stack.pop()
        pivot = rows[start, 4]
        left, right = start + 1, end
        while left <= right:
            while left <= end and rows[left, 4] >= pivot:
                left += 1
            while right > start and rows[right, 4] <= pivot:
                right -= 1
            if left <= right:
                rows[[left, right]] = rows[[right, left]]
                left, right = left + 1, right - 1
        if right > start:
            rows[[start, right]] = rows[[right, start]]
        if start < right - 1:
            stack.append((start, right - 1))
        if right + 1 < num_top and right + 1 < end:
            stack.append((right + 1, end))


def _iou_row(a: np.ndarray, rows: np.ndarray, disjoint_is_zero: bool) -> np.ndarray:
    """IoU of box a with every row, float32 in the C++ order ((w + 1) areas, inter / (A + B - inter))."""
    f32 = np.float32
    x1, y1, x2, y2 = (rows[:, i] for i in range(4))
    w = np.maximum(f32(0), (np.minimum(a[2], x2) - np.maximum(a[0], x1)) + f32(1))
    h = np.maximum(f32(0), (np.minimum(a[3], y2) - np.maximum(a[1], y1)) + f32(1))
    inter = w * h
    area_a = ((a[2] - a[0]) + f32(1)) * ((a[3] - a[1]) + f32(1))
    area_b = ((x2 - x1) + f32(1)) * ((y2 - y1) + f32(1))
    iou = inter / ((area_a + area_b) - inter)
    if disjoint_is_zero:
        iou[(a[0] > x2) | (a[1] > y2) | (a[2] < x1) | (a[3] < y1)] = f32(0)
    return iou


def greedy_nms(rows: np.ndarray, threshold: float, limit: int, disjoint_is_zero: bool) -> list[int]:
    rows = rows.astype(np.float32)
    dead = np.zeros(len(rows), bool)
    keep: list[int] = []
    for i in range(len(rows)):
        if dead[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        later = _iou_row(rows[i], rows[i + 1 :], disjoint_is_zero) > np.float32(threshold)
        dead[i + 1 :] |= later
    return keep


def caffe_proposal(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> list[np.ndarray]:
    """brocolli-caffe ProposalLayer::Forward_cpu (small boxes scored 0, im_info of item 0 for all)."""
    p = layer.proposal_param
    anchors = _caffe_proposal_anchors(p)
    rois, scores = [], []
    for item in range(bottoms[0].shape[0]):
        boxes, fg = _rpn_boxes(bottoms[0], bottoms[1], bottoms[2], anchors, int(p.feat_stride), item)
        sizes = boxes[:, 2:] - boxes[:, :2] + np.float32(1)
        large = (sizes >= np.float32(int(p.min_size))).all(axis=1)
        rows = np.concatenate([boxes, (large.astype(np.float32) * fg)[:, None]], axis=1)
        caffe_sort_box(rows, int(p.pre_nms_topn))
        head = rows[: min(len(rows), int(p.pre_nms_topn))]
        for i in greedy_nms(head, float(np.float32(p.nms_thresh)), int(p.post_nms_topn), True):
            rois.append([item, *head[i, :4]])
            scores.append(head[i, 4])
    return [np.asarray(rois, np.float32).reshape(-1, 5), np.asarray(scores, np.float32)][: len(layer.top)]


def _py_anchors(base: int, ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """py-faster-rcnn generate_anchors."""
    w = h = float(base)
    ctr = 0.5 * (base - 1)
    rows = []
    for ratio in ratios:
        ws = np.round(np.sqrt(w * h / ratio))
        hs = np.round(ws * ratio)
        for scale in scales:
            sw, sh = ws * scale, hs * scale
            rows.append([ctr - 0.5 * (sw - 1), ctr - 0.5 * (sh - 1), ctr + 0.5 * (sw - 1), ctr + 0.5 * (sh - 1)])
    return np.asarray(rows, np.float32)


def python_proposal(bottoms: list[np.ndarray], layer: caffe_pb2.LayerParameter) -> list[np.ndarray]:
    """py-faster-rcnn lib/rpn/proposal_layer.py at TEST (cfg defaults 6000 / 300 / 0.7 / 16, GPU NMS
    semantics: IoU > threshold), ties in score: lower (h, w, anchor) index first."""
    p = layer.python_param
    check((p.module, p.layer) == ("rpn.proposal_layer", "ProposalLayer"), "only the RPN proposal layer")
    text = p.param_str.replace("!!python/tuple", "")
    params: dict = {}
    for line in (line.strip() for line in text.splitlines()):
        if line:  # a YAML flow mapping or one "key: value" line; the tests' own prototxts
            params.update(eval(line if line.startswith("{") else "{" + line + "}", {}))
    check(bottoms[0].shape[0] == 1, "Only single item batches are supported")
    anchors = _py_anchors(params.get("base_size", 16), params.get("ratios", (0.5, 1, 2)), params.get("scales", (8, 16, 32)))
    boxes, fg = _rpn_boxes(bottoms[0], bottoms[1], bottoms[2], anchors, params["feat_stride"], 0)
    sizes = boxes[:, 2:] - boxes[:, :2] + np.float32(1)
    keep = (sizes >= np.float32(16) * np.float32(bottoms[2].reshape(-1)[2])).all(axis=1)
    boxes, fg = boxes[keep], fg[keep]
    order = np.argsort(-fg, kind="stable")[:6000]
    rows = np.concatenate([boxes[order], fg[order][:, None]], axis=1)
    kept = greedy_nms(rows, float(np.float32(0.7)), 300, False)
    rois = np.concatenate([np.zeros((len(kept), 1), np.float32), rows[kept, :4]], axis=1)
    return [rois.reshape(-1, 5), rows[kept, 4].reshape(-1, 1)][: len(layer.top)]


def rcnn_layer(layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray]) -> list[np.ndarray]:
    t = layer.type
    if t == "ROIPooling":
        return [roi_pooling(bottoms[0], bottoms[1], layer)]
    if t == "PSROIPooling":
        return [psroi_pooling(bottoms[0], bottoms[1], layer)]
    if t == "Proposal":
        return caffe_proposal(bottoms, layer)
    return python_proposal(bottoms, layer)


def run_layer(layer: caffe_pb2.LayerParameter, bottoms: list[np.ndarray], blobs: Blobs) -> list[np.ndarray]:
    """One layer's forward; returns float64 (or float32) arrays, one per top."""
    t = layer.type
    ntop = len(layer.top)
    if t in NEURON_TYPES:
        check(len(bottoms) == 1 and ntop == 1, f"{t} takes one bottom and one top")
        return [neuron(bottoms[0], layer, blobs)]
    if t == "Convolution":
        return [convolution(bottoms[0], layer, blobs)]
    if t == "Deconvolution":
        return [deconvolution(bottoms[0], layer, blobs)]
    if t == "InnerProduct":
        return [inner_product(bottoms[0], layer, blobs)]
    if t == "Pooling":
        if ntop == 2:
            check(layer.pooling_param.pool == caffe_pb2.PoolingParameter.MAX, "mask top: MAX pooling only")
            return list(max_pooling_with_mask(bottoms[0], layer))
        return [pooling(bottoms[0], layer)]
    if t == "LRN":
        return [lrn(bottoms[0], layer)]
    if t == "BatchNorm":
        return [batch_norm(bottoms[0], layer, blobs)]
    if t == "Scale":
        return [scale_layer(bottoms, layer, blobs)]
    if t == "Bias":
        return [bias_layer(bottoms, layer, blobs)]
    if t == "Softmax":
        return [softmax(bottoms[0], layer)]
    if t == "Eltwise":
        return [eltwise(bottoms, layer)]
    if t == "Concat":
        return [concat(bottoms, layer)]
    if t == "Slice":
        return slice_layer(bottoms[0], layer, ntop)
    if t == "Split":
        return [bottoms[0].copy() for _ in range(ntop)]
    if t == "Flatten":
        return [flatten(bottoms[0], layer)]
    if t == "Reshape":
        return [reshape(bottoms[0], layer)]
    if t == "Crop":
        check(len(bottoms) == 2, "Crop takes two bottoms")
        return [crop(bottoms, layer)]
    if t == "ArgMax":
        return [argmax(bottoms[0], layer)]
    if t in FORK_TYPES:
        return [fork_layer(layer, bottoms, blobs)]
    if t in SIMPLE_FORK_TYPES:
        return simple_fork_layer(layer, bottoms, blobs)
    if t in RESAMPLE_TYPES:
        return [resample_layer(layer, bottoms, blobs)]
    if t in SSD_TYPES:
        return [ssd_layer(layer, bottoms, blobs)]
    if t in RCNN_TYPES:
        return rcnn_layer(layer, bottoms)
    raise ReferenceError(f"layer type {t} is not modelled by the reference")


INPLACE_SAFE_TYPES = NEURON_TYPES | {"BatchNorm", "Scale", "Bias", "Softmax", "Flatten", "Reshape"}
INPLACE_SAFE_TYPES |= SIMPLE_NEURON_TYPES | {"MVN"}  # MVN takes its statistics before writing
INPLACE_SAFE_TYPES |= {"BN"}  # per channel; SegNet's LEARN mode takes its statistics first


def shares_data(layer: caffe_pb2.LayerParameter) -> bool:
    """Layers whose tops are views of the bottom's memory (Blob::ShareData), not copies: Split, Flatten,
    Reshape, and Concat with one bottom / Slice with one top. A later in-place write to either blob
    changes both, as it does in Caffe."""
    t = layer.type
    return (
        t in ("Split", "Flatten", "Reshape")
        or (t == "Concat" and len(layer.bottom) == 1)
        or (t == "Slice" and len(layer.top) == 1)
    )


def run_net(
    net: caffe_pb2.NetParameter,
    inputs: dict[str, np.ndarray],
    weight_source: WeightSource,
    observer: Callable[[caffe_pb2.LayerParameter, list[np.ndarray], list[np.ndarray]], None] | None = None,
    dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    """Caffe's Net::Forward. Blobs are numpy buffers: an in-place layer (top i == bottom i) writes into
    its bottom's buffer, a data-sharing layer's top is a view of its bottom, so every alias of a buffer
    reads the last value written to it, exactly as Caffe's net.blobs do. `dtype=np.float64` keeps blobs
    in float64 (finite differences of gradients)."""
    check(not net.layers, "V1 `layers {}` nets are not modelled by the reference")
    declared = declared_inputs(net)
    state: dict[str, np.ndarray] = {}
    for name in declared:
        check(name in inputs, f"no value for input blob {name}")
        state[name] = np.array(inputs[name], dtype=dtype, copy=True)
    for layer in net.layer:
        if not layer_in_phase(layer) or layer.type == "Input":
            continue
        for b in layer.bottom:
            check(b in state, f"layer {layer.name}: unknown bottom blob {b}")
        bottoms = [state[b] for b in layer.bottom]
        blobs = weight_source(layer, bottoms)
        # fresh float32 buffers: a layer function may return a view of its bottom (Slice, Crop)
        tops = [np.array(t, dtype=dtype, copy=True, order="C") for t in run_layer(layer, bottoms, blobs)]
        check(len(tops) == len(layer.top), f"layer {layer.name}: wrong number of tops")
        if observer is not None:
            observer(layer, bottoms, tops)
        sharing = shares_data(layer)
        for i, (name, value) in enumerate(zip(layer.top, tops, strict=True)):
            in_place = i < len(layer.bottom) and layer.bottom[i] == name
            check(in_place or name not in state, f"top blob {name!r} produced by multiple sources")
            if sharing:
                check(not (in_place and layer.type == "Split"), "Split does not allow in-place computation")
                view = bottoms[0].reshape(value.shape)
                check(
                    view.size == 0 or np.shares_memory(view, bottoms[0]),  # an empty blob shares no bytes
                    "internal: a data-sharing top must be a view",
                )
                state[name] = view
            elif in_place:
                check(layer.type in INPLACE_SAFE_TYPES, f"in-place {layer.type} is ill-defined in Caffe")
                check(value.shape == state[name].shape, f"in-place {layer.type} changes the shape")
                state[name][...] = value
            else:
                state[name] = value
    return {name: np.array(value, copy=True) for name, value in state.items()}


def forward(
    net_param_text: str,
    weights: dict[str, list[np.ndarray]],
    inputs: dict[str, np.ndarray],
    dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    """Every blob after Caffe's TEST-phase forward (an in-place blob holds its last writer's value), stored
    as `dtype`."""
    net = parse_net(net_param_text)

    def from_dict(layer: caffe_pb2.LayerParameter, _bottoms: list[np.ndarray]) -> Blobs:
        return [np.asarray(b) for b in weights.get(layer.name, [])]

    return run_net(net, inputs, from_dict, dtype=dtype)
