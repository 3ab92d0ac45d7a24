"""Element-wise layers: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log,
Threshold, Dropout, and the fork activations ReLU6, HardSwish, HardSigmoid, Clip, Swish, Mish."""

from __future__ import annotations

import math

import numpy as np

from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter


def _scalar(ctx: LayerContext, suffix: str, value: float) -> str:
    return ctx.const(suffix, np.float32(value), dtype=np.float32)


@converter("ReLU")
def relu(ctx: LayerContext) -> list[Shape]:
    slope = ctx.layer.relu_param.negative_slope
    if slope:
        ctx.node("LeakyRelu", ctx.inputs[:1], ctx.outputs, alpha=float(slope))
    else:
        ctx.node("Relu", ctx.inputs[:1], ctx.outputs)
    return [ctx.shape]


@converter("PReLU")
def prelu(ctx: LayerContext) -> list[Shape]:
    shape = ctx.shape
    if len(shape) < 2 and not ctx.layer.prelu_param.channel_shared:
        raise LayerRefused("PReLU needs at least 2 axes unless channel_shared")
    channels = 1 if ctx.layer.prelu_param.channel_shared else shape[1]
    (slope,) = ctx.params([(channels,)])
    broadcast = slope.reshape((channels,) + (1,) * (len(shape) - 2)) if channels > 1 else slope.reshape((1,))
    ctx.node("PRelu", [ctx.inputs[0], ctx.weight("slope", broadcast)], ctx.outputs)
    return [shape]


@converter("ELU")
def elu(ctx: LayerContext) -> list[Shape]:
    ctx.node("Elu", ctx.inputs[:1], ctx.outputs, alpha=float(ctx.layer.elu_param.alpha))
    return [ctx.shape]


@converter("Sigmoid")
def sigmoid(ctx: LayerContext) -> list[Shape]:
    ctx.node("Sigmoid", ctx.inputs[:1], ctx.outputs)
    return [ctx.shape]


@converter("TanH")
def tanh(ctx: LayerContext) -> list[Shape]:
    ctx.node("Tanh", ctx.inputs[:1], ctx.outputs)
    return [ctx.shape]


@converter("AbsVal")
def absval(ctx: LayerContext) -> list[Shape]:
    ctx.node("Abs", ctx.inputs[:1], ctx.outputs)
    return [ctx.shape]


@converter("BNLL")
def bnll(ctx: LayerContext) -> list[Shape]:
    # Caffe's stable form: max(x, 0) + log(1 + exp(-|x|)).
    x = ctx.inputs[0]
    positive = ctx.node("Relu", [x])
    negative_abs = ctx.node("Neg", [ctx.node("Abs", [x])])
    log_term = ctx.node("Log", [ctx.node("Add", [ctx.node("Exp", [negative_abs]), _scalar(ctx, "one", 1.0)])])
    ctx.node("Add", [positive, log_term], ctx.outputs)
    return [ctx.shape]


def _affine(ctx: LayerContext, x: str, scale: float, shift: float) -> str:
    if scale != 1.0:
        x = ctx.node("Mul", [x, _scalar(ctx, "scale", scale)])
    if shift != 0.0:
        x = ctx.node("Add", [x, _scalar(ctx, "shift", shift)])
    return x


@converter("Power")
def power(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.power_param
    value = _affine(ctx, ctx.inputs[0], float(param.scale), float(param.shift))
    if param.power != 1.0:
        ctx.node("Pow", [value, _scalar(ctx, "power", float(param.power))], ctx.outputs)
    else:
        ctx.node("Identity", [value], ctx.outputs)
    return [ctx.shape]


def _log_base(base: float, what: str) -> float:
    if base == -1.0:
        return 1.0
    if base <= 0:
        raise LayerRefused(f"{what}.base must be positive or -1 (for e), got {base}")
    return math.log(base)


@converter("Exp")
def exp(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.exp_param
    log_base = _log_base(float(param.base), "exp_param")
    inner_scale = log_base * float(param.scale)
    outer_scale = 1.0 if param.shift == 0 else math.exp(log_base * float(param.shift))
    value = ctx.inputs[0]
    if inner_scale != 1.0:
        value = ctx.node("Mul", [value, _scalar(ctx, "inner_scale", inner_scale)])
    if outer_scale != 1.0:
        value = ctx.node("Exp", [value])
        ctx.node("Mul", [value, _scalar(ctx, "outer_scale", outer_scale)], ctx.outputs)
    else:
        ctx.node("Exp", [value], ctx.outputs)
    return [ctx.shape]


@converter("Log")
def log(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.log_param
    log_base = _log_base(float(param.base), "log_param")
    value = _affine(ctx, ctx.inputs[0], float(param.scale), float(param.shift))
    if log_base != 1.0:
        value = ctx.node("Log", [value])
        ctx.node("Mul", [value, _scalar(ctx, "base_scale", 1.0 / log_base)], ctx.outputs)
    else:
        ctx.node("Log", [value], ctx.outputs)
    return [ctx.shape]


@converter("Threshold")
def threshold(ctx: LayerContext) -> list[Shape]:
    above = ctx.node(
        "Greater", [ctx.inputs[0], _scalar(ctx, "threshold", float(ctx.layer.threshold_param.threshold))]
    )
    ctx.node("Cast", [above], ctx.outputs, to=1)
    return [ctx.shape]


@converter("Dropout")
def dropout(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.dropout_param
    if param.scale_train:
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
    else:
        # Without train-time scaling Caffe scales by the keep probability at test time.
        ctx.node("Mul", [ctx.inputs[0], _scalar(ctx, "keep", 1.0 - float(param.dropout_ratio))], ctx.outputs)
    return [ctx.shape]


# Fork activations (MobileNet/YOLO-era forks, BVLC master). Each is elementwise in Caffe, so in-place is
# well defined (registry.IN_PLACE_TYPES).


@converter("ReLU6")
def relu6(ctx: LayerContext) -> list[Shape]:
    # Forks compute min(max(x, 0) + negative_slope * min(x, 0), threshold); relu_param plays no part.
    param = ctx.layer.relu6_param
    slope, cap = float(param.negative_slope), float(param.threshold)
    x = ctx.inputs[0]
    if slope == 0.0 and cap >= 0.0:
        ctx.node("Clip", [x, _scalar(ctx, "zero", 0.0), _scalar(ctx, "threshold", cap)], ctx.outputs)
        return [ctx.shape]
    rectified = ctx.node("LeakyRelu", [x], alpha=slope) if slope else ctx.node("Relu", [x])
    ctx.node("Min", [rectified, _scalar(ctx, "threshold", cap)], ctx.outputs)
    return [ctx.shape]


@converter("HardSwish")
def hard_swish(ctx: LayerContext) -> list[Shape]:
    # x * clip(x / 6 + 1/2, 0, 1): ONNX HardSwish's definition.
    ctx.node("HardSwish", ctx.inputs[:1], ctx.outputs)
    return [ctx.shape]


@converter("HardSigmoid")
def hard_sigmoid(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.hardsigmoid_param
    ctx.node("HardSigmoid", ctx.inputs[:1], ctx.outputs, alpha=float(param.alpha), beta=float(param.beta))
    return [ctx.shape]


@converter("Clip")
def clip(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.clip_param
    missing = [name for name in ("min", "max") if not param.HasField(name)]
    if missing:
        raise LayerRefused(f"clip_param.{' and '.join(missing)} not set (Caffe requires both min and max)")
    # Caffe's max(min, min(x, max)); ONNX Clip differs when min > max (it gives max, Caffe gives min).
    upper = ctx.node("Min", [ctx.inputs[0], _scalar(ctx, "max", float(param.max))])
    ctx.node("Max", [upper, _scalar(ctx, "min", float(param.min))], ctx.outputs)
    return [ctx.shape]


@converter("Swish")
def swish(ctx: LayerContext) -> list[Shape]:
    beta = float(ctx.layer.swish_param.beta)
    x = ctx.inputs[0]
    gate_input = x if beta == 1.0 else ctx.node("Mul", [x, _scalar(ctx, "beta", beta)])
    ctx.node("Mul", [x, ctx.node("Sigmoid", [gate_input])], ctx.outputs)
    return [ctx.shape]


@converter("Mish")
def mish(ctx: LayerContext) -> list[Shape]:
    # x * tanh(log(1 + exp(x))); ONNX has no Mish before opset 18.
    x = ctx.inputs[0]
    ctx.node("Mul", [x, ctx.node("Tanh", [ctx.node("Softplus", [x])])], ctx.outputs)
    return [ctx.shape]
