"""Convolution, Deconvolution, Pooling and InnerProduct."""

from __future__ import annotations

import math

import numpy as np

from camcaffe.convert.axes import canonical_axis, product, spatial_values
from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter


def _optional(param, field: str) -> int | None:
    return int(getattr(param, field)) if param.HasField(field) else None


def _conv_geometry(ctx: LayerContext) -> tuple[list[int], list[int], list[int], list[int]]:
    param = ctx.layer.convolution_param
    rank = len(ctx.shape)
    if canonical_axis(param.axis, rank, "convolution_param.axis") != 1:
        raise LayerRefused("convolution_param.axis other than 1 is not supported")
    num_spatial = rank - 2
    if num_spatial < 1:
        raise LayerRefused(f"needs a blob with spatial axes, got shape {tuple(ctx.shape)}")
    kernel = spatial_values(
        param.kernel_size,
        _optional(param, "kernel_h"),
        _optional(param, "kernel_w"),
        num_spatial,
        None,
        "kernel_size",
    )
    stride = spatial_values(
        param.stride, _optional(param, "stride_h"), _optional(param, "stride_w"), num_spatial, 1, "stride"
    )
    pad = spatial_values(
        param.pad, _optional(param, "pad_h"), _optional(param, "pad_w"), num_spatial, 0, "pad"
    )
    dilation = spatial_values(param.dilation, None, None, num_spatial, 1, "dilation")
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
        raise LayerRefused(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    return kernel, stride, pad, dilation


def _conv_counts(ctx: LayerContext) -> tuple[int, int, int]:
    param = ctx.layer.convolution_param
    channels = ctx.shape[1]
    num_output = int(param.num_output)
    group = int(param.group)
    if num_output <= 0:
        raise LayerRefused("convolution_param.num_output must be set and positive")
    if group <= 0 or channels % group or num_output % group:
        raise LayerRefused(
            f"group {group} must divide both the input channels ({channels}) and num_output ({num_output})"
        )
    return channels, num_output, group


@converter("Convolution")
def convolution(ctx: LayerContext) -> list[Shape]:
    kernel, stride, pad, dilation = _conv_geometry(ctx)
    channels, num_output, group = _conv_counts(ctx)
    bias_term = ctx.layer.convolution_param.bias_term
    expected = [(num_output, channels // group, *kernel)] + ([(num_output,)] if bias_term else [])
    blobs = ctx.params(expected)
    return emit_conv(ctx, blobs, kernel, stride, pad, dilation, group, num_output)


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def emit_conv(
    ctx: LayerContext,
    blobs: list[np.ndarray],
    kernel: list[int],
    stride: list[int],
    pad: list[int],
    dilation: list[int],
    group: int,
    num_output: int,
) -> list[Shape]:
    """The Conv node of a convolution whose weights (and bias, when there are two blobs) are given; its top
    shape. Refuses a kernel larger than the padded input."""
    spatial = [
        conv_output_size(size, k, s, p, d)
        for size, k, s, p, d in zip(ctx.shape[2:], kernel, stride, pad, dilation, strict=True)
    ]
    if min(spatial) <= 0:
        raise LayerRefused(
            f"kernel {kernel} (dilation {dilation}) is larger than the padded input {tuple(ctx.shape[2:])}"
        )
    inputs = [ctx.inputs[0], ctx.weight("W", blobs[0])] + (
        [ctx.weight("B", blobs[1])] if len(blobs) > 1 else []
    )
    ctx.node(
        "Conv",
        inputs,
        ctx.outputs,
        kernel_shape=kernel,
        strides=stride,
        pads=pad + pad,
        dilations=dilation,
        group=group,
    )
    return [[ctx.shape[0], num_output, *spatial]]


@converter("Deconvolution")
def deconvolution(ctx: LayerContext) -> list[Shape]:
    kernel, stride, pad, dilation = _conv_geometry(ctx)
    channels, num_output, group = _conv_counts(ctx)
    bias_term = ctx.layer.convolution_param.bias_term
    expected = [(channels, num_output // group, *kernel)] + ([(num_output,)] if bias_term else [])
    blobs = ctx.params(expected)
    inputs = [ctx.inputs[0], ctx.weight("W", blobs[0])]
    if bias_term:
        inputs.append(ctx.weight("B", blobs[1]))
    spatial = []
    for size, k, s, p, d in zip(ctx.shape[2:], kernel, stride, pad, dilation, strict=True):
        out = s * (size - 1) + d * (k - 1) + 1 - 2 * p
        if out <= 0:
            raise LayerRefused(f"padding {pad} leaves no output for input {tuple(ctx.shape[2:])}")
        spatial.append(out)
    ctx.node(
        "ConvTranspose",
        inputs,
        ctx.outputs,
        kernel_shape=kernel,
        strides=stride,
        pads=pad + pad,
        dilations=dilation,
        group=group,
    )
    return [[ctx.shape[0], num_output, *spatial]]


@converter("InnerProduct")
def inner_product(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.inner_product_param
    shape = ctx.shape
    axis = canonical_axis(param.axis, len(shape), "inner_product_param.axis")
    num_output = int(param.num_output)
    if num_output <= 0:
        raise LayerRefused("inner_product_param.num_output must be set and positive")
    depth = product(shape[axis:])
    weight_shape = (depth, num_output) if param.transpose else (num_output, depth)
    expected = [weight_shape] + ([(num_output,)] if param.bias_term else [])
    blobs = ctx.params(expected)
    out_shape = [*shape[:axis], num_output]
    if axis == 1:
        flat = ctx.inputs[0] if len(shape) == 2 else ctx.node("Flatten", [ctx.inputs[0]], axis=1)
        inputs = [flat, ctx.weight("W", blobs[0])]
        if param.bias_term:
            inputs.append(ctx.weight("B", blobs[1]))
        ctx.node("Gemm", inputs, ctx.outputs, transB=0 if param.transpose else 1)
        return [out_shape]
    # Other axes: flatten the trailing axes, multiply, restore the leading ones.
    leading = shape[:axis]
    if axis == 0:
        ctx.batch_axis_kept = False
    flat = ctx.node(
        "Reshape", [ctx.inputs[0], ctx.const("flat_shape", [0] * axis + [depth] if axis else [1, depth])]
    )
    weight = blobs[0] if param.transpose else np.ascontiguousarray(blobs[0].T)
    product_out = ctx.node("MatMul", [flat, ctx.weight("W", weight)])
    if param.bias_term:
        product_out = ctx.node("Add", [product_out, ctx.weight("B", blobs[1])])
    target = [0] * axis + [num_output] if axis else [num_output]
    ctx.node("Reshape", [product_out, ctx.const("out_shape", target)], ctx.outputs)
    del leading
    return [out_shape]


def pooled_size(
    size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, any_pad: bool | None = None
) -> int:
    """Caffe's pooling output size, including the rule that drops a window starting in the padding.
    Caffe applies that rule to BOTH axes as soon as either has padding (`any_pad`; default: this axis's)."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if (bool(pad) if any_pad is None else any_pad) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _ceil_mode(param) -> bool:
    """BVLC's round_mode and the SSD-era forks' ceil_mode (both default to ceil)."""
    from_round_mode = param.round_mode == param.CEIL
    if param.HasField("ceil_mode"):
        if param.HasField("round_mode") and param.ceil_mode != from_round_mode:
            raise LayerRefused("ceil_mode and round_mode contradict each other; keep one of them")
        return bool(param.ceil_mode)
    return from_round_mode


@converter("Pooling", arity=(1, 1, 1, 2))
def pooling(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.pooling_param
    shape = ctx.shape
    if len(shape) != 4:
        raise LayerRefused(f"Caffe pooling needs a 4-D blob, got shape {tuple(shape)}")
    if param.pool not in (param.MAX, param.AVE):
        raise LayerRefused("STOCHASTIC pooling is not supported")
    height, width = shape[2], shape[3]
    op_max = param.pool == param.MAX
    with_mask = len(ctx.outputs) == 2
    if with_mask and not op_max:
        raise LayerRefused("only MAX pooling has a second (mask) top; Caffe refuses it for AVE")
    if param.global_pooling:
        if param.HasField("kernel_size") or param.HasField("kernel_h") or param.HasField("kernel_w"):
            raise LayerRefused("global_pooling cannot be combined with a kernel size")
        if (
            param.pad
            or param.pad_h
            or param.pad_w
            or param.stride != 1
            or param.stride_h > 1
            or param.stride_w > 1
        ):
            raise LayerRefused("global_pooling needs pad 0 and stride 1")
        if with_mask:
            _max_pool_with_mask(ctx, ctx.inputs[0], {"kernel_shape": [height, width]})
        else:
            ctx.node("GlobalMaxPool" if op_max else "GlobalAveragePool", [ctx.inputs[0]], ctx.outputs)
        return [[shape[0], shape[1], 1, 1]] * len(ctx.outputs)
    if param.HasField("kernel_h") != param.HasField("kernel_w"):
        raise LayerRefused("kernel_h and kernel_w must be given together")
    if param.HasField("kernel_h"):
        if param.HasField("kernel_size"):
            raise LayerRefused("give either kernel_size or kernel_h/kernel_w, not both")
        kernel = [int(param.kernel_h), int(param.kernel_w)]
    elif param.HasField("kernel_size"):
        kernel = [int(param.kernel_size)] * 2
    else:
        raise LayerRefused("pooling_param needs kernel_size (or kernel_h/kernel_w, or global_pooling)")
    if param.HasField("pad_h") or param.HasField("pad_w"):
        pad = [int(param.pad_h), int(param.pad_w)]
    else:
        pad = [int(param.pad)] * 2
    if param.HasField("stride_h") or param.HasField("stride_w"):
        stride = [
            int(param.stride_h) if param.HasField("stride_h") else 1,
            int(param.stride_w) if param.HasField("stride_w") else 1,
        ]
    else:
        stride = [int(param.stride)] * 2
    if min(kernel) <= 0 or min(stride) <= 0:
        raise LayerRefused(f"kernel {kernel} and stride {stride} must be positive")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise LayerRefused(f"pad {pad} must be smaller than the kernel {kernel}")
    ceil_mode = _ceil_mode(param)
    out = [
        pooled_size(s, k, st, p, ceil_mode, any_pad=any(pad))
        for s, k, st, p in zip((height, width), kernel, stride, pad, strict=True)
    ]
    if min(out) <= 0:
        raise LayerRefused(f"kernel {kernel} is larger than the padded input {(height, width)}")
    source = ctx.inputs[0]
    if op_max:
        begin = pad
        padded = (height, width)
    else:
        # AVE divides by the window clipped to the padded border: pad explicitly with zeros
        # (which then count), and let ONNX exclude only the ceil-mode overhang.
        begin = [0, 0]
        padded = (height + 2 * pad[0], width + 2 * pad[1])
        if any(pad):
            source = ctx.node(
                "Pad",
                [source, ctx.const("pads", [0, 0, pad[0], pad[1], 0, 0, pad[0], pad[1]])],
                mode="constant",
            )
    end = [
        max(0, (o - 1) * s + k - size - b)
        for o, s, k, size, b in zip(out, stride, kernel, padded, begin, strict=True)
    ]
    if end[0] >= kernel[0] or end[1] >= kernel[1]:
        raise LayerRefused(
            f"its last window lies wholly outside the {height}x{width} input (ceil rounding, stride {stride} > "
            f"kernel {kernel}, no pad), where Caffe outputs -FLT_MAX (MAX) or 0/0 (AVE); set ceil_mode: false "
            "(or round_mode: FLOOR) if the model was trained that way"
        )
    for axis in range(2):
        onnx_out = (padded[axis] + begin[axis] + end[axis] - kernel[axis]) // stride[axis] + 1
        if onnx_out != out[axis]:
            raise LayerRefused(f"internal: pooled size {onnx_out} != Caffe's {out[axis]}")
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": begin + end}
    if with_mask:
        _max_pool_with_mask(ctx, source, attrs)
    elif op_max:
        ctx.node("MaxPool", [source], ctx.outputs, **attrs)
    else:
        ctx.node("AveragePool", [source], ctx.outputs, count_include_pad=0, **attrs)
    return [[shape[0], shape[1], *out]] * len(ctx.outputs)


def _max_pool_with_mask(ctx: LayerContext, source: str, attrs: dict) -> None:
    """Caffe's top_mask: float(h*W+w) of the first maximum inside the bottom's (n, c) plane. ONNX MaxPool's
    Indices count over the whole NCHW tensor (row-major, strict '>' as Caffe), so reduce them modulo H*W."""
    height, width = ctx.shape[2], ctx.shape[3]
    indices = ctx.graph.unique(f"{ctx.name}/MaxPool:indices")
    ctx.node("MaxPool", [source], [ctx.outputs[0], indices], storage_order=0, **attrs)
    plane = ctx.node("Mod", [indices, ctx.const("plane_size", [height * width])])
    ctx.node("Cast", [plane], [ctx.outputs[1]], to=1)  # FLOAT
