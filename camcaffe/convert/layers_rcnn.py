"""Faster R-CNN and R-FCN layers: ROIPooling, PSROIPooling, Proposal (C++ RPN) and the py-faster-rcnn /
py-R-FCN `Python` proposal layer.

Their outputs have data-dependent sizes (proposals) or loop over a data-dependent number of regions, so
they are written with ONNX Loop, NonZero, Compress and TopK; every other op is elementwise float32 in the
order the original code computes it, so thresholds (min size, IoU) decide as Caffe does."""

from __future__ import annotations

import ast
import math
import re
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import GraphProto, TensorProto, helper

from camcaffe.convert.axes import product
from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter

FLT_MAX = float(np.finfo(np.float32).max)
# A top whose row count depends on the data (proposals) is declared with Caffe's upper bound as a graph
# output; ONNX Runtime's optimiser takes declared output shapes as facts and folds Shape() of them. The
# region layers therefore read the same values through an undeclared internal tensor.
_UNDECLARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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


def _i32(ctx: LayerContext, hint: str, value: Any) -> str:
    return ctx.const(hint, value, np.int32)


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
    source = _UNDECLARED.get(ctx.graph, {}).get(ctx.inputs[1], ctx.inputs[1])
    rois = ctx.node("Reshape", [source, _i64(ctx, "rois_shape", [-1, 5])])
    columns = [ctx.graph.unique(f"{ctx.name}/roi_col{i}") for i in range(5)]
    ctx.graph.node("Split", [rois], columns, name=f"{ctx.name}/Split_rois", axis=1)
    return [ctx.node("Squeeze", [c, _i64(ctx, f"sq{i}", [1])]) for i, c in enumerate(columns)]


def _clamp_int(g: Emitter, value: str, low: str, high: str) -> str:
    return g.node("Min", [g.node("Max", [value, low]), high])


def _region_loop(
    ctx: LayerContext,
    batch_index: str,
    bins: tuple[str, str, str, str],
    average_groups: tuple[int, int] | None = None,
) -> str:
    """Loop over regions r: per pooled cell (ph, pw), the max (or, with average_groups = (D, G), the sum
    of channel block (ph, pw)) of the feature map of image batch_index[r] over rows [hs, he) x columns
    [ws, we) (bins: [R, ph] / [R, pw] int64, already clipped). Each cell gathers a fixed number of rows
    and columns (the region's widest bin): for max, indices past a bin's end repeat its last row/column,
    which cannot change a max; for sums they are masked out. Empty bins are left to the caller.
    The map is made channel-last once, so each gathered (row, column) is one contiguous vector.
    Returns [R, C, ph, pw] (max) or [R, D, G, G] (sums)."""
    _, channels, height, width = ctx.shape
    g = _Main(ctx)
    # With no region at all, ONNX Runtime still runs the body once to learn the output's shape: every
    # per-region array gets a harmless extra row (image 0, empty bins) and the loop at least one trip.
    count = g.node("Shape", [batch_index])
    batch_index = g.node("Concat", [batch_index, _i64(ctx, "pad_row", [0])], axis=0)
    pad_shape = g.node(
        "Concat",
        [
            _i64(ctx, "one_l", [1]),
            g.node("Slice", [g.node("Shape", [bins[0]]), _i64(ctx, "one_l", [1]), _i64(ctx, "two_l", [2])]),
        ],
        axis=0,
    )
    pad_h = g.node("Expand", [_i64(ctx, "zero_s", 0), pad_shape])
    pad_shape_w = g.node(
        "Concat",
        [
            _i64(ctx, "one_l", [1]),
            g.node("Slice", [g.node("Shape", [bins[2]]), _i64(ctx, "one_l", [1]), _i64(ctx, "two_l", [2])]),
        ],
        axis=0,
    )
    pad_w = g.node("Expand", [_i64(ctx, "zero_s", 0), pad_shape_w])
    starts_h, ends_h = (g.node("Concat", [v, pad_h], axis=0) for v in bins[:2])
    starts_w, ends_w = (g.node("Concat", [v, pad_w], axis=0) for v in bins[2:])
    if average_groups is None:
        vector, groups = channels, 1
        last = g.node("Transpose", [ctx.inputs[0]], perm=[0, 2, 3, 1])  # [N, H, W, C]
    else:
        vector, groups = average_groups
        blocks = g.node(
            "Reshape", [ctx.inputs[0], _i64(ctx, "blocks", [0, vector, groups, groups, height, width])]
        )
        last = g.node("Transpose", [blocks], perm=[0, 4, 5, 2, 3, 1])  # [N, H, W, G, G, D]
    body = _Body(ctx, "regions")
    index = body.input("r", np.int64, [])
    cond = body.input("cond", np.bool_, [])
    row = body.node("Unsqueeze", [index, _i64(ctx, "ax0", [0])])
    one_l, ax0, ax1 = _i64(ctx, "one_l", [1]), _i64(ctx, "ax0", [0]), _i64(ctx, "ax1", [1])

    def gather(values: str) -> str:
        return body.node("Squeeze", [body.node("Gather", [values, row], axis=0), ax0])

    def taps(first: str, end: str, extent: int) -> tuple[str, str]:
        """[cells, taps] indices first + j, clipped to the bin's last index and to the map; valid flags."""
        widest = body.node("ReduceMax", [body.node("Sub", [end, first])], keepdims=0)
        steps = body.node(
            "Range",
            [
                _i64(ctx, "zero_s", 0),
                body.node("Max", [widest, _i64(ctx, "one_s", 1)]),
                _i64(ctx, "one_s", 1),
            ],
        )
        raw = body.node("Add", [body.node("Unsqueeze", [first, ax1]), steps])
        bin_end = body.node("Unsqueeze", [end, ax1])
        valid = body.node("Less", [raw, bin_end])
        clipped = body.node("Min", [raw, body.node("Sub", [bin_end, _i64(ctx, "one_s", 1)])])
        return _clamp_int(
            body, clipped, _i64(ctx, "zero_s", 0), _i64(ctx, f"last_{extent}", extent - 1)
        ), valid

    rows, rows_valid = taps(gather(starts_h), gather(ends_h), height)  # [ph, th]
    cols, cols_valid = taps(gather(starts_w), gather(ends_w), width)  # [pw, tw]
    # Copy only the rows and columns the region reads, then index relative to that crop.
    image = body.node("Unsqueeze", [gather(batch_index), ax0])
    low_r, low_c = body.node("ReduceMin", [rows], keepdims=0), body.node("ReduceMin", [cols], keepdims=0)
    high_r, high_c = body.node("ReduceMax", [rows], keepdims=0), body.node("ReduceMax", [cols], keepdims=0)
    lows = body.node("Concat", [image] + [body.node("Unsqueeze", [v, ax0]) for v in (low_r, low_c)], axis=0)
    highs = body.node(
        "Concat",
        [body.node("Add", [image, one_l])]
        + [body.node("Add", [body.node("Unsqueeze", [v, ax0]), one_l]) for v in (high_r, high_c)],
        axis=0,
    )
    crop = body.node("Slice", [last, lows, highs, _i64(ctx, "axes012", [0, 1, 2])])
    crop_w = body.node("Add", [body.node("Sub", [high_c, low_c]), _i64(ctx, "one_s", 1)])
    table = body.node("Reshape", [crop, _i64(ctx, "table", [-1, vector])])
    flat_rows = body.node(
        "Unsqueeze", [body.node("Sub", [rows, low_r]), _i64(ctx, "ax23", [2, 3])]
    )  # [ph, th, 1, 1]
    flat_cols = body.node("Unsqueeze", [body.node("Sub", [cols, low_c]), ax0])  # [1, 1, pw, tw] after below
    flat_cols = body.node("Unsqueeze", [flat_cols, ax0])
    cell_index = body.node("Add", [body.node("Mul", [flat_rows, crop_w]), flat_cols])  # [ph, th, pw, tw]
    if average_groups is None:
        picked = body.node("Gather", [table, cell_index], axis=0)  # [ph, th, pw, tw, C]
        cell = body.node("ReduceMax", [picked], axes=[1, 3], keepdims=0)  # [ph, pw, C]
    else:
        # channel block (gh, gw) reads rows of bin gh and columns of bin gw
        group_row = ctx.const("group_row", np.arange(groups).reshape(groups, 1, 1, 1) * groups, np.int64)
        group_col = ctx.const("group_col", np.arange(groups).reshape(1, 1, groups, 1), np.int64)
        entry = body.node(
            "Add",
            [
                body.node(
                    "Add", [body.node("Mul", [cell_index, _i64(ctx, "gg", groups * groups)]), group_row]
                ),
                group_col,
            ],
        )
        picked = body.node("Gather", [table, entry], axis=0)  # [G, th, G, tw, D]
        valid = body.node(
            "And",
            [
                body.node("Unsqueeze", [rows_valid, _i64(ctx, "ax23", [2, 3])]),
                body.node("Unsqueeze", [body.node("Unsqueeze", [cols_valid, ax0]), ax0]),
            ],
        )
        picked = body.node(
            "Where",
            [body.node("Unsqueeze", [valid, _i64(ctx, "ax4", [4])]), picked, _f32(ctx, "zero_f", 0.0)],
        )
        cell = body.node("ReduceSum", [picked, _i64(ctx, "ax13", [1, 3])], keepdims=0)  # [G, G, D]
    cell = body.node("Transpose", [cell], perm=[2, 0, 1])
    out_cond = body.node("Identity", [cond])
    graph = body.graph([(out_cond, np.bool_), (cell, np.float32)])
    trips = g.node("Squeeze", [g.node("Max", [count, _i64(ctx, "one_l", [1])])])
    (stacked,) = _loop(ctx, trips, _bool_true(ctx), [], graph, 1)
    return g.node("Slice", [stacked, _i64(ctx, "s0", [0]), count, _i64(ctx, "ax0", [0])])


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
    pooled = _region_loop(ctx, index, (hs, he, ws, we))
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
    picked = _region_loop(ctx, index, (hs, he, ws, we), (output_dim, group))  # [R, D, ph, pw]
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


# ---------------------------------------------------------------- proposals


def _caffe_anchors(base_size: int, ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """brocolli-caffe's Proposal anchors, in its float32/double arithmetic (ratios outer, scales inner).
    Unlike py-faster-rcnn, widths are not rounded and the scale is divided by base_size."""
    f32 = np.float32
    base_area = f32(base_size * base_size)
    center = f32(0.5) * (f32(base_size) - f32(1))
    anchors = []
    for ratio in (f32(r) for r in ratios):
        ratio_w = f32(math.sqrt(float(base_area / ratio)))
        ratio_h = f32(ratio_w * ratio)
        for scale in (f32(s) for s in scales):
            half_w = f32(0.5) * f32(int(float(f32(ratio_w * scale)) / base_size - 1.0 + 0.5))
            half_h = f32(0.5) * f32(int(float(f32(ratio_h * scale)) / base_size - 1.0 + 0.5))
            anchors.append([center - half_w, center - half_h, center + half_w, center + half_h])
    return np.asarray(anchors, dtype=np.float32)


def _py_faster_rcnn_anchors(base_size: int, ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """py-faster-rcnn's generate_anchors (float64, numpy's round-half-even): ratio anchors of the
    (0, 0, base-1, base-1) window, each enumerated over the scales."""

    def width_height_center(anchor: np.ndarray) -> tuple[float, float, float, float]:
        w, h = anchor[2] - anchor[0] + 1, anchor[3] - anchor[1] + 1
        return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)

    def make(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
        return np.stack(
            [x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)],
            axis=1,
        )

    base = np.array([0, 0, base_size - 1, base_size - 1], dtype=np.float64)
    w, h, x_ctr, y_ctr = width_height_center(base)
    ratio_array = np.asarray(ratios, dtype=np.float64)
    ws = np.round(np.sqrt(w * h / ratio_array))
    hs = np.round(ws * ratio_array)
    rows = []
    for anchor in make(ws, hs, x_ctr, y_ctr):
        w, h, x_ctr, y_ctr = width_height_center(anchor)
        scale_array = np.asarray(scales, dtype=np.float64)
        rows.append(make(w * scale_array, h * scale_array, x_ctr, y_ctr))
    return np.concatenate(rows).astype(np.float32)


def _check_rpn_bottoms(ctx: LayerContext, anchors: int) -> tuple[int, int]:
    scores, deltas = ctx.input_shapes[0], ctx.input_shapes[1]
    if len(scores) != 4 or len(deltas) != 4:
        raise LayerRefused(f"scores and deltas must be 4-D, got {tuple(scores)} and {tuple(deltas)}")
    if scores[1] != 2 * anchors or deltas[1] != 4 * anchors:
        raise LayerRefused(
            f"{anchors} anchors need {2 * anchors} score and {4 * anchors} delta channels, got "
            f"{scores[1]} and {deltas[1]}"
        )
    if scores[2:] != deltas[2:] or scores[0] != deltas[0]:
        raise LayerRefused(f"scores {tuple(scores)} and deltas {tuple(deltas)} differ in batch or map size")
    if product(ctx.input_shapes[2]) < 2:
        raise LayerRefused("im_info must hold (height, width[, scale])")
    return scores[2], scores[3]


def _decoded_boxes(
    ctx: LayerContext, anchors: np.ndarray, feat_stride: int, height: int, width: int
) -> tuple[list[str], str, list[str]]:
    """Boxes of every (h, w, anchor) proposal as [B, N] x1, y1, x2, y2 (clipped to the image of item 0's
    im_info), their foreground scores [B, N] and im_info's first three values. Arithmetic as
    bbox_transform_inv / transform_box: float32, centre + 0.5 * size, exp of the log-size deltas."""
    f32 = np.float32
    count = len(anchors)
    shift_y, shift_x = np.meshgrid(
        np.arange(height, dtype=f32) * f32(feat_stride),
        np.arange(width, dtype=f32) * f32(feat_stride),
        indexing="ij",
    )
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
    boxes = (shifts + anchors.reshape(1, count, 4)).reshape(-1, 4).astype(f32)  # (h, w, anchor) order
    widths = (boxes[:, 2] - boxes[:, 0]) + f32(1)
    heights = (boxes[:, 3] - boxes[:, 1]) + f32(1)
    centre_x = boxes[:, 0] + f32(0.5) * widths
    centre_y = boxes[:, 1] + f32(0.5) * heights
    g = _Main(ctx)
    foreground = g.node(
        "Slice",
        [
            ctx.inputs[0],
            _i64(ctx, "fg_start", [count]),
            _i64(ctx, "fg_end", [2 * count]),
            _i64(ctx, "ax1", [1]),
        ],
    )
    scores = g.node(
        "Reshape", [g.node("Transpose", [foreground], perm=[0, 2, 3, 1]), _i64(ctx, "flat", [0, -1])]
    )
    deltas = g.node("Reshape", [ctx.inputs[1], _i64(ctx, "delta_shape", [0, count, 4, height, width])])
    deltas = g.node("Transpose", [deltas], perm=[0, 2, 3, 4, 1])
    deltas = g.node("Reshape", [deltas, _i64(ctx, "delta_flat", [0, 4, -1])])
    parts = [ctx.graph.unique(f"{ctx.name}/delta{i}") for i in range(4)]
    ctx.graph.node("Split", [deltas], parts, name=f"{ctx.name}/Split_deltas", axis=1)
    dx, dy, dw, dh = (g.node("Squeeze", [p, _i64(ctx, "ax1", [1])]) for p in parts)
    info = g.node("Reshape", [ctx.inputs[2], _i64(ctx, "info_flat", [-1])])
    values = [
        g.node("Slice", [info, _i64(ctx, f"i{i}", [i]), _i64(ctx, f"i{i}e", [i + 1])]) for i in range(3)
    ]
    if product(ctx.input_shapes[2]) < 3:
        values[2] = _f32(ctx, "no_scale", [1.0])
    one = _f32(ctx, "one_f", [1.0])
    image_h, image_w = g.node("Sub", [values[0], one]), g.node("Sub", [values[1], one])
    half, zero = _f32(ctx, "half", 0.5), _f32(ctx, "zero_f", 0.0)

    def corners(delta_c: str, delta_s: str, size: np.ndarray, centre: np.ndarray, limit: str) -> list[str]:
        size_c = _f32(ctx, "size", size)
        predicted_centre = g.node("Add", [g.node("Mul", [delta_c, size_c]), _f32(ctx, "centre", centre)])
        predicted_size = g.node("Mul", [g.node("Exp", [delta_s]), size_c])
        half_size = g.node("Mul", [half, predicted_size])
        low = g.node("Sub", [predicted_centre, half_size])
        high = g.node("Add", [predicted_centre, half_size])
        return [g.node("Max", [zero, g.node("Min", [v, limit])]) for v in (low, high)]

    x1, x2 = corners(dx, dw, widths, centre_x, image_w)
    y1, y2 = corners(dy, dh, heights, centre_y, image_h)
    return [x1, y1, x2, y2], scores, values


def _large_enough(ctx: LayerContext, box: list[str], min_size: str) -> str:
    g = _Main(ctx)
    one = _f32(ctx, "one_f", 1.0)
    x1, y1, x2, y2 = box
    width = g.node("Add", [g.node("Sub", [x2, x1]), one])
    height = g.node("Add", [g.node("Sub", [y2, y1]), one])
    return g.node(
        "And", [g.node("GreaterOrEqual", [width, min_size]), g.node("GreaterOrEqual", [height, min_size])]
    )


def _quicksort_order(ctx: LayerContext, keys: str, count: int, num_top: int) -> str:
    """The permutation brocolli-caffe's sort_box leaves (a Hoare-style quicksort on scores, descending,
    pivot = first element, recursing right only while it starts before num_top), per image of keys
    [B, N]. Ties (every zero score of a too-small box) end up in the order that quicksort leaves them,
    so it is emulated partition by partition: each Loop iteration partitions every pending segment at
    once (segments are disjoint, so the recursion order does not matter). A partition swaps the k-th
    element below the pivot (from the left) with the k-th above it (from the right) while they cross,
    then moves the pivot to the last crossing point. A non-increasing segment never changes again, so it
    is retired at once. Returns the flat [B * N] indices in final order."""
    g_outer = _Main(ctx)
    flat_keys = g_outer.node("Reshape", [keys, _i64(ctx, "flat1", [-1])])
    total = g_outer.node("Shape", [flat_keys])
    positions = g_outer.node(
        "Range", [_i64(ctx, "zero_s", 0), g_outer.node("Squeeze", [total]), _i64(ctx, "one_s", 1)]
    )
    size = _i64(ctx, "segment_size", count)
    base = g_outer.node("Mul", [g_outer.node("Div", [positions, size]), size])
    last = g_outer.node("Add", [base, _i64(ctx, "segment_last", count - 1)])
    active = g_outer.node("Expand", [ctx.const("initially_active", np.array(count >= 2), np.bool_), total])

    body = _Body(ctx, "sort")
    body.input("level", np.int64, [])
    body.input("cond", np.bool_, [])
    key, perm = body.input("keys", np.float32), body.input("perm", np.int64)
    start, end, act = (
        body.input("start", np.int64),
        body.input("end", np.int64),
        body.input("active", np.bool_),
    )
    b = body
    i64 = TensorProto.INT64

    def at(values: str, index: str) -> str:
        return b.node("Gather", [values, index], axis=0)

    def cumsum(flags: str) -> str:
        return b.node("CumSum", [b.node("Cast", [flags], to=i64), _i64(ctx, "ax0s", 0)])

    def listed(flags: str) -> str:  # positions where flags hold, ascending, plus one pad entry
        found = b.node("Reshape", [b.node("NonZero", [flags]), _i64(ctx, "flat1", [-1])])
        return b.node("Concat", [found, _i64(ctx, "pad", [0])], axis=0)

    def safe(condition: str, index: str) -> str:
        return b.node("Where", [condition, index, _i64(ctx, "zero_s", 0)])

    zero, one = _i64(ctx, "zero_s", 0), _i64(ctx, "one_s", 1)
    pivot = at(key, start)
    below = b.node("And", [act, b.node("Less", [key, pivot])])
    above = b.node("And", [act, b.node("Greater", [key, pivot])])
    below_sum, above_sum = cumsum(below), cumsum(above)
    below_before = at(below_sum, start)  # the pivot itself is neither below nor above
    above_to_end = at(above_sum, end)
    rank_below = b.node("Sub", [below_sum, below_before])
    above_after = b.node("Sub", [above_to_end, above_sum])
    crossing = b.node("And", [below, b.node("GreaterOrEqual", [above_after, rank_below])])
    crossing_sum = cumsum(crossing)
    swaps = b.node("Sub", [at(crossing_sum, end), at(crossing_sum, start)])
    below_list, above_list = listed(below), listed(above)
    below_swapped = b.node("And", [below, b.node("LessOrEqual", [rank_below, swaps])])
    from_above = at(above_list, safe(below_swapped, b.node("Sub", [above_to_end, rank_below])))
    rank_above = b.node("Add", [above_after, one])
    above_swapped = b.node("And", [above, b.node("LessOrEqual", [rank_above, swaps])])
    from_below = at(
        below_list, safe(above_swapped, b.node("Sub", [b.node("Add", [below_before, rank_above]), one]))
    )
    source = b.node(
        "Where", [below_swapped, from_above, b.node("Where", [above_swapped, from_below, positions])]
    )
    # Where the pivot goes: max(next element above the pivot from the right, last swapped-in position).
    above_count = b.node("Sub", [above_to_end, at(above_sum, start)])
    has_next = b.node("Greater", [above_count, swaps])
    next_above = at(above_list, safe(has_next, b.node("Sub", [b.node("Sub", [above_to_end, swaps]), one])))
    next_above = b.node("Where", [has_next, next_above, start])
    has_swapped = b.node("Greater", [swaps, zero])
    last_swapped = at(
        below_list, safe(has_swapped, b.node("Sub", [b.node("Add", [below_before, swaps]), one]))
    )
    last_swapped = b.node("Where", [has_swapped, last_swapped, start])
    right = b.node("Max", [next_above, last_swapped])
    at_start = b.node("And", [act, b.node("Equal", [positions, start])])
    at_right = b.node("And", [act, b.node("Equal", [positions, right])])
    pivot_move = b.node("Where", [at_start, right, b.node("Where", [at_right, start, positions])])
    order = at(source, pivot_move)
    new_key, new_perm = at(key, order), at(perm, order)
    # Segments left and right of the pivot; the right one only while it starts before num_top.
    left_side, right_side = b.node("Less", [positions, right]), b.node("Greater", [positions, right])
    right_minus, right_plus = b.node("Sub", [right, one]), b.node("Add", [right, one])
    new_start = b.node("Where", [right_side, right_plus, start])
    new_end = b.node("Where", [left_side, right_minus, end])
    left_ok = b.node("And", [left_side, b.node("Less", [start, right_minus])])
    right_ok = b.node(
        "And",
        [
            right_side,
            b.node(
                "And",
                [
                    b.node("Less", [right_plus, end]),
                    b.node("Less", [b.node("Sub", [right_plus, base]), _i64(ctx, "num_top", num_top)]),
                ],
            ),
        ],
    )
    pending = b.node("And", [act, b.node("Or", [left_ok, right_ok])])
    previous = b.node(
        "Concat",
        [
            _f32(ctx, "inf", [np.inf]),
            b.node("Slice", [new_key, _i64(ctx, "s0", [0]), _i64(ctx, "sm1", [-1])]),
        ],
        axis=0,
    )
    ascent = b.node(
        "And",
        [
            pending,
            b.node("And", [b.node("Greater", [positions, new_start]), b.node("Less", [previous, new_key])]),
        ],
    )
    ascent_sum = cumsum(ascent)
    ascents = b.node("Sub", [at(ascent_sum, new_end), at(ascent_sum, new_start)])
    pending = b.node("And", [pending, b.node("Greater", [ascents, zero])])
    more = b.node("Greater", [b.node("ReduceMax", [b.node("Cast", [pending], to=i64)], keepdims=0), zero])
    graph = body.graph(
        [
            (more, np.bool_),
            (new_key, np.float32),
            (new_perm, np.int64),
            (new_start, np.int64),
            (new_end, np.int64),
            (pending, np.bool_),
        ]
    )
    loop_more = ctx.const("sort_more", np.array(count >= 2), np.bool_)
    outs = _loop(
        ctx, g_outer.node("Squeeze", [total]), loop_more, [flat_keys, positions, base, last, active], graph, 5
    )
    return outs[1]


def _greedy_nms(
    ctx: LayerContext,
    box: list[str],
    alive: str,
    trip: str,
    post_nms: int,
    threshold: float,
    disjoint_is_zero: bool,
) -> tuple[str, str]:
    """Greedy NMS over [B, P] boxes already in score order: keep the first alive box, drop every later box
    whose IoU with it (float32, areas with +1) exceeds threshold, stop after post_nms per image. One Loop
    iteration per kept box. Returns the flat (image, column) of every kept box, image-major."""
    g = _Main(ctx)
    one = _f32(ctx, "one_f", 1.0)
    x1, y1, x2, y2 = box
    areas = g.node(
        "Mul", [g.node("Add", [g.node("Sub", [x2, x1]), one]), g.node("Add", [g.node("Sub", [y2, y1]), one])]
    )
    columns = g.node(
        "Unsqueeze",
        [
            g.node(
                "Range",
                [
                    _i64(ctx, "zero_s", 0),
                    g.node("Gather", [g.node("Shape", [alive]), _i64(ctx, "one_s", 1)]),
                    _i64(ctx, "one_s", 1),
                ],
            ),
            _i64(ctx, "ax0", [0]),
        ],
    )
    images = g.node("Gather", [g.node("Shape", [alive]), _i64(ctx, "zero_s", 0)])
    counts0 = g.node(
        "Expand", [_i64(ctx, "zero_l", [0]), g.node("Unsqueeze", [images, _i64(ctx, "ax0", [0])])]
    )

    body = _Body(ctx, "nms")
    body.input("step", np.int64, [])
    body.input("cond", np.bool_, [])
    alive_in, kept_in = body.input("alive", np.bool_), body.input("kept", np.int64)
    b = body
    flags = b.node("Cast", [alive_in], to=TensorProto.INT32)
    any_alive = b.node(
        "Greater", [b.node("ReduceMax", [flags], axes=[1], keepdims=0), _i32(ctx, "zero_i32", 0)]
    )
    post = _i64(ctx, "post_nms", post_nms)
    taking = b.node("And", [any_alive, b.node("Less", [kept_in, post])])
    chosen = b.node("ArgMax", [flags], axis=1, keepdims=1)  # first alive box of each image

    def of_chosen(values: str) -> str:
        return b.node("GatherElements", [values, chosen], axis=1)

    cx1, cy1, cx2, cy2, carea = (of_chosen(v) for v in (x1, y1, x2, y2, areas))
    one_b = _f32(ctx, "one_f", 1.0)
    zero_f = _f32(ctx, "zero_f", 0.0)
    inter_w = b.node(
        "Max",
        [b.node("Add", [b.node("Sub", [b.node("Min", [cx2, x2]), b.node("Max", [cx1, x1])]), one_b]), zero_f],
    )
    inter_h = b.node(
        "Max",
        [b.node("Add", [b.node("Sub", [b.node("Min", [cy2, y2]), b.node("Max", [cy1, y1])]), one_b]), zero_f],
    )
    inter = b.node("Mul", [inter_w, inter_h])
    iou = b.node("Div", [inter, b.node("Sub", [b.node("Add", [carea, areas]), inter])])
    if disjoint_is_zero:
        apart = b.node(
            "Or",
            [
                b.node("Or", [b.node("Greater", [cx1, x2]), b.node("Greater", [cy1, y2])]),
                b.node("Or", [b.node("Less", [cx2, x1]), b.node("Less", [cy2, y1])]),
            ],
        )
        iou = b.node("Where", [apart, zero_f, iou])
    survives = b.node("Not", [b.node("Greater", [iou, _f32(ctx, "nms_thresh", np.float32(threshold))])])
    survives = b.node("And", [survives, b.node("Not", [b.node("Equal", [columns, chosen])])])
    new_alive = b.node("And", [alive_in, survives])
    new_kept = b.node("Add", [kept_in, b.node("Cast", [taking], to=TensorProto.INT64)])
    still = b.node(
        "And", [new_alive, b.node("Unsqueeze", [b.node("Less", [new_kept, post]), _i64(ctx, "ax1", [1])])]
    )
    more = b.node(
        "Greater",
        [
            b.node("ReduceMax", [b.node("Cast", [still], to=TensorProto.INT32)], keepdims=0),
            _i32(ctx, "zero_i32", 0),
        ],
    )
    column_out = b.node("Squeeze", [chosen, _i64(ctx, "ax1", [1])])
    taking_out = b.node("Identity", [taking])
    graph = body.graph(
        [
            (more, np.bool_),
            (new_alive, np.bool_),
            (new_kept, np.int64),
            (column_out, np.int64),
            (taking_out, np.bool_),
        ]
    )
    _, _, picked, valid = _loop(ctx, trip, _bool_true(ctx), [alive, counts0], graph, 4)
    # [T, B] -> image-major flat lists
    picked = g.node("Reshape", [g.node("Transpose", [picked], perm=[1, 0]), _i64(ctx, "flat1", [-1])])
    valid_t = g.node("Transpose", [valid], perm=[1, 0])
    image_of = g.node(
        "Expand",
        [
            g.node(
                "Unsqueeze",
                [
                    g.node("Range", [_i64(ctx, "zero_s", 0), images, _i64(ctx, "one_s", 1)]),
                    _i64(ctx, "ax1", [1]),
                ],
            ),
            g.node("Shape", [valid_t]),
        ],
    )
    valid_flat = g.node("Reshape", [valid_t, _i64(ctx, "flat1", [-1])])
    image_index = g.node(
        "Compress", [g.node("Reshape", [image_of, _i64(ctx, "flat1", [-1])]), valid_flat], axis=0
    )
    column = g.node("Compress", [picked, valid_flat], axis=0)
    return image_index, column


def _gather_rows(
    ctx: LayerContext, values: list[str], image_index: str, column: str, width: str
) -> list[str]:
    """values [B, P] at (image, column) -> [K] each."""
    g = _Main(ctx)
    flat_index = g.node("Add", [g.node("Mul", [image_index, width]), column])
    return [
        g.node("Gather", [g.node("Reshape", [v, _i64(ctx, "flat1", [-1])]), flat_index], axis=0)
        for v in values
    ]


def _write_rois(
    ctx: LayerContext, image_index: str, coords: list[str], score: str, score_shape: list[int]
) -> None:
    g = _Main(ctx)
    columns = [g.node("Cast", [image_index], to=TensorProto.FLOAT), *coords]
    rows = g.node("Concat", [g.node("Unsqueeze", [c, _i64(ctx, "ax1", [1])]) for c in columns], axis=1)
    ctx.graph.node("Identity", [rows], [ctx.outputs[0]], name=ctx.name)
    _UNDECLARED.setdefault(ctx.graph, {})[ctx.outputs[0]] = rows
    if len(ctx.outputs) > 1:
        ctx.graph.node(
            "Reshape",
            [score, _i64(ctx, "score_shape", score_shape)],
            [ctx.outputs[1]],
            name=f"{ctx.name}/scores",
        )


@converter("Proposal", arity=(3, 3, 1, 2))
def proposal(ctx: LayerContext) -> list[Shape]:
    """brocolli-caffe's C++ Proposal (the golden_v2 producer): bottoms foreground/background scores
    [B, 2A, H, W], deltas [B, 4A, H, W], im_info. Boxes too small (side + 1 < min_size, im_info's scale
    NOT applied) are kept with score 0; every image uses item 0's im_info (the C++ never advances it);
    quicksort order (ties included), greedy NMS (IoU 0 for disjoint boxes, drop when IoU > nms_thresh)
    over the first pre_nms_topn, at most post_nms_topn rows per image."""
    param = ctx.layer.proposal_param
    ratios, scales = list(param.ratio), list(param.scale)
    if not ratios or not scales:
        raise LayerRefused(
            "proposal_param needs at least one ratio and one scale (Caffe reads past its arrays)"
        )
    if param.post_nms_topn < 1 or param.pre_nms_topn < 1:
        raise LayerRefused("pre_nms_topn and post_nms_topn must be at least 1")
    if param.base_size < 1 or param.feat_stride < 1:
        raise LayerRefused("base_size and feat_stride must be positive")
    info = ctx.input_shapes[2]
    if product(info[1:] if len(info) > 1 else info) > 3:
        # Same type and parameter names, other arithmetic: PVANet-family Proposal layers read
        # im_info[2:4] as min-size scales and size anchors as round(ratio_w) * scale.
        raise LayerRefused(
            f"im_info {tuple(info)} has more than 3 values per image, as the PVANet-family Proposal layers "
            "read them (other anchors and min-size scaling); camcaffe reproduces brocolli-caffe's Proposal, "
            "which reads (height, width) only"
        )
    anchors = _caffe_anchors(int(param.base_size), ratios, scales)
    height, width = _check_rpn_bottoms(ctx, len(anchors))
    count = height * width * len(anchors)
    box, scores, _ = _decoded_boxes(ctx, anchors, int(param.feat_stride), height, width)
    g = _Main(ctx)
    valid = _large_enough(ctx, box, _f32(ctx, "min_size", float(np.float32(int(param.min_size)))))
    scores = g.node("Mul", [g.node("Cast", [valid], to=TensorProto.FLOAT), scores])
    order = _quicksort_order(ctx, scores, count, int(param.pre_nms_topn))
    considered = min(count, int(param.pre_nms_topn))
    keep_shape = _i64(ctx, "keep_shape", [-1, count])

    def sorted_head(values: str) -> str:
        flat = g.node("Gather", [g.node("Reshape", [values, _i64(ctx, "flat1", [-1])]), order], axis=0)
        return g.node(
            "Slice",
            [
                g.node("Reshape", [flat, keep_shape]),
                _i64(ctx, "s0", [0]),
                _i64(ctx, "head", [considered]),
                _i64(ctx, "ax1", [1]),
            ],
        )

    ranked = [sorted_head(v) for v in [*box, scores]]
    alive = g.node("Expand", [ctx.const("alive", np.array(True), np.bool_), g.node("Shape", [ranked[0]])])
    trip = _i64(ctx, "trip", min(considered, int(param.post_nms_topn)))
    image_index, column = _greedy_nms(
        ctx, ranked[:4], alive, trip, int(param.post_nms_topn), param.nms_thresh, True
    )
    values = _gather_rows(ctx, ranked, image_index, column, _i64(ctx, "considered", considered))
    _write_rois(ctx, image_index, values[:4], values[4], [-1])
    ctx.batch_axis_kept = False
    rows = ctx.shape[0] * int(param.post_nms_topn)
    return [[rows, 5], [rows]][: len(ctx.outputs)]


# ---------------------------------------------------------------- Python layers

# py-faster-rcnn / py-R-FCN lib/rpn/proposal_layer.py. Its thresholds come from fast_rcnn.config, which
# a deploy file cannot see: the TEST defaults of both repositories are taken.
_PY_PROPOSAL = ("rpn.proposal_layer", "ProposalLayer")
_PY_PRE_NMS_TOP_N = 6000
_PY_POST_NMS_TOP_N = 300
_PY_NMS_THRESH = 0.7
_PY_MIN_SIZE = 16
# param_str keys: feat_stride (py-faster-rcnn), scales (py-R-FCN), ratios and base_size (later forks).
_PY_PROPOSAL_KEYS = {"feat_stride", "scales", "ratios", "base_size"}


def parse_param_str(text: str) -> dict[str, Any]:
    """The YAML mappings these layers are given ("'feat_stride': 16", "{'scales': [8, 16]}", one key a
    line), read as Python literals; YAML tags such as !!python/tuple are dropped."""
    text = re.sub(r"!!python/\w+", "", text).strip()
    if not text:
        return {}
    body = text[1:-1] if text.startswith("{") and text.endswith("}") else text
    entries = [line for line in body.splitlines() if line.strip()] if "\n" in body else [body]
    result: dict[str, Any] = {}
    for entry in entries:
        quoted = re.sub(r"(^|,)\s*([A-Za-z_]\w*)\s*:", r"\1'\2':", entry.strip().rstrip(","))
        try:
            value = ast.literal_eval("{" + quoted + "}")
        except (ValueError, SyntaxError) as exc:
            raise LayerRefused(f"cannot read param_str {text!r} ({exc.__class__.__name__})") from None
        result.update(value)
    return result


def _number_list(params: dict[str, Any], key: str, default: Sequence[float]) -> list[float]:
    value = params.get(key, default)
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise LayerRefused(f"param_str '{key}' must be a number or a list of numbers, got {value!r}")
    return [float(v) for v in values]


@converter("Python", arity=(0, None, 0, None))
def python_layer(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.python_param
    module, layer = param.module, param.layer
    if (module, layer) != _PY_PROPOSAL:
        raise LayerRefused(
            f"Python layer '{ctx.name}' (module {module or '?'}, layer {layer or '?'}) is not supported: its "
            "forward is Python code that runs in pycaffe; camcaffe converts only rpn.proposal_layer."
            "ProposalLayer (py-faster-rcnn / py-R-FCN). Replace it by a supported layer type"
        )
    if len(ctx.inputs) != 3 or len(ctx.outputs) not in (1, 2):
        raise LayerRefused("ProposalLayer takes 3 bottoms (scores, deltas, im_info) and 1 or 2 tops")
    return _py_proposal(ctx, parse_param_str(param.param_str))


def _py_proposal(ctx: LayerContext, params: dict[str, Any]) -> list[Shape]:
    """py-faster-rcnn's ProposalLayer at TEST: anchors of generate_anchors, boxes decoded and clipped,
    boxes with a side + 1 below 16 * im_info[2] REMOVED, stable descending sort (ties: lower (h, w, a)
    index first: numpy's argsort()[::-1] leaves ties in an unspecified order), first 6000, NMS as its
    default GPU kernel (IoU with +1 areas, drop when > 0.7), first 300; batch index 0, scores [K, 1]."""
    unknown = sorted(set(params) - _PY_PROPOSAL_KEYS)
    if unknown:
        raise LayerRefused(
            f"param_str keys {unknown} are not read by py-faster-rcnn/py-R-FCN's ProposalLayer; a fork that "
            f"reads them computes something camcaffe does not know (known: {sorted(_PY_PROPOSAL_KEYS)})"
        )
    if "feat_stride" not in params:
        raise LayerRefused("param_str must give 'feat_stride' (the layer reads it unconditionally)")
    feat_stride = params["feat_stride"]
    base_size = params.get("base_size", 16)
    for key, value in (("feat_stride", feat_stride), ("base_size", base_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LayerRefused(f"param_str '{key}' must be a positive integer, got {value!r}")
    if ctx.shape[0] != 1:
        raise LayerRefused(f"the layer asserts a batch of 1 item, the net feeds {ctx.shape[0]}")
    if product(ctx.input_shapes[2]) < 3:
        raise LayerRefused("im_info must hold (height, width, scale): the layer reads im_info[2]")
    ctx.batch_fixed = True
    anchors = _py_faster_rcnn_anchors(
        base_size, _number_list(params, "ratios", (0.5, 1, 2)), _number_list(params, "scales", (8, 16, 32))
    )
    height, width = _check_rpn_bottoms(ctx, len(anchors))
    box, scores, info = _decoded_boxes(ctx, anchors, feat_stride, height, width)
    g = _Main(ctx)
    min_size = g.node("Mul", [_f32(ctx, "min_size", [float(_PY_MIN_SIZE)]), info[2]])
    keep = g.node("Reshape", [_large_enough(ctx, box, min_size), _i64(ctx, "flat1", [-1])])
    kept = [g.node("Compress", [v, keep], axis=1) for v in [*box, scores]]  # [1, n]
    available = g.node("Gather", [g.node("Shape", [kept[4]]), _i64(ctx, "one_l", [1])])
    take = g.node("Min", [available, _i64(ctx, "pre_nms", [_PY_PRE_NMS_TOP_N])])
    value_names = [ctx.graph.unique(f"{ctx.name}/top_scores"), ctx.graph.unique(f"{ctx.name}/top_index")]
    ctx.graph.node("TopK", [kept[4], take], value_names, name=f"{ctx.name}/TopK", axis=1, largest=1, sorted=1)
    pad = _f32(ctx, "pad", [[0.0]])
    ranked = [
        g.node("Concat", [g.node("GatherElements", [v, value_names[1]], axis=1), pad], axis=1) for v in kept
    ]
    slots = g.node("Add", [take, _i64(ctx, "one_l", [1])])
    columns = g.node("Range", [_i64(ctx, "zero_s", 0), g.node("Squeeze", [slots]), _i64(ctx, "one_s", 1)])
    alive = g.node("Unsqueeze", [g.node("Less", [columns, take]), _i64(ctx, "ax0", [0])])
    trip = g.node(
        "Squeeze",
        [
            g.node(
                "Max",
                [g.node("Min", [take, _i64(ctx, "post_nms", [_PY_POST_NMS_TOP_N])]), _i64(ctx, "one_l", [1])],
            )
        ],
    )
    image_index, column = _greedy_nms(ctx, ranked[:4], alive, trip, _PY_POST_NMS_TOP_N, _PY_NMS_THRESH, False)
    values = _gather_rows(ctx, ranked, image_index, column, g.node("Squeeze", [slots]))
    _write_rois(ctx, image_index, values[:4], values[4], [-1, 1])
    ctx.batch_axis_kept = False
    return [[_PY_POST_NMS_TOP_N, 5], [_PY_POST_NMS_TOP_N, 1]][: len(ctx.outputs)]
