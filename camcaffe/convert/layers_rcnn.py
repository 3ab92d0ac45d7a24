"""Faster R-CNN and R-FCN layers: ROIPooling, PSROIPooling, Proposal (C++ RPN) and the py-faster-rcnn /
py-R-FCN `Python` proposal layer.

Their outputs have data-dependent sizes (proposals) or loop over a data-dependent number of regions, so
they are written with ONNX Loop, NonZero, Compress and TopK; every other op is elementwise float32 in the
order the original code computes it, so thresholds (min size, IoU) decide as Caffe does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import GraphProto, TensorProto, helper

from camcaffe.convert.axes import product
from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter

FLT_MAX = float(np.finfo(np.float32).max)
_TYPES = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64, np.bool_: TensorProto.BOOL}


class _Body:
    """Nodes of a Loop body; names come from the main graph so that no name is shadowed."""

    def __init__(self, ctx: LayerContext, label: str):
        self.ctx = ctx
        self.label = label
        self.nodes: list = []
        self.inputs: list = []

    def input(self, hint: str, dtype: Any, shape: list | None = None) -> str:
        name = self.ctx.graph.unique(f"{self.ctx.name}/{self.label}/{hint}")
        self.inputs.append(helper.make_tensor_value_info(name, _TYPES[dtype], shape))
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.ctx.graph.unique(f"{self.ctx.name}/{self.label}/{op}:out")
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def nodes_out(self, op: str, inputs: Sequence[str], count: int, **attrs: Any) -> list[str]:
        outs = [self.ctx.graph.unique(f"{self.ctx.name}/{self.label}/{op}:out") for _ in range(count)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, **attrs))
        return outs

    def graph(self, outputs: Sequence[tuple[str, Any]]) -> GraphProto:
        infos = [helper.make_tensor_value_info(name, _TYPES[dtype], None) for name, dtype in outputs]
        return helper.make_graph(self.nodes, f"{self.ctx.name}/{self.label}", self.inputs, infos)


class _Main:
    """The same node interface as _Body, emitting into the main graph."""

    def __init__(self, ctx: LayerContext):
        self.ctx = ctx

    def node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.ctx.node(op, inputs, **attrs)


Emitter = _Body | _Main


def _loop(
    ctx: LayerContext, trip: str, cond: str, states: list[str], body: GraphProto, outs: int
) -> list[str]:
    names = [ctx.graph.unique(f"{ctx.name}/loop:out") for _ in range(outs)]
    ctx.graph.node("Loop", [trip, cond, *states], names, name=f"{ctx.name}/Loop", body=body)
    return names


def _i64(ctx: LayerContext, hint: str, value: Any) -> str:
    return ctx.const(hint, value, np.int64)


def _f32(ctx: LayerContext, hint: str, value: Any) -> str:
    return ctx.const(hint, value, np.float32)


def _round_half_away(ctx: LayerContext, g: Emitter, x: str) -> str:
    """C's round() (halves away from zero); ONNX Round rounds halves to even. |x| - floor(|x|) is exact."""
    magnitude = g.node("Abs", [x])
    floor = g.node("Floor", [magnitude])
    fraction = g.node("Sub", [magnitude, floor])
    up = g.node("Cast", [g.node("GreaterOrEqual", [fraction, _f32(ctx, "half", 0.5)])], to=TensorProto.FLOAT)
    rounded = g.node("Add", [floor, up])
    negative = g.node("Less", [x, _f32(ctx, "zero_f", 0.0)])
    return g.node("Where", [negative, g.node("Neg", [rounded]), rounded])


def _roi_columns(ctx: LayerContext) -> list[str]:
    """The rois bottom as five [R] columns (batch index, x1, y1, x2, y2)."""
    shape = ctx.input_shapes[1]
    if len(shape) < 2 or product(shape[1:]) != 5:
        raise LayerRefused(f"the rois bottom must hold 5 values per region, got shape {tuple(shape)}")
    rois = ctx.node("Reshape", [ctx.inputs[1], _i64(ctx, "rois_shape", [-1, 5])])
    columns = [ctx.graph.unique(f"{ctx.name}/roi_col{i}") for i in range(5)]
    ctx.graph.node("Split", [rois], columns, name=f"{ctx.name}/Split_rois", axis=1)
    return [ctx.node("Squeeze", [c, _i64(ctx, f"sq{i}", [1])]) for i, c in enumerate(columns)]


def _clamp_int(g: Emitter, value: str, low: str, high: str) -> str:
    return g.node("Min", [g.node("Max", [value, low]), high])


def _region_loop(
    ctx: LayerContext,
    batch_index: str,
    starts_h: str,
    ends_h: str,
    starts_w: str,
    ends_w: str,
    channel_shape: list[int],
    reduce_op: str,
) -> str:
    """Loop over regions r: out[r] = reduce over bins ([start, end) of h and w, per pooled cell) of the
    feature map of image batch_index[r], cropped to the region. Returns the stacked raw reductions
    ([R, *channel_shape, ph, pw]) with empty bins left to the caller."""
    body = _Body(ctx, "regions")
    index = body.input("r", np.int64, [])
    cond = body.input("cond", np.bool_, [])
    row = body.node("Unsqueeze", [index, _i64(ctx, "ax0", [0])])

    def gather(values: str) -> str:
        return body.node("Squeeze", [body.node("Gather", [values, row], axis=0), _i64(ctx, "ax0b", [0])])

    image = body.node("Gather", [ctx.inputs[0], gather(batch_index)], axis=0)  # [C, H, W]
    hs, he, ws, we = gather(starts_h), gather(ends_h), gather(starts_w), gather(ends_w)
    # The crop keeps at least one row and column (ONNX Runtime's Where fails to broadcast empty axes);
    # cells outside their bins are masked anyway.
    height, width = ctx.shape[2], ctx.shape[3]
    low_h = body.node("Min", [body.node("ReduceMin", [hs], keepdims=1), _i64(ctx, "last_row", [height - 1])])
    high_h = body.node(
        "Max", [body.node("ReduceMax", [he], keepdims=1), body.node("Add", [low_h, _i64(ctx, "one_l", [1])])]
    )
    low_w = body.node("Min", [body.node("ReduceMin", [ws], keepdims=1), _i64(ctx, "last_col", [width - 1])])
    high_w = body.node(
        "Max", [body.node("ReduceMax", [we], keepdims=1), body.node("Add", [low_w, _i64(ctx, "one_l", [1])])]
    )
    crop = body.node(
        "Slice",
        [image, body.node("Concat", [low_h, low_w], axis=0), body.node("Concat", [high_h, high_w], axis=0),
         _i64(ctx, "axes12", [1, 2])],
    )  # fmt: skip
    if len(channel_shape) > 1:
        extent = body.node(
            "Slice", [body.node("Shape", [crop]), _i64(ctx, "one_l", [1]), _i64(ctx, "three_l", [3])]
        )
        target = body.node("Concat", [_i64(ctx, "channel_shape", channel_shape), extent], axis=0)
        crop = body.node("Reshape", [crop, target])
    rank = len(channel_shape)
    # Masks [cells, extent] of the cropped rows / columns each pooled cell covers.
    rows = body.node(
        "Add",
        [
            body.node(
                "Range",
                [
                    _i64(ctx, "zero", 0),
                    body.node("Squeeze", [body.node("Sub", [high_h, low_h])]),
                    _i64(ctx, "one", 1),
                ],
            ),
            low_h,
        ],
    )  # noqa: E501
    cols = body.node(
        "Add",
        [
            body.node(
                "Range",
                [
                    _i64(ctx, "zero", 0),
                    body.node("Squeeze", [body.node("Sub", [high_w, low_w])]),
                    _i64(ctx, "one", 1),
                ],
            ),
            low_w,
        ],
    )  # noqa: E501

    def mask(positions: str, start: str, end: str) -> str:
        pos = body.node("Unsqueeze", [positions, _i64(ctx, "ax0", [0])])
        first = body.node("Unsqueeze", [start, _i64(ctx, "ax1", [1])])
        last = body.node("Unsqueeze", [end, _i64(ctx, "ax1", [1])])
        return body.node("And", [body.node("GreaterOrEqual", [pos, first]), body.node("Less", [pos, last])])

    mask_h, mask_w = mask(rows, hs, he), mask(cols, ws, we)  # [ph, h'], [pw, w']
    fill = _f32(ctx, "fill", -np.inf if reduce_op == "ReduceMax" else 0.0)
    # Over w first: [..., h', 1, w'] with [pw, w'] -> [..., h', pw]
    wide = body.node("Unsqueeze", [crop, _i64(ctx, "ax_w", [rank + 1])])
    picked = body.node("Where", [mask_w, wide, fill])
    over_w = _reduce_last(ctx, body, reduce_op, picked)  # [..., h', pw]
    moved = body.node("Transpose", [over_w], perm=[*range(rank), rank + 1, rank])  # [..., pw, h']
    tall = body.node("Unsqueeze", [moved, _i64(ctx, "ax_h", [rank + 1])])  # [..., pw, 1, h']
    picked_h = body.node("Where", [mask_h, tall, fill])  # [..., pw, ph, h']
    over_h = _reduce_last(ctx, body, reduce_op, picked_h)  # [..., pw, ph]
    cell = body.node("Transpose", [over_h], perm=[*range(rank), rank + 1, rank])  # [..., ph, pw]
    out_cond = body.node("Identity", [cond])
    graph = body.graph([(out_cond, np.bool_), (cell, np.float32)])
    count = ctx.node("Shape", [batch_index])
    (stacked,) = _loop(ctx, ctx.node("Squeeze", [count]), _bool_true(ctx), [], graph, 1)
    return stacked


def _reduce_last(ctx: LayerContext, g: Emitter, op: str, value: str) -> str:
    # Opset 17: ReduceSum takes its axes as an input, ReduceMax as an attribute.
    if op == "ReduceSum":
        return g.node(op, [value, _i64(ctx, "ax_last", [-1])], keepdims=0)
    return g.node(op, [value], axes=[-1], keepdims=0)


def _bool_true(ctx: LayerContext) -> str:
    return ctx.const("true", np.array(True), np.bool_)


@converter("ROIPooling", arity=(2, 2, 1, 1))
def roi_pooling(ctx: LayerContext) -> list[Shape]:
    """rbgirshick/caffe-fast-rcnn: corners round(coord * spatial_scale) (halves away from zero), region
    size max(end - start + 1, 1), bin [floor(p * size / pooled), ceil((p + 1) * size / pooled)) + start,
    clipped to the map; max over the bin (initialised to -FLT_MAX); an empty bin gives 0."""
    param = ctx.layer.roi_pooling_param
    pooled_h, pooled_w = int(param.pooled_h), int(param.pooled_w)
    if pooled_h <= 0 or pooled_w <= 0:
        raise LayerRefused("roi_pooling_param.pooled_h and pooled_w must be set and positive")
    shape = ctx.shape
    if len(shape) != 4:
        raise LayerRefused(f"needs a 4-D feature map, got shape {tuple(shape)}")
    _, channels, height, width = shape
    g = _Main(ctx)
    batch, x1, y1, x2, y2 = _roi_columns(ctx)
    scale = _f32(ctx, "spatial_scale", np.float32(param.spatial_scale))

    def corner(value: str) -> str:
        scaled = g.node("Mul", [value, scale])
        return g.node("Cast", [_round_half_away(ctx, g, scaled)], to=TensorProto.INT64)

    start_w, start_h, end_w, end_h = corner(x1), corner(y1), corner(x2), corner(y2)
    one = _i64(ctx, "one_i", 1)

    def bins(start: str, end: str, pooled: int, extent: int, axis: str) -> tuple[str, str]:
        size = g.node("Max", [g.node("Add", [g.node("Sub", [end, start]), one]), one])
        bin_size = g.node(
            "Div", [g.node("Cast", [size], to=TensorProto.FLOAT), _f32(ctx, f"pooled_{axis}", float(pooled))]
        )
        cells = _f32(ctx, f"cells_{axis}", np.arange(pooled, dtype=np.float32))
        cells_next = _f32(ctx, f"cells_next_{axis}", np.arange(1, pooled + 1, dtype=np.float32))
        per_region = g.node("Unsqueeze", [bin_size, _i64(ctx, "ax1", [1])])
        first = g.node("Cast", [g.node("Floor", [g.node("Mul", [cells, per_region])])], to=TensorProto.INT64)
        last = g.node(
            "Cast", [g.node("Ceil", [g.node("Mul", [cells_next, per_region])])], to=TensorProto.INT64
        )
        offset = g.node("Unsqueeze", [start, _i64(ctx, "ax1", [1])])
        zero, limit = _i64(ctx, "zero_i", 0), _i64(ctx, f"extent_{axis}", extent)
        first = _clamp_int(g, g.node("Add", [first, offset]), zero, limit)
        last = _clamp_int(g, g.node("Add", [last, offset]), zero, limit)
        return first, last

    hs, he = bins(start_h, end_h, pooled_h, height, "h")
    ws, we = bins(start_w, end_w, pooled_w, width, "w")
    index = g.node("Cast", [batch], to=TensorProto.INT64)
    pooled = _region_loop(ctx, index, hs, he, ws, we, [channels], "ReduceMax")
    pooled = g.node("Max", [pooled, _f32(ctx, "lowest", -FLT_MAX)])
    empty = _empty_bins(ctx, g, hs, he, ws, we)  # [R, ph, pw]
    ctx.node(
        "Where",
        [g.node("Unsqueeze", [empty, _i64(ctx, "ax1", [1])]), _f32(ctx, "zero_f", 0.0), pooled],
        ctx.outputs,
    )
    ctx.batch_axis_kept = False
    return [[ctx.input_shapes[1][0], channels, pooled_h, pooled_w]]


def _empty_bins(ctx: LayerContext, g: Emitter, hs: str, he: str, ws: str, we: str) -> str:
    empty_h = g.node("Unsqueeze", [g.node("LessOrEqual", [he, hs]), _i64(ctx, "ax2", [2])])  # [R, ph, 1]
    empty_w = g.node("Unsqueeze", [g.node("LessOrEqual", [we, ws]), _i64(ctx, "ax1", [1])])  # [R, 1, pw]
    return g.node("Or", [empty_h, empty_w])


@converter("PSROIPooling", arity=(2, 2, 1, 1))
def psroi_pooling(ctx: LayerContext) -> list[Shape]:
    """daijifeng001/caffe-rfcn (the py-R-FCN Caffe): pooled size = group_size; region corners
    round(x1) * scale and (round(x2) + 1) * scale (no rounding after scaling), size max(end - start, 0.1);
    bin [floor(p * size / G + start), ceil((p + 1) * size / G + start)) clipped; output channel
    (ctop, ph, pw) averages input channel (ctop * G + ph) * G + pw over its bin; an empty bin gives 0.
    Float32 as the CPU forward computes it (the CUDA kernel may fuse p * size + start into one FMA)."""
    param = ctx.layer.psroi_pooling_param
    for field in ("spatial_scale", "output_dim", "group_size"):
        if not param.HasField(field):
            raise LayerRefused(f"psroi_pooling_param.{field} is required")
    output_dim, group = int(param.output_dim), int(param.group_size)
    if output_dim <= 0 or group <= 0:
        raise LayerRefused("psroi_pooling_param.output_dim and group_size must be positive")
    shape = ctx.shape
    if len(shape) != 4:
        raise LayerRefused(f"needs a 4-D feature map, got shape {tuple(shape)}")
    _, channels, height, width = shape
    if channels != output_dim * group * group:
        raise LayerRefused(
            f"the input has {channels} channels but output_dim * group_size^2 = {output_dim * group * group}"
        )
    g = _Main(ctx)
    batch, x1, y1, x2, y2 = _roi_columns(ctx)
    scale = _f32(ctx, "spatial_scale", np.float32(param.spatial_scale))
    one = _f32(ctx, "one_f", 1.0)
    start_w = g.node("Mul", [_round_half_away(ctx, g, x1), scale])
    start_h = g.node("Mul", [_round_half_away(ctx, g, y1), scale])
    end_w = g.node("Mul", [g.node("Add", [_round_half_away(ctx, g, x2), one]), scale])
    end_h = g.node("Mul", [g.node("Add", [_round_half_away(ctx, g, y2), one]), scale])
    minimum = _f32(ctx, "min_extent", np.float32(0.1))
    cells = _f32(ctx, "cells", np.arange(group, dtype=np.float32))
    cells_next = _f32(ctx, "cells_next", np.arange(1, group + 1, dtype=np.float32))
    zero = _i64(ctx, "zero_i", 0)

    def bins(start: str, end: str, extent: int, axis: str) -> tuple[str, str]:
        size = g.node("Max", [g.node("Sub", [end, start]), minimum])
        bin_size = g.node(
            "Unsqueeze", [g.node("Div", [size, _f32(ctx, "groups", float(group))]), _i64(ctx, "ax1", [1])]
        )
        offset = g.node("Unsqueeze", [start, _i64(ctx, "ax1", [1])])
        first = g.node("Floor", [g.node("Add", [g.node("Mul", [cells, bin_size]), offset])])
        last = g.node("Ceil", [g.node("Add", [g.node("Mul", [cells_next, bin_size]), offset])])
        limit = _i64(ctx, f"extent_{axis}", extent)
        first = _clamp_int(g, g.node("Cast", [first], to=TensorProto.INT64), zero, limit)
        last = _clamp_int(g, g.node("Cast", [last], to=TensorProto.INT64), zero, limit)
        return first, last

    hs, he = bins(start_h, end_h, height, "h")
    ws, we = bins(start_w, end_w, width, "w")
    index = g.node("Cast", [batch], to=TensorProto.INT64)
    # Channels as [D, G, G]: reduce every (ph, pw) bin on all channels, then keep the diagonal ones.
    sums = _region_loop(ctx, index, hs, he, ws, we, [output_dim, group, group], "ReduceSum")
    # sums: [R, D, G(ph of channel), G(pw of channel), ph, pw] -> take channel ph == bin ph, pw == pw.
    eye = np.eye(group, dtype=bool)
    diagonal = ctx.const("diag", eye[:, None, :, None] & eye[None, :, None, :], np.bool_)  # [G,G,G,G]
    masked = g.node("Where", [diagonal, sums, _f32(ctx, "zero_f", 0.0)])
    picked = g.node("ReduceSum", [masked, _i64(ctx, "ax23", [2, 3])], keepdims=0)  # [R, D, ph, pw]
    area_h = g.node("Unsqueeze", [g.node("Sub", [he, hs]), _i64(ctx, "ax2", [2])])
    area_w = g.node("Unsqueeze", [g.node("Sub", [we, ws]), _i64(ctx, "ax1", [1])])
    area = g.node("Cast", [g.node("Mul", [area_h, area_w])], to=TensorProto.FLOAT)  # [R, ph, pw]
    average = g.node("Div", [picked, g.node("Unsqueeze", [area, _i64(ctx, "ax1", [1])])])
    empty = _empty_bins(ctx, g, hs, he, ws, we)
    ctx.node(
        "Where",
        [g.node("Unsqueeze", [empty, _i64(ctx, "ax1", [1])]), _f32(ctx, "zero_f", 0.0), average],
        ctx.outputs,
    )
    ctx.batch_axis_kept = False
    return [[ctx.input_shapes[1][0], output_dim, group, group]]
