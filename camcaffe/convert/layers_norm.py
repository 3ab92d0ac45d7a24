"""Normalisation and scaling: LRN, BatchNorm, Scale, Bias, Softmax."""

from __future__ import annotations

import numpy as np

from camcaffe.convert.axes import canonical_axis
from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter


def _scalar(ctx: LayerContext, suffix: str, value: float) -> str:
    return ctx.const(suffix, np.float32(value), dtype=np.float32)


def _lrn_across_channels(ctx: LayerContext, size: int, alpha: float, beta: float, k: float) -> None:
    """x * (k + alpha/size * sum of x^2 over `size` neighbouring channels, zero padded)^-beta.

    Built from elementwise ops and channel slices rather than ONNX's LRN op: the same value (the window
    sum is exact up to float32 rounding, as in Caffe) and, in ONNX Runtime's CPU kernels, about twice as fast
    (the LRN op took 41 % of GoogLeNet's inference time)."""
    x = ctx.inputs[0]
    channels = int(ctx.shape[1])
    pad = (size - 1) // 2
    squared = ctx.node("Mul", [x, x])
    padded = ctx.node("Pad", [squared, ctx.const("pads", [0, pad, 0, 0, 0, pad, 0, 0])])
    axis = ctx.const("channel_axis", [1])
    windows = [
        ctx.node("Slice", [padded, ctx.const(f"start{i}", [i]), ctx.const(f"end{i}", [i + channels]), axis])
        for i in range(size)
    ]
    window_sum = ctx.node("Sum", windows) if size > 1 else windows[0]
    scale = ctx.node(
        "Add",
        [
            ctx.node(
                "Mul", [window_sum, _scalar(ctx, "alpha_over_size", np.float32(alpha) / np.float32(size))]
            ),
            _scalar(ctx, "k", k),
        ],
    )
    factor = ctx.node("Pow", [scale, _scalar(ctx, "neg_beta", -beta)])
    ctx.node("Mul", [x, factor], ctx.outputs)


@converter("LRN")
def lrn(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.lrn_param
    if len(ctx.shape) != 4:
        raise LayerRefused(f"LRN needs a 4-D blob, got shape {tuple(ctx.shape)}")
    size = int(param.local_size)
    if size % 2 == 0 or size <= 0:
        raise LayerRefused(f"local_size must be a positive odd number, got {size}")
    if param.norm_region == param.ACROSS_CHANNELS:
        _lrn_across_channels(ctx, size, float(param.alpha), float(param.beta), float(param.k))
        return [ctx.shape]
    # WITHIN_CHANNEL: x * (1 + alpha * mean of x^2 over a size x size window, zero padded)^-beta; k unused.
    x = ctx.inputs[0]
    pad = (size - 1) // 2
    squared = ctx.node("Mul", [x, x])
    averaged = ctx.node(
        "AveragePool",
        [squared],
        kernel_shape=[size, size],
        strides=[1, 1],
        pads=[pad] * 4,
        count_include_pad=1,
    )
    scaled = ctx.node(
        "Add",
        [ctx.node("Mul", [averaged, _scalar(ctx, "alpha", float(param.alpha))]), _scalar(ctx, "one", 1.0)],
    )
    factor = ctx.node("Pow", [scaled, _scalar(ctx, "neg_beta", -float(param.beta))])
    ctx.node("Mul", [x, factor], ctx.outputs)
    return [ctx.shape]


@converter("BatchNorm")
def batch_norm(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.batch_norm_param
    shape = ctx.shape
    channels = shape[1] if len(shape) > 1 else 1
    mean, variance, factor_blob = ctx.params([(channels,), (channels,), (1,)])
    eps = float(param.eps)
    use_global_stats = param.use_global_stats if param.HasField("use_global_stats") else True
    if use_global_stats:
        factor = float(factor_blob.reshape(-1)[0])
        factor = 0.0 if factor == 0 else 1.0 / factor
        mean = (mean.astype(np.float32) * np.float32(factor)).astype(np.float32)
        variance = (variance.astype(np.float32) * np.float32(factor)).astype(np.float32)
        if len(shape) < 2:
            raise LayerRefused("BatchNorm on a 1-D blob is not supported")
        ones = np.ones(channels, dtype=np.float32)
        zeros = np.zeros(channels, dtype=np.float32)
        ctx.node(
            "BatchNormalization",
            [
                ctx.inputs[0],
                ctx.weight("gamma_one", ones),
                ctx.weight("beta_zero", zeros),
                ctx.weight("mean", mean),
                ctx.weight("var", variance),
            ],
            ctx.outputs,
            epsilon=eps,
        )
        return [shape]
    # use_global_stats: false normalises with the statistics of the batch itself, as Caffe does.
    axes = [0] + list(range(2, len(shape)))
    x = ctx.inputs[0]
    batch_mean = ctx.node("ReduceMean", [x], axes=axes, keepdims=1)
    centred = ctx.node("Sub", [x, batch_mean])
    batch_var = ctx.node("ReduceMean", [ctx.node("Mul", [centred, centred])], axes=axes, keepdims=1)
    std = ctx.node("Sqrt", [ctx.node("Add", [batch_var, _scalar(ctx, "eps", eps)])])
    ctx.node("Div", [centred, std], ctx.outputs)
    return [shape]


def _scale_like(
    ctx: LayerContext, op_type: str, axis_value: int, num_axes_value: int, extra_blob: bool
) -> list[Shape]:
    shape = ctx.shape
    rank = len(shape)
    if len(ctx.inputs) == 2:
        other = ctx.input_shapes[1]
        axis = 0 if not other else canonical_axis(axis_value, rank, "axis")
        if list(shape[axis : axis + len(other)]) != list(other):
            raise LayerRefused(
                f"second bottom shape {tuple(other)} does not match bottom shape {tuple(shape)} "
                f"from axis {axis}"
            )
        target = list(other) + [1] * (rank - axis - len(other))
        factor = ctx.node("Reshape", [ctx.inputs[1], ctx.const("broadcast_shape", target)])
        result_shape = shape
        blobs_expected: list[tuple[int, ...]] = []
        param_shape: tuple[int, ...] = ()
    else:
        axis = canonical_axis(axis_value, rank, "axis")
        if num_axes_value < -1:
            raise LayerRefused(f"num_axes must be -1 or more, got {num_axes_value}")
        end = rank if num_axes_value == -1 else axis + num_axes_value
        if end > rank:
            raise LayerRefused(f"axis {axis} + num_axes {num_axes_value} exceeds the blob's {rank} axes")
        param_shape = tuple(shape[axis:end])
        blobs_expected = [param_shape]
        factor = ""
        result_shape = shape
    if extra_blob:
        blobs_expected.append(param_shape if len(ctx.inputs) == 1 else tuple(ctx.input_shapes[1]))
    blobs = ctx.params(blobs_expected) if blobs_expected else []
    broadcast = (param_shape if len(ctx.inputs) == 1 else tuple(ctx.input_shapes[1])) + (1,) * (
        rank - axis - len(param_shape if len(ctx.inputs) == 1 else ctx.input_shapes[1])
    )
    index = 0
    if not factor:
        factor = ctx.weight("W" if op_type == "Mul" else "B", blobs[0].reshape(broadcast))
        index = 1
    value = ctx.node(op_type, [ctx.inputs[0], factor], None if extra_blob else ctx.outputs)
    if extra_blob:
        ctx.node("Add", [value, ctx.weight("B", blobs[index].reshape(broadcast))], ctx.outputs)
    return [result_shape]


@converter("Scale", arity=(1, 2, 1, 1))
def scale(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.scale_param
    return _scale_like(ctx, "Mul", param.axis, param.num_axes, extra_blob=bool(param.bias_term))


@converter("Bias", arity=(1, 2, 1, 1))
def bias(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.bias_param
    return _scale_like(ctx, "Add", param.axis, param.num_axes, extra_blob=False)


@converter("Softmax")
def softmax(ctx: LayerContext) -> list[Shape]:
    axis = canonical_axis(ctx.layer.softmax_param.axis, len(ctx.shape), "softmax_param.axis")
    ctx.node("Softmax", ctx.inputs[:1], ctx.outputs, axis=axis)
    return [ctx.shape]
