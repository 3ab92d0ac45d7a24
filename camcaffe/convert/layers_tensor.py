"""Layers that combine or reshape blobs: Eltwise, Concat, Slice, Split, Flatten, Reshape, Crop,
ArgMax."""

from __future__ import annotations

import numpy as np

from camcaffe.convert.axes import canonical_axis, product
from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


@converter("Eltwise", arity=(2, None, 1, 1))
def eltwise(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.eltwise_param
    shape = ctx.shape
    for other in ctx.input_shapes[1:]:
        if list(other) != list(shape):
            raise LayerRefused(f"bottom shapes differ: {tuple(shape)} vs {tuple(other)}")
    coeffs = list(param.coeff)
    if coeffs and param.operation != param.SUM:
        raise LayerRefused("coeff is only allowed with operation SUM")
    if coeffs and len(coeffs) != len(ctx.inputs):
        raise LayerRefused(f"{len(coeffs)} coeff values for {len(ctx.inputs)} bottoms; give one per bottom")
    if param.operation == param.SUM:
        terms = []
        for index, (tensor, coeff) in enumerate(
            zip(ctx.inputs, coeffs or [1.0] * len(ctx.inputs), strict=True)
        ):
            if coeff == 1.0:
                terms.append(tensor)
            else:
                terms.append(
                    ctx.node("Mul", [tensor, ctx.const(f"coeff{index}", np.float32(coeff), np.float32)])
                )
        ctx.node("Sum", terms, ctx.outputs)
    elif param.operation == param.PROD:
        value = ctx.inputs[0]
        for tensor in ctx.inputs[1:-1]:
            value = ctx.node("Mul", [value, tensor])
        if len(ctx.inputs) > 1:
            ctx.node("Mul", [value, ctx.inputs[-1]], ctx.outputs)
        else:
            ctx.node("Identity", [value], ctx.outputs)
    else:
        ctx.node("Max", list(ctx.inputs), ctx.outputs)
    return [shape]


@converter("Concat", arity=(1, None, 1, 1))
def concat(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.concat_param
    rank = len(ctx.shape)
    axis = int(param.concat_dim) if param.HasField("concat_dim") else canonical_axis(param.axis, rank, "axis")
    if axis >= rank:
        raise LayerRefused(f"concat_dim {axis} is out of range for a {rank}-D blob")
    total = 0
    for other in ctx.input_shapes:
        if len(other) != rank or any(
            a != b for i, (a, b) in enumerate(zip(other, ctx.shape, strict=True)) if i != axis
        ):
            raise LayerRefused(
                f"bottom shapes {tuple(ctx.shape)} and {tuple(other)} differ outside axis {axis}"
            )
        total += other[axis]
    if axis == 0:
        ctx.batch_axis_kept = len(ctx.inputs) == 1
    if len(ctx.inputs) == 1:
        ctx.node("Identity", ctx.inputs, ctx.outputs)
    else:
        ctx.node("Concat", ctx.inputs, ctx.outputs, axis=axis)
    out = list(ctx.shape)
    out[axis] = total
    return [out]


@converter("Slice", arity=(1, 1, 1, None))
def slice_layer(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.slice_param
    rank = len(ctx.shape)
    axis = int(param.slice_dim) if param.HasField("slice_dim") else canonical_axis(param.axis, rank, "axis")
    if axis >= rank:
        raise LayerRefused(f"slice_dim {axis} is out of range for a {rank}-D blob")
    size = ctx.shape[axis]
    count = len(ctx.outputs)
    points = [int(p) for p in param.slice_point]
    if points:
        if len(points) != count - 1:
            raise LayerRefused(
                f"{len(points)} slice_point values for {count} tops; give one fewer than the tops"
            )
        bounds = [0, *points, size]
        if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise LayerRefused(f"slice_point {points} must increase strictly within (0, {size})")
    else:
        if size % count:
            raise LayerRefused(f"axis {axis} of size {size} cannot be split evenly into {count} tops")
        bounds = [i * size // count for i in range(count + 1)]
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    if axis == 0:
        ctx.batch_axis_kept = count == 1
        ctx.batch_fixed = count > 1
    if count == 1:
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
    else:
        ctx.node("Split", [ctx.inputs[0], ctx.const("split", sizes)], ctx.outputs, axis=axis)
    shapes = []
    for part in sizes:
        out = list(ctx.shape)
        out[axis] = part
        shapes.append(out)
    return shapes


@converter("Split", arity=(1, 1, 1, None))
def split(ctx: LayerContext) -> list[Shape]:
    for output in ctx.outputs:
        ctx.graph.node("Identity", ctx.inputs[:1], [output], name=f"{ctx.name}/{output}")
    return [list(ctx.shape) for _ in ctx.outputs]


@converter("Flatten")
def flatten(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.flatten_param
    rank = len(ctx.shape)
    start = canonical_axis(param.axis, rank, "flatten_param.axis")
    end = canonical_axis(param.end_axis, rank, "flatten_param.end_axis")
    if end < start:
        raise LayerRefused(f"end_axis {param.end_axis} comes before axis {param.axis}")
    out = [*ctx.shape[:start], product(ctx.shape[start : end + 1]), *ctx.shape[end + 1 :]]
    if start == 0:
        ctx.batch_axis_kept = end == 0
        target = [-1, *ctx.shape[end + 1 :]]
    else:
        target = [0] * start + [out[start]] + list(ctx.shape[end + 1 :])
    ctx.node("Reshape", [ctx.inputs[0], ctx.const("shape", target)], ctx.outputs)
    return [out]


@converter("Reshape")
def reshape(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.reshape_param
    shape = list(ctx.shape)
    rank = len(shape)
    if not -(rank + 1) <= param.axis <= rank:
        raise LayerRefused(f"reshape_param.axis {param.axis} is out of range for a {rank}-D blob")
    start = param.axis if param.axis >= 0 else rank + param.axis + 1
    if param.num_axes < -1:
        raise LayerRefused(f"reshape_param.num_axes must be -1 or more, got {param.num_axes}")
    end = rank if param.num_axes == -1 else start + param.num_axes
    if end > rank:
        raise LayerRefused(f"axis {start} + num_axes {param.num_axes} exceeds the blob's {rank} axes")
    spec = [int(d) for d in param.shape.dim]
    if spec.count(-1) > 1:
        raise LayerRefused("at most one reshape dimension may be -1")
    new_dims: list[int] = []
    for index, dim in enumerate(spec):
        if dim == 0:
            if start + index >= rank:
                raise LayerRefused(f"dim {index} is 0 (copy) but the bottom has no axis {start + index}")
            new_dims.append(shape[start + index])
        elif dim == -1 or dim > 0:
            new_dims.append(dim)
        else:
            raise LayerRefused(f"reshape dimension {dim} is invalid (use positive, 0 to copy, -1 to infer)")
    out = shape[:start] + new_dims + shape[end:]
    known = product(d for d in out if d != -1)
    total = product(shape)
    if -1 in out:
        if known == 0 or total % known:
            raise LayerRefused(f"cannot infer -1: {total} elements do not divide into {out}")
        out[out.index(-1)] = total // known
    if product(out) != total:
        raise LayerRefused(f"reshape to {tuple(out)} changes the element count ({total} -> {product(out)})")
    # Build the ONNX target so that the batch is never baked in when it can be carried along.
    target = list(out)
    batch_copied = start > 0 or (spec and spec[0] == 0)
    if batch_copied:
        target[0] = 0
    elif -1 in spec:
        target[start + spec.index(-1)] = -1
        ctx.batch_axis_kept = False
    else:
        ctx.batch_axis_kept = False
        ctx.batch_fixed = True
    ctx.node("Reshape", [ctx.inputs[0], ctx.const("shape", target)], ctx.outputs)
    return [out]


@converter("Crop", arity=(2, 2, 1, 1))
def crop(ctx: LayerContext) -> list[Shape]:
    if len(ctx.inputs) != 2:
        raise LayerRefused("Crop needs two bottoms (the blob to crop and the reference)")
    param = ctx.layer.crop_param
    shape, reference = ctx.input_shapes
    rank = len(shape)
    if len(reference) != rank:
        raise LayerRefused(f"bottoms have different ranks: {tuple(shape)} and {tuple(reference)}")
    axis = canonical_axis(param.axis, rank, "crop_param.axis")
    offsets = [int(o) for o in param.offset]
    cropped = rank - axis
    if not offsets:
        offsets = [0] * cropped
    elif len(offsets) == 1:
        offsets = offsets * cropped
    elif len(offsets) != cropped:
        raise LayerRefused(f"{len(offsets)} offsets for {cropped} cropped axes; give one or one per axis")
    out = list(shape)
    starts, ends, axes = [], [], []
    for index, offset in enumerate(offsets):
        dim = axis + index
        if offset + reference[dim] > shape[dim]:
            raise LayerRefused(
                f"crop of axis {dim} at offset {offset} to size {reference[dim]} exceeds its size "
                f"{shape[dim]}"
            )
        out[dim] = reference[dim]
        if dim == 0:
            if offset == 0 and reference[0] == shape[0]:
                continue
            ctx.batch_fixed = True
        if offset == 0 and reference[dim] == shape[dim]:
            continue
        starts.append(offset)
        ends.append(offset + reference[dim])
        axes.append(dim)
    if axes:
        ctx.node(
            "Slice",
            [ctx.inputs[0], ctx.const("starts", starts), ctx.const("ends", ends), ctx.const("axes", axes)],
            ctx.outputs,
        )
    else:
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
    return [out]


@converter("ArgMax")
def argmax(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.argmax_param
    shape = list(ctx.shape)
    rank = len(shape)
    top_k = int(param.top_k)
    if top_k < 1:
        raise LayerRefused("argmax_param.top_k must be at least 1")
    if param.HasField("axis"):
        axis = canonical_axis(param.axis, rank, "argmax_param.axis")
        if top_k > shape[axis]:
            raise LayerRefused(f"top_k {top_k} exceeds axis {axis} of size {shape[axis]}")
        if axis == 0:
            ctx.batch_axis_kept = False
        values, indices = _top_k_last_index_first(ctx, ctx.inputs[0], axis, shape[axis], top_k)
        if param.out_max_val:
            ctx.node("Identity", [values], ctx.outputs)
        else:
            ctx.node("Identity", [indices], ctx.outputs)
        out = list(shape)
        out[axis] = top_k
        return [out]
    depth = product(shape[1:])
    if top_k > depth:
        raise LayerRefused(f"top_k {top_k} exceeds the {depth} values per item")
    flat = ctx.node("Flatten", [ctx.inputs[0]], axis=1) if rank != 2 else ctx.inputs[0]
    values, indices = _top_k_last_index_first(ctx, flat, 1, depth, top_k)
    rows = [ctx.node("Unsqueeze", [indices, ctx.const("axis1", [1])])]
    if param.out_max_val:
        rows.append(ctx.node("Unsqueeze", [values, ctx.const("axis1b", [1])]))
    stacked = ctx.node("Concat", rows, axis=1) if len(rows) == 2 else rows[0]
    out_rank = max(3, rank)
    out = [shape[0], len(rows), top_k] + [1] * (out_rank - 3)
    if out_rank > 3:
        ctx.node("Unsqueeze", [stacked, ctx.const("trailing", list(range(3, out_rank)))], ctx.outputs)
    else:
        ctx.node("Identity", [stacked], ctx.outputs)
    return [out]


def _top_k_last_index_first(
    ctx: LayerContext, tensor: str, axis: int, size: int, top_k: int
) -> tuple[str, str]:
    """TopK whose ties go to the larger index, as Caffe's sort of (value, index) pairs does."""
    reversed_tensor = ctx.node(
        "Slice",
        [
            tensor,
            ctx.const("rev_starts", [-1]),
            ctx.const("rev_ends", [INT64_MIN]),
            ctx.const("rev_axes", [axis]),
            ctx.const("rev_steps", [-1]),
        ],
    )
    values, reversed_indices = (
        ctx.graph.unique(f"{ctx.name}/topk_values"),
        ctx.graph.unique(f"{ctx.name}/topk_indices"),
    )
    ctx.graph.node(
        "TopK",
        [reversed_tensor, ctx.const("k", [top_k])],
        [values, reversed_indices],
        name=f"{ctx.name}/TopK",
        axis=axis,
        largest=1,
        sorted=1,
    )
    indices = ctx.node("Sub", [ctx.const("last", np.int64(size - 1)), reversed_indices])
    return values, ctx.node("Cast", [indices], to=1)
