"""Segmentation and resampling fork layers: MaxUnPool, Upsample (nearest; SegNet's mask unpooling), BN
(PSPNet, caffe-segnet and brocolli-caffe variants), Interp (PSPNet/DeepLab), Pad, PixelShuffle, Resize and
BilinearInterpolate (brocolli-caffe).

Semantics follow each fork's C++: brocolli-caffe 9.0.2 (the golden_v2 producer) for MaxUnPool, nearest
Upsample, Pad, PixelShuffle, Resize, BilinearInterpolate and its BN; alexgkendall/caffe-segnet for the
two-bottom Upsample and the two-blob BN; hszhao/PSPNet for Interp (caffe_cpu_interp2) and the four-blob BN."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter

# ----------------------------------------------------------------------------------------- helpers


def _require_4d(ctx: LayerContext, index: int = 0) -> list[int]:
    shape = list(ctx.input_shapes[index])
    if len(shape) != 4:
        raise LayerRefused(f"needs a 4-D (N, C, H, W) bottom, got {tuple(shape)}")
    return shape


def _sizes_like(ctx: LayerContext, tensor: str, tail: list[int], suffix: str) -> str:
    """[N, C, *tail] with N and C read from the tensor at run time, so the batch stays symbolic."""
    shape = ctx.node("Shape", [tensor])
    leading = ctx.node(
        "Slice", [shape, ctx.const(f"{suffix}_lead_start", [0]), ctx.const(f"{suffix}_lead_end", [2])]
    )
    return ctx.node("Concat", [leading, ctx.const(f"{suffix}_tail", tail)], axis=0)


def _resize(
    ctx: LayerContext, tensor: str, size: tuple[int, int], outputs: list[str] | None, **attributes
) -> str:
    sizes = _sizes_like(ctx, tensor, list(size), "sizes")
    return ctx.node("Resize", [tensor, "", "", sizes], outputs, **attributes)


def _crop_hw(ctx: LayerContext, tensor: str, top: int, left: int, height: int, width: int) -> str:
    return ctx.node(
        "Slice",
        [
            tensor,
            ctx.const("crop_starts", [top, left]),
            ctx.const("crop_ends", [top + height, left + width]),
            ctx.const("crop_axes", [2, 3]),
        ],
    )


def _unpool(ctx: LayerContext, values: str, mask: str, shape: list[int], out_h: int, out_w: int) -> None:
    """Caffe's mask unpooling: a zero plane of out_h x out_w per (n, c), then plane.flat[int(mask[i])] =
    values[i] for i in increasing order, so the LAST write wins on a repeated index. ScatterElements leaves
    the order of repeated indices unspecified (GPU kernels race), so the repeats are resolved first: the
    entries are sorted by (index, i), each index keeps its last entry and the others go to a spare slot
    that is cut off afterwards. The mask is the plane index of a MAX Pooling top (>= 0): an index past
    the plane stops Caffe and makes ScatterElements fail; -1 (an empty pooling window, where Caffe writes
    outside the plane) lands in the spare slot."""
    count = shape[2] * shape[3]
    plane = out_h * out_w
    flat_shape = ctx.const("flat_shape", [0, 0, -1])
    flat_values = ctx.node("Reshape", [values, flat_shape])
    index = ctx.node("Reshape", [ctx.node("Cast", [mask], to=TensorProto.INT64), flat_shape])  # truncates
    # key = index * count + i: unique, sorted by index then position.
    key = ctx.node(
        "Add",
        [
            ctx.node("Mul", [index, ctx.const("count", np.int64(count))]),
            ctx.const("positions", np.arange(count, dtype=np.int64)),
        ],
    )
    sorted_key, order = (
        ctx.graph.unique(f"{ctx.name}/sorted_key"),
        ctx.graph.unique(f"{ctx.name}/order"),
    )
    ctx.node("TopK", [key, ctx.const("k", [count])], [sorted_key, order], axis=-1, largest=0, sorted=1)
    sorted_index = ctx.node("GatherElements", [index, order], axis=2)
    following = ctx.node(
        "Concat",
        [
            ctx.node(
                "Slice",
                [
                    sorted_index,
                    ctx.const("next_start", [1]),
                    ctx.const("next_end", [count]),
                    ctx.const("next_axis", [2]),
                ],
            ),
            ctx.node(
                "ConstantOfShape", [_sizes_like(ctx, sorted_index, [1], "last")], value=_int64_tensor(-2)
            ),
        ],
        axis=2,
    )
    is_last = ctx.node("Not", [ctx.node("Equal", [sorted_index, following])])
    target = ctx.node("Where", [is_last, sorted_index, ctx.const("spare", np.int64(plane))])
    updates = ctx.node("GatherElements", [flat_values, order], axis=2)
    zeros = ctx.node(
        "ConstantOfShape", [_sizes_like(ctx, values, [plane + 1], "zeros")], value=_float_tensor(0.0)
    )
    scattered = ctx.node("ScatterElements", [zeros, target, updates], axis=2)
    kept = ctx.node(
        "Slice",
        [
            scattered,
            ctx.const("keep_start", [0]),
            ctx.const("keep_end", [plane]),
            ctx.const("keep_axis", [2]),
        ],
    )
    ctx.node("Reshape", [kept, ctx.const("out_shape", [0, 0, out_h, out_w])], ctx.outputs)


def _int64_tensor(value: int) -> TensorProto:
    return numpy_helper.from_array(np.array([value], dtype=np.int64))


def _float_tensor(value: float) -> TensorProto:
    return numpy_helper.from_array(np.array([value], dtype=np.float32))


def _check_mask_bottom(ctx: LayerContext) -> list[int]:
    shape = _require_4d(ctx)
    if list(ctx.input_shapes[1]) != shape:
        raise LayerRefused(
            f"the mask bottom {tuple(ctx.input_shapes[1])} must have the data bottom's shape {tuple(shape)}"
        )
    return shape


# ------------------------------------------------------------------------------- MaxUnPool / Upsample


@converter("MaxUnPool", arity=(2, 2, 1, 1))
def max_unpool(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.max_unpool_param
    shape = _check_mask_bottom(ctx)
    if not (param.HasField("dst_h") and param.HasField("dst_w")):
        raise LayerRefused("max_unpool_param needs dst_h and dst_w")
    out_h, out_w = int(param.dst_h), int(param.dst_w)
    if out_h < 1 or out_w < 1:
        raise LayerRefused(f"dst_h/dst_w must be positive, got {out_h}x{out_w}")
    # The mask holds indices of the pooled SOURCE plane; they are used as they are (not re-mapped) when
    # dst differs from that plane, as brocolli-caffe does.
    _unpool(ctx, ctx.inputs[0], ctx.inputs[1], shape, out_h, out_w)
    return [[shape[0], shape[1], out_h, out_w]]


_SEGNET_UPSAMPLE_FIELDS = ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")


@converter("Upsample", arity=(1, 2, 1, 1))
def upsample(ctx: LayerContext) -> list[Shape]:
    if len(ctx.inputs) == 2:
        return _segnet_upsample(ctx)
    return _nearest_upsample(ctx)


def _nearest_upsample(ctx: LayerContext) -> list[Shape]:
    """brocolli-caffe / YOLO ports: out[..., h, w] = in[..., h // scale, w // scale] (scale default 1);
    dims_num 3 repeats the last axis only."""
    param = ctx.layer.upsample_param
    given = [name for name in _SEGNET_UPSAMPLE_FIELDS if param.HasField(name)]
    if given:
        raise LayerRefused(
            f"{', '.join(given)} belong to caffe-segnet's Upsample, which takes a second bottom (the pooling "
            "mask); this one has a single bottom"
        )
    scale = int(param.scale) if param.HasField("scale") else 1
    if scale < 1:
        raise LayerRefused(f"upsample_param.scale must be at least 1, got {scale}")
    rank = len(ctx.shape)
    if param.dims_num not in (3, 4):
        raise LayerRefused(f"upsample_param.dims_num must be 3 or 4, got {param.dims_num}")
    if rank != param.dims_num:
        raise LayerRefused(
            f"dims_num {param.dims_num} needs a {param.dims_num}-D bottom, got {tuple(ctx.shape)} (Caffe "
            "would index it wrongly)"
        )
    scaled_axes = 2 if rank == 4 else 1
    out = list(ctx.shape)
    for axis in range(rank - scaled_axes, rank):
        out[axis] *= scale
    if scale == 1:
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
        return [out]
    scales = [1.0] * (rank - scaled_axes) + [float(scale)] * scaled_axes
    ctx.node(
        "Resize",
        [ctx.inputs[0], "", ctx.const("scales", scales, np.float32)],
        ctx.outputs,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    return [out]


def _segnet_upsample(ctx: LayerContext) -> list[Shape]:
    """caffe-segnet: bottoms data + MAX pooling mask of the same shape; top upsample_h x upsample_w, or
    H * scale_h - pad_out_h (scale default 2, scale_h/scale_w instead of scale); then mask unpooling."""
    param = ctx.layer.upsample_param
    shape = _check_mask_bottom(ctx)
    has = param.HasField
    if not (
        (has("upsample_h") and has("upsample_w"))
        or (not has("scale") and has("scale_h") and has("scale_w"))
        or (not has("scale_h") and not has("scale_w"))
    ):
        raise LayerRefused("give upsample_h and upsample_w, or scale, or scale_h and scale_w (not both)")
    if has("dims_num"):
        raise LayerRefused("dims_num is brocolli-caffe's one-bottom Upsample; this one has a mask bottom")
    if has("upsample_h") and has("upsample_w"):
        out_h, out_w = int(param.upsample_h), int(param.upsample_w)
        if out_h <= 1 or out_w <= 1:
            raise LayerRefused(f"upsample_h and upsample_w must exceed 1, got {out_h}x{out_w}")
    else:
        if has("scale_h"):
            scale_h, scale_w = int(param.scale_h), int(param.scale_w)
        else:
            scale_h = scale_w = int(param.scale) if has("scale") else 2
        if scale_h <= 1 or scale_w <= 1:
            raise LayerRefused(f"the upsampling scale must exceed 1, got {scale_h}x{scale_w}")
        if (param.pad_out_h and scale_h != 2) or (param.pad_out_w and scale_w != 2):
            raise LayerRefused("pad_out_h/pad_out_w need a scale of 2")
        out_h = shape[2] * scale_h - int(param.pad_out_h)
        out_w = shape[3] * scale_w - int(param.pad_out_w)
    _unpool(ctx, ctx.inputs[0], ctx.inputs[1], shape, out_h, out_w)
    return [[shape[0], shape[1], out_h, out_w]]


# ------------------------------------------------------------------------------------------------ BN


def _stored_blob_shapes(ctx: LayerContext) -> list[tuple[int, ...]] | None:
    """Shapes of the layer's blobs in the caffemodel, or None (random or placeholder weights)."""
    weights = getattr(ctx.fetch_params, "weights", None)
    source = weights.get(ctx.name) if weights is not None and hasattr(weights, "get") else None
    if source is None or not source.blobs:
        return None
    return [tuple(int(d) for d in blob.shape) for blob in source.blobs]


def _bn_variant(ctx: LayerContext) -> str:
    """Three forks ship a 'BN' type that computes different things from the same-looking blobs:
    caffe-segnet: 2 blobs (scale, shift); hszhao/PSPNet: 4 blobs of shape (1, C, 1, 1): slope, bias, mean,
    VARIANCE; brocolli-caffe (yjxiong-style): 4 blobs of shape (1, C): slope, bias, mean and the running
    INVERSE standard deviation. The blob count and shapes tell them apart (each fork's Caffe refuses the
    others' shapes when loading)."""
    param = ctx.layer.bn_param
    stored = _stored_blob_shapes(ctx)
    if stored is None:
        segnet_fields = (
            param.HasField("bn_mode") or param.HasField("scale_filler") or param.HasField("shift_filler")
        )
        return "segnet" if segnet_fields else "pspnet"
    if len(stored) == 2:
        return "segnet"
    if len(stored) == 4:
        ranks = {len(shape) for shape in stored}
        if ranks == {4}:
            return "pspnet"
        if ranks == {2}:
            return "inverse_std"
    raise LayerRefused(
        f"BN with {len(stored)} blob(s) of shapes {stored}: known are caffe-segnet's 2 blobs (scale, shift), "
        "PSPNet's 4 blobs (1,C,1,1) with the running variance and brocolli-caffe's 4 blobs (1,C) with the "
        "running inverse std"
    )


@converter("BN")
def bn(ctx: LayerContext) -> list[Shape]:
    shape = list(ctx.shape)
    if len(shape) != 4:
        raise LayerRefused(f"needs a 4-D (N, C, H, W) bottom, got {tuple(shape)}")
    channels = shape[1]
    variant = _bn_variant(ctx)
    param = ctx.layer.bn_param
    if variant == "segnet":
        scale, shift = ctx.params([(1, channels, 1, 1)] * 2)
        if param.bn_mode == param.INFERENCE:
            scaled = ctx.node("Mul", [ctx.inputs[0], ctx.weight("scale", scale)])
            ctx.node("Add", [scaled, ctx.weight("shift", shift)], ctx.outputs)
        else:
            _segnet_batch_statistics(ctx, scale, shift)
        return [shape]
    blob_shape = (1, channels, 1, 1) if variant == "pspnet" else (1, channels)
    slope, bias, mean, last = (
        np.asarray(a, dtype=np.float64).reshape(1, channels, 1, 1) for a in ctx.params([blob_shape] * 4)
    )
    if variant == "pspnet":
        # TEST phase (or frozen): y = slope * (x - mean) * (var + eps)^-1/2 + bias.
        inverse_std = np.float32(np.float32(last) + np.float32(param.eps)) ** np.float32(-0.5)
    else:
        # brocolli-caffe: the fourth blob already is the inverse std; eps plays no part at TEST.
        inverse_std = last.astype(np.float32)
    factor = (slope.astype(np.float32) * inverse_std).astype(np.float32)
    centred = ctx.node("Sub", [ctx.inputs[0], ctx.weight("mean", mean.astype(np.float32))])
    scaled = ctx.node("Mul", [centred, ctx.weight("factor", factor)])
    ctx.node("Add", [scaled, ctx.weight("bias", bias.astype(np.float32))], ctx.outputs)
    return [shape]


def _segnet_batch_statistics(ctx: LayerContext, scale: np.ndarray, shift: np.ndarray) -> None:
    """caffe-segnet bn_mode LEARN (its default) normalises with the CURRENT batch's statistics even at
    TEST: mean and variance over (N, H, W), eps 1e-9 (fixed in its C++). Caffe takes the variance as
    E[x^2] - mean^2 in float32; the same value is computed here as mean((x - mean)^2), which does not
    lose digits to cancellation when the mean is large against the spread."""
    x = ctx.inputs[0]
    mean = ctx.node("ReduceMean", [x], axes=[0, 2, 3], keepdims=1)
    centred = ctx.node("Sub", [x, mean])
    variance = ctx.node("ReduceMean", [ctx.node("Mul", [centred, centred])], axes=[0, 2, 3], keepdims=1)
    std = ctx.node("Sqrt", [ctx.node("Add", [variance, ctx.const("eps", np.float32(1e-9), np.float32)])])
    normalised = ctx.node("Div", [centred, std])
    scaled = ctx.node("Mul", [normalised, ctx.weight("scale", scale)])
    ctx.node("Add", [scaled, ctx.weight("shift", shift)], ctx.outputs)


# --------------------------------------------------------------------------------------------- Interp


def _interp_size(param, height: int, width: int) -> tuple[int, int]:
    has = param.HasField
    shrink, zoom = int(param.shrink_factor), int(param.zoom_factor)
    if has("shrink_factor") and not has("zoom_factor"):
        if shrink < 1:
            raise LayerRefused(f"shrink_factor must be at least 1, got {shrink}")
        return (height - 1) // shrink + 1, (width - 1) // shrink + 1
    if has("zoom_factor") and not has("shrink_factor"):
        if zoom < 1:
            raise LayerRefused(f"zoom_factor must be at least 1, got {zoom}")
        return height + (height - 1) * (zoom - 1), width + (width - 1) * (zoom - 1)
    if has("height") and has("width"):
        return int(param.height), int(param.width)
    if has("shrink_factor") and has("zoom_factor"):
        if shrink < 1 or zoom < 1:
            raise LayerRefused(f"shrink_factor and zoom_factor must be at least 1, got {shrink}, {zoom}")
        out_h, out_w = (height - 1) // shrink + 1, (width - 1) // shrink + 1
        return out_h + (out_h - 1) * (zoom - 1), out_w + (out_w - 1) * (zoom - 1)
    raise LayerRefused("interp_param needs zoom_factor and/or shrink_factor, or height and width")


@converter("Interp")
def interp(ctx: LayerContext) -> list[Shape]:
    """PSPNet/DeepLab Interp: crop by -pad_beg/-pad_end, then caffe_cpu_interp2's bilinear rule with
    aligned corners (src = d * (in - 1) / (out - 1), 0 when out is 1); equal sizes copy."""
    param = ctx.layer.interp_param
    shape = _require_4d(ctx)
    pad_beg, pad_end = int(param.pad_beg), int(param.pad_end)
    if pad_beg > 0 or pad_end > 0:
        raise LayerRefused(f"pad_beg/pad_end must be <= 0 (cropping only), got {pad_beg}, {pad_end}")
    in_h, in_w = shape[2] + pad_beg + pad_end, shape[3] + pad_beg + pad_end
    if in_h <= 0 or in_w <= 0:
        raise LayerRefused(f"pad_beg/pad_end crop the {shape[2]}x{shape[3]} input to nothing")
    out_h, out_w = _interp_size(param, in_h, in_w)
    if out_h <= 0 or out_w <= 0:
        raise LayerRefused(f"the output size {out_h}x{out_w} must be positive")
    source = ctx.inputs[0]
    if (in_h, in_w) != (shape[2], shape[3]):
        # caffe_cpu_interp2 is given offset (-pad_beg, -pad_beg) for both axes.
        source = _crop_hw(ctx, source, -pad_beg, -pad_beg, in_h, in_w)
    if (out_h, out_w) == (in_h, in_w):
        ctx.node("Identity", [source], ctx.outputs)
    else:
        _resize(
            ctx,
            source,
            (out_h, out_w),
            ctx.outputs,
            mode="linear",
            coordinate_transformation_mode="align_corners",
        )
    return [[shape[0], shape[1], out_h, out_w]]


# ------------------------------------------------------------------------------ brocolli-caffe layers


@converter("Pad")
def pad(ctx: LayerContext) -> list[Shape]:
    param = ctx.layer.pad_param
    shape = _require_4d(ctx)
    height, width = shape[2], shape[3]
    up, down, left, right = int(param.pad_u), int(param.pad_d), int(param.pad_l), int(param.pad_r)
    out = [shape[0], shape[1], height + up + down, width + left + right]
    if out[2] <= 0 or out[3] <= 0:
        raise LayerRefused(f"pads {up}, {down}, {left}, {right} leave no {out[2]}x{out[3]} output")
    if up < 0 and down < 0 and left < 0 and right < 0:
        ctx.node(
            "Slice",
            [
                ctx.inputs[0],
                ctx.const("starts", [-up, -left]),
                ctx.const("ends", [height + down, width + right]),
                ctx.const("axes", [2, 3]),
            ],
            ctx.outputs,
        )
        return [out]
    if min(up, down, left, right) < 0:
        raise LayerRefused(
            "negative pads crop only when all four (pad_u, pad_d, pad_l, pad_r) are negative; with mixed "
            "signs Caffe writes outside its output"
        )
    if param.pad_type == param.REFLECT and (max(up, down) > height - 1 or max(left, right) > width - 1):
        raise LayerRefused(
            f"REFLECT pads must be smaller than the {height}x{width} input (Caffe reads unset values beyond)"
        )
    if up == down == left == right == 0:
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
        return [out]
    mode = {param.CONSTANT: "constant", param.REPLICATE: "edge", param.REFLECT: "reflect"}[param.pad_type]
    inputs = [ctx.inputs[0], ctx.const("pads", [0, 0, up, left, 0, 0, down, right])]
    if mode == "constant":
        inputs.append(ctx.const("value", np.float32(param.pad_value), np.float32))
    ctx.node("Pad", inputs, ctx.outputs, mode=mode)
    return [out]


@converter("PixelShuffle")
def pixel_shuffle(ctx: LayerContext) -> list[Shape]:
    """out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w] (ONNX DepthToSpace, mode CRD). Caffe
    checks only C % r; the channels past (C // r^2) * r^2 are ignored."""
    param = ctx.layer.pixelshuffle_param
    shape = _require_4d(ctx)
    if not param.HasField("upscale_factor"):
        raise LayerRefused("pixelshuffle_param.upscale_factor is required")
    factor = int(param.upscale_factor)
    if factor < 1:
        raise LayerRefused(f"upscale_factor must be at least 1, got {factor}")
    if shape[1] % factor:
        raise LayerRefused(f"the {shape[1]} channels are not a multiple of upscale_factor {factor}")
    channels = shape[1] // (factor * factor)
    if channels == 0:
        raise LayerRefused(f"{shape[1]} channels give no output channel for upscale_factor {factor}")
    source = ctx.inputs[0]
    used = channels * factor * factor
    if used != shape[1]:
        source = ctx.node(
            "Slice", [source, ctx.const("starts", [0]), ctx.const("ends", [used]), ctx.const("axes", [1])]
        )
    ctx.node("DepthToSpace", [source], ctx.outputs, blocksize=factor, mode="CRD")
    return [[shape[0], channels, shape[2] * factor, shape[3] * factor]]


def _float32_product(value: float, size: int) -> int:
    return int(np.float32(value) * np.float32(size))


@converter("Resize")
def resize(ctx: LayerContext) -> list[Shape]:
    """brocolli-caffe Resize (util_img BiLinearResizeMat_cpu): src = d * (S / D) in float, i0 = floor(src),
    f = src - i0; the i0 + 1 neighbour terms are DROPPED past the last row/column, without renormalising.
    That is ONNX's asymmetric bilinear Resize (which clamps to the last row) times (1 - f) on the rows and
    columns where i0 is the last one."""
    param = ctx.layer.resize_param
    shape = _require_4d(ctx)
    if param.is_pyramid_test:
        if not (param.HasField("out_height_scale") and param.HasField("out_width_scale")):
            raise LayerRefused("is_pyramid_test needs out_height_scale and out_width_scale")
        out_h = _float32_product(param.out_height_scale, shape[2])
        out_w = _float32_product(param.out_width_scale, shape[3])
    else:
        if not (param.HasField("height") and param.HasField("width")):
            raise LayerRefused("resize_param needs height and width (or is_pyramid_test with scales)")
        out_h, out_w = int(param.height), int(param.width)
    if out_h < 1 or out_w < 1:
        raise LayerRefused(f"the output size {out_h}x{out_w} must be positive")
    out = [shape[0], shape[1], out_h, out_w]
    if (out_h, out_w) == (shape[2], shape[3]):
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
        return [out]
    # Per-row and per-column factors, the non-trivial ones only (1-D constants, not an output-sized one).
    factors = [
        factor
        for factor in (
            _dropped_border_factor(shape[2], out_h)[:, None],
            _dropped_border_factor(shape[3], out_w),
        )
        if not np.all(factor == 1)
    ]
    value = _resize(
        ctx,
        ctx.inputs[0],
        (out_h, out_w),
        None if factors else ctx.outputs,
        mode="linear",
        coordinate_transformation_mode="asymmetric",
    )
    for index, factor in enumerate(factors):
        last = index == len(factors) - 1
        value = ctx.node(
            "Mul", [value, ctx.const("border_factor", factor, np.float32)], ctx.outputs if last else None
        )
    return [out]


def _dropped_border_factor(source: int, target: int) -> np.ndarray:
    """Per output row: the weight (1 - f) that Caffe leaves on the last source row when it drops the
    missing +1 neighbour (1 elsewhere), computed in float32 as Caffe does."""
    scale = np.float32(source) / np.float32(target)
    positions = np.arange(target, dtype=np.float32) * scale
    first = np.floor(positions)
    fraction = positions - first
    return np.where(first >= source - 1, np.abs(np.float32(1) - fraction), np.float32(1)).astype(np.float32)


@converter("BilinearInterpolate")
def bilinear_interpolate(ctx: LayerContext) -> list[Shape]:
    """brocolli-caffe: align_corners (default true) src = d * (S-1)/(D-1), else (d + 0.5) * S/D - 0.5;
    clamped to [0, S-1]; standard bilinear between floor(src) (kept <= S-2) and the next row: ONNX Resize
    linear with align_corners / half_pixel (which clamps the same way)."""
    param = ctx.layer.bilinear_interpolate_param
    shape = _require_4d(ctx)
    has_size = param.HasField("dst_h") or param.HasField("dst_w")
    if has_size == param.HasField("scale_factor"):
        raise LayerRefused(
            "give dst_h/dst_w or scale_factor (exactly one of the two; Caffe leaves the size unset otherwise)"
        )
    if has_size:
        out_h = int(param.dst_h) if param.HasField("dst_h") else shape[2]
        out_w = int(param.dst_w) if param.HasField("dst_w") else shape[3]
    else:
        out_h = _float32_product(param.scale_factor, shape[2])
        out_w = _float32_product(param.scale_factor, shape[3])
    if out_h < 1 or out_w < 1:
        raise LayerRefused(f"the output size {out_h}x{out_w} must be positive")
    if param.align_corners and (out_h == 1 or out_w == 1):
        raise LayerRefused(
            "align_corners with an output side of 1 divides by zero in Caffe (NaN coordinates)"
        )
    out = [shape[0], shape[1], out_h, out_w]
    if (out_h, out_w) == (shape[2], shape[3]):
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
        return [out]
    mode = "align_corners" if param.align_corners else "half_pixel"
    _resize(
        ctx, ctx.inputs[0], (out_h, out_w), ctx.outputs, mode="linear", coordinate_transformation_mode=mode
    )
    return [out]
