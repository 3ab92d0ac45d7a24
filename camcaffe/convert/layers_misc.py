"""Simple layers of BVLC master and its forks: Reduction, Tile, Silence, MVN, Embed, Parameter,
BatchReindex, Filter."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from camcaffe.caffe import caffe_pb2
from camcaffe.convert.axes import canonical_axis, product
from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter

INT64_MAX = np.iinfo(np.int64).max
_ReductionOp = caffe_pb2.ReductionParameter


def _scalar(ctx: LayerContext, suffix: str, value: float) -> str:
    return ctx.const(suffix, np.float32(value), dtype=np.float32)


@converter("Reduction")
def reduction(ctx: LayerContext) -> list[Shape]:
    """Reduces every axis from `axis` to the end: the top's shape is the bottom's axes before `axis`."""
    param = ctx.layer.reduction_param
    shape = list(ctx.shape)
    axis = canonical_axis(param.axis, len(shape), "reduction_param.axis")
    axes = list(range(axis, len(shape)))
    x = ctx.inputs[0]
    operation = param.operation
    if operation in (_ReductionOp.SUM, _ReductionOp.MEAN):
        reduced = ctx.node("ReduceSum", [x, ctx.const("axes", axes)], keepdims=0)
    elif operation == _ReductionOp.ASUM:
        reduced = ctx.node("ReduceL1", [x], axes=axes, keepdims=0)
    elif operation == _ReductionOp.SUMSQ:
        reduced = ctx.node("ReduceSumSquare", [x], axes=axes, keepdims=0)
    else:
        raise LayerRefused(f"unknown reduction_param.operation {operation}")
    # Caffe folds MEAN's 1/count into coeff (in float) and scales the sums once.
    factor = float(np.float32(param.coeff))
    if operation == _ReductionOp.MEAN:
        factor = float(np.float32(factor) / np.float32(product(shape[axis:])))
    if factor != 1.0:
        ctx.node("Mul", [reduced, _scalar(ctx, "coeff", factor)], ctx.outputs)
    else:
        ctx.node("Identity", [reduced], ctx.outputs)
    if axis == 0:
        ctx.batch_axis_kept = False
    return [shape[:axis]]


@converter("Tile")
def tile(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.tile_param
    shape = list(ctx.shape)
    axis = canonical_axis(param.axis, len(shape), "tile_param.axis")
    if not param.HasField("tiles"):
        raise LayerRefused("tile_param.tiles is not set (Caffe requires it)")
    if param.tiles <= 0:
        raise LayerRefused(f"tile_param.tiles must be positive, got {param.tiles}")
    repeats = [1] * len(shape)
    repeats[axis] = int(param.tiles)
    ctx.node("Tile", [ctx.inputs[0], ctx.const("repeats", repeats)], ctx.outputs)
    if axis == 0 and param.tiles != 1:
        ctx.batch_axis_kept = False
    out = list(shape)
    out[axis] *= int(param.tiles)
    return [out]


@converter("Silence", arity=(1, None, 0, 0))
def silence(ctx: LayerContext) -> list[Shape]:
    return []


@converter("MVN")
def mvn(ctx: LayerContext) -> list[Shape]:
    """(x - mean) [/ (std + eps)] per (n, c), or per n across channels; eps goes on the std, not the
    variance. Caffe works on the legacy 4-D view (num, channels, height, width), so its top is 4-D."""
    param = ctx.layer.mvn_param
    shape = list(ctx.shape)
    if not 1 <= len(shape) <= 4:
        raise LayerRefused(f"MVN takes a blob of 1 to 4 axes (Caffe's legacy 4-D view), got {len(shape)}")
    legacy = shape + [1] * (4 - len(shape))
    x = ctx.inputs[0]
    if len(shape) != 4:
        x = ctx.node("Reshape", [x, ctx.const("legacy_shape", [0, *legacy[1:]])])
    axes = [1, 2, 3] if param.across_channels else [2, 3]
    mean = ctx.node("ReduceMean", [x], axes=axes, keepdims=1)
    if not param.normalize_variance:
        ctx.node("Sub", [x, mean], ctx.outputs)
        return [legacy]
    centred = ctx.node("Sub", [x, mean])
    variance = ctx.node("ReduceMean", [ctx.node("Mul", [centred, centred])], axes=axes, keepdims=1)
    denominator = ctx.node("Add", [ctx.node("Sqrt", [variance]), _scalar(ctx, "eps", float(param.eps))])
    ctx.node("Div", [centred, denominator], ctx.outputs)
    return [legacy]


def _truncated(ctx: LayerContext, values: str) -> str:
    return ctx.node("Cast", [values], to=TensorProto.INT64)  # toward zero, as static_cast<int>


def _unwrapped(ctx: LayerContext, indices: str, invalid: str) -> str:
    """ONNX Gather wraps a negative index around, Caffe does not: entries marked `invalid` become an
    index past the end, which ONNX Runtime rejects with an error."""
    return ctx.node("Where", [invalid, ctx.const("past_the_end", np.int64(INT64_MAX)), indices])


@converter("Embed")
def embed(ctx: LayerContext) -> list[Shape]:
    """top[..., :] = W[int(bottom[...])] (+ b). Caffe checks the index range only in debug builds (a
    release build reads outside W); here an index outside [0, input_dim) makes ONNX Runtime's CPU
    Gather fail with an error instead."""
    param = ctx.layer.embed_param
    if param.num_output <= 0:
        raise LayerRefused("embed_param.num_output must be positive")
    if param.input_dim <= 0:
        raise LayerRefused("embed_param.input_dim must be positive")
    num_output, input_dim = int(param.num_output), int(param.input_dim)
    expected = [(input_dim, num_output)] + ([(num_output,)] if param.bias_term else [])
    blobs = ctx.params(expected)
    truncated = _truncated(ctx, ctx.inputs[0])
    indices = _unwrapped(ctx, truncated, ctx.node("Less", [truncated, ctx.const("zero", np.int64(0))]))
    weight = ctx.weight("W", blobs[0])
    if param.bias_term:
        rows = ctx.node("Gather", [weight, indices], axis=0)
        ctx.node("Add", [rows, ctx.weight("B", blobs[1])], ctx.outputs)
    else:
        ctx.node("Gather", [weight, indices], ctx.outputs, axis=0)
    return [[*ctx.shape, num_output]]


@converter("Parameter", arity=(0, 0, 1, 1))
def parameter(ctx: LayerContext) -> list[Shape]:
    shape = [int(d) for d in ctx.layer.parameter_param.shape.dim]
    if any(d < 0 for d in shape):
        raise LayerRefused(f"parameter_param.shape {shape} has a negative dimension")
    (blob,) = ctx.params([tuple(shape)])
    ctx.node("Identity", [ctx.weight("blob", blob)], ctx.outputs)
    ctx.batch_axis_kept = False
    return [shape]


@converter("BatchReindex", arity=(2, 2, 1, 1))
def batch_reindex(ctx: LayerContext) -> list[Shape]:
    """top[i] = bottom[int(permutation[i])]. Caffe aborts on an entry < 0 or >= the batch: ONNX Runtime
    fails on those too (a negative entry is sent past the end rather than wrapped around)."""
    shape, permutation = ctx.input_shapes
    if len(permutation) != 1:
        raise LayerRefused(f"the permutation (second bottom) must be 1-D, got shape {tuple(permutation)}")
    x, order = ctx.inputs
    # Caffe checks the float entry itself (-0.5 aborts although it truncates to 0).
    indices = _unwrapped(ctx, _truncated(ctx, order), ctx.node("Less", [order, _scalar(ctx, "zero", 0.0)]))
    ctx.node("Gather", [x, indices], ctx.outputs, axis=0)
    ctx.batch_axis_kept = False
    return [[permutation[0], *shape[1:]]]


@converter("Filter", arity=(2, None, 1, None))
def filter_layer(ctx: LayerContext) -> list[Shape]:
    """Keeps the items (axis 0) whose selector (last bottom) is non-zero; one top per other bottom.
    The kept count depends on the data: the declared shape is the unfiltered one, as Caffe's first
    Reshape gives it."""
    *data_shapes, selector_shape = ctx.input_shapes
    if len(ctx.outputs) != len(data_shapes):
        raise LayerRefused(
            f"Filter needs one top per bottom but the selector: {len(data_shapes)} top(s), got "
            f"{len(ctx.outputs)}"
        )
    if any(d != 1 for d in selector_shape[1:]):
        raise LayerRefused(
            f"the selector (last bottom) must have singleton axes after the first, got {tuple(selector_shape)}"
        )
    for shape in data_shapes:
        if shape[0] != selector_shape[0]:
            raise LayerRefused(
                f"bottom of shape {tuple(shape)} and selector {tuple(selector_shape)} differ on axis 0"
            )
    selector = ctx.node("Reshape", [ctx.inputs[-1], ctx.const("flat", [-1])])
    keep = ctx.node("Not", [ctx.node("Equal", [selector, _scalar(ctx, "zero", 0.0)])])
    for tensor, output in zip(ctx.inputs[:-1], ctx.outputs, strict=True):
        ctx.graph.node("Compress", [tensor, keep], [output], name=f"{ctx.name}/{output}", axis=0)
    ctx.batch_axis_kept = False
    return [list(shape) for shape in data_shapes]
