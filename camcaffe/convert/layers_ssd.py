"""The SSD family (weiliu89/caffe, as brocolli-caffe builds it): Normalize, Permute, PriorBox,
DetectionOutput.

DetectionOutput is written with standard ONNX ops only: a stable descending sort per class (TopK plus a
second TopK on an exact integer key, so ties go to the lower prior index on any provider), the greedy
adaptive-eta NMS of Caffe's ApplyNMSFast as a Loop over the candidates of every (image, class) at once,
keep_top_k across classes with libstdc++'s std::sort (introsort partition levels as a second Loop, which
fixes the order of exactly equal scores), and NonZero to emit the rows in Caffe's order."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from camcaffe.caffe import caffe_pb2
from camcaffe.convert.axes import product
from camcaffe.convert.registry import LayerContext, LayerRefused, Shape, converter

FLT_MAX = float(np.finfo(np.float32).max)
# Caffe's float comparisons of aspect ratios (fabs(a - b) < 1e-6).
_RATIO_EPS = 1e-6


def _legacy_dim(shape: Shape, index: int, what: str) -> int:
    """Caffe's num()/channels()/height()/width(): axes past the blob's rank read as 1."""
    if len(shape) > 4:
        raise LayerRefused(f"{what} is {len(shape)}-D; Caffe's legacy height()/width() need at most 4 axes")
    return int(shape[index]) if index < len(shape) else 1


def _scalar(ctx: LayerContext, suffix: str, value: float) -> str:
    return ctx.const(suffix, np.float32(value), np.float32)


# ------------------------------------------------------------------------------------------ Normalize


@converter("Normalize")
def normalize(ctx: LayerContext) -> list[Shape]:
    """x / sqrt(sum of x^2 + eps) over the channels of each pixel (or over C, H, W of each item with
    across_spatial), then times the scale blob (one value when channel_shared, else one per channel)."""
    param = ctx.layer.norm_param
    shape = list(ctx.shape)
    if len(shape) < 2:
        raise LayerRefused(f"Normalize needs a blob of at least 2 axes, got {tuple(shape)}")
    _legacy_dim(shape, 0, "the bottom")
    channels = shape[1]
    (scale,) = ctx.params([() if param.channel_shared else (channels,)])
    x = ctx.inputs[0]
    axes = list(range(1, len(shape))) if param.across_spatial else [1]
    sum_sq = ctx.node("ReduceSum", [ctx.node("Mul", [x, x]), ctx.const("axes", axes)], keepdims=1)
    norm = ctx.node("Sqrt", [ctx.node("Add", [sum_sq, _scalar(ctx, "eps", param.eps)])])
    normalized = ctx.node("Div", [x, norm])
    broadcast = () if param.channel_shared else (channels,) + (1,) * (len(shape) - 2)
    factor = ctx.weight("scale", np.asarray(scale, dtype=np.float32).reshape(broadcast))
    ctx.node("Mul", [normalized, factor], ctx.outputs)
    return [shape]


# -------------------------------------------------------------------------------------------- Permute


def permute_order(order: list[int], rank: int) -> list[int]:
    """The full axis order Caffe uses: the listed axes, then the unlisted ones in increasing order."""
    for axis in order:
        if axis >= rank:
            raise LayerRefused(f"permute_param.order {axis} is out of range for a {rank}-D blob")
    if len(set(order)) != len(order):
        raise LayerRefused(f"permute_param.order {order} repeats an axis")
    return order + [axis for axis in range(rank) if axis not in order]


@converter("Permute")
def permute(ctx: LayerContext) -> list[Shape]:
    shape = list(ctx.shape)
    perm = permute_order([int(a) for a in ctx.layer.permute_param.order], len(shape))
    ctx.batch_axis_kept = perm[0] == 0
    if perm == list(range(len(shape))):
        ctx.node("Identity", ctx.inputs[:1], ctx.outputs)
    else:
        ctx.node("Transpose", ctx.inputs[:1], ctx.outputs, perm=perm)
    return [[shape[axis] for axis in perm]]


# ------------------------------------------------------------------------------------------- PriorBox


def prior_aspect_ratios(ratios: list[float], flip: bool) -> list[float]:
    """1 first, then each ratio not within 1e-6 of one already listed, followed by 1/ratio if flip."""
    result = [np.float32(1.0)]
    for ratio in ratios:
        ratio32 = np.float32(ratio)
        if any(abs(float(ratio32) - float(known)) < _RATIO_EPS for known in result):
            continue
        result.append(ratio32)
        if flip:
            result.append(np.float32(1.0 / float(ratio32)))
    return result


def _positive_pair(param, single: str, height: str, width: str) -> tuple[float, float]:
    """Caffe's `x` vs `x_h`/`x_w` rule for img_size/step: (0, 0) when none is given."""
    if param.HasField(height) or param.HasField(width):
        if param.HasField(single):
            raise LayerRefused(f"give either {single} or {height}/{width}, not both")
        h_value, w_value = getattr(param, height), getattr(param, width)
        if h_value <= 0 or w_value <= 0:
            raise LayerRefused(f"{height} and {width} must both be set and positive")
        return float(h_value), float(w_value)
    if param.HasField(single):
        value = getattr(param, single)
        if value <= 0:
            raise LayerRefused(f"{single} must be positive")
        return float(value), float(value)
    return 0.0, 0.0


def prior_boxes(
    param: caffe_pb2.PriorBoxParameter, layer_hw: tuple[int, int], image_hw: tuple[int, int]
) -> np.ndarray:
    """PriorBox's output [1, 2, H*W*num_priors*4], as weiliu89's Forward_cpu computes it."""
    min_sizes = [float(v) for v in param.min_size]
    max_sizes = [float(v) for v in param.max_size]
    if not min_sizes:
        raise LayerRefused("prior_box_param.min_size is required")
    if any(v <= 0 for v in min_sizes):
        raise LayerRefused("min_size must be positive")
    if max_sizes and len(max_sizes) != len(min_sizes):
        raise LayerRefused(f"{len(max_sizes)} max_size values for {len(min_sizes)} min_size values")
    if any(high <= low for low, high in zip(min_sizes, max_sizes, strict=False)):
        raise LayerRefused("every max_size must be greater than its min_size")
    variances = [float(v) for v in param.variance] or [0.1]
    if len(variances) not in (1, 4) or any(v <= 0 for v in variances):
        raise LayerRefused(f"variance must be one or four positive values, got {variances}")
    ratios = prior_aspect_ratios([float(r) for r in param.aspect_ratio], param.flip)
    img_h, img_w = _positive_pair(param, "img_size", "img_h", "img_w")
    step_h, step_w = _positive_pair(param, "step", "step_h", "step_w")
    layer_h, layer_w = layer_hw
    if img_h == 0 or img_w == 0:
        img_h, img_w = float(image_hw[0]), float(image_hw[1])
    if step_h == 0 or step_w == 0:
        step_w = float(np.float32(img_w) / np.float32(layer_w))
        step_h = float(np.float32(img_h) / np.float32(layer_h))
    step_w32, step_h32, offset = np.float32(step_w), np.float32(step_h), np.float32(param.offset)

    # Box sizes per min_size: Caffe truncates min/max sizes to int and keeps widths in float.
    sizes: list[tuple[np.float32, np.float32]] = []
    for index, min_value in enumerate(min_sizes):
        min_int = int(min_value)
        sizes.append((np.float32(min_int), np.float32(min_int)))
        if max_sizes:
            side = np.float32(np.sqrt(float(min_int * int(max_sizes[index]))))
            sizes.append((side, side))
        for ratio in ratios:
            if abs(float(ratio) - 1.0) < _RATIO_EPS:
                continue
            root = np.sqrt(np.float32(ratio))
            sizes.append((np.float32(np.float32(min_int) * root), np.float32(np.float32(min_int) / root)))
    widths = np.array([w for w, _ in sizes], dtype=np.float64)
    heights = np.array([h for _, h in sizes], dtype=np.float64)
    centers_x = ((np.arange(layer_w, dtype=np.float32) + offset) * step_w32).astype(np.float64)
    centers_y = ((np.arange(layer_h, dtype=np.float32) + offset) * step_h32).astype(np.float64)
    cx = np.broadcast_to(centers_x[None, :, None], (layer_h, layer_w, len(sizes)))
    cy = np.broadcast_to(centers_y[:, None, None], (layer_h, layer_w, len(sizes)))
    boxes = np.stack(
        [
            (cx - widths / 2.0) / img_w,
            (cy - heights / 2.0) / img_h,
            (cx + widths / 2.0) / img_w,
            (cy + heights / 2.0) / img_h,
        ],
        axis=-1,
    ).astype(np.float32)
    if param.clip:
        boxes = np.clip(boxes, np.float32(0), np.float32(1))
    variance_row = np.array(variances * 4 if len(variances) == 1 else variances, dtype=np.float32)
    variance_part = np.broadcast_to(variance_row, boxes.shape)
    return np.stack([boxes.reshape(-1), variance_part.reshape(-1)])[None].astype(np.float32)


@converter("PriorBox", arity=(2, 2, 1, 1))
def prior_box(ctx: LayerContext) -> list[Shape]:
    """PriorBox reads only the shapes of its bottoms: its output is a constant of the net's geometry."""
    feature, image = ctx.input_shapes
    layer_hw = (_legacy_dim(feature, 2, "bottom 0"), _legacy_dim(feature, 3, "bottom 0"))
    image_hw = (_legacy_dim(image, 2, "bottom 1"), _legacy_dim(image, 3, "bottom 1"))
    priors = prior_boxes(ctx.layer.prior_box_param, layer_hw, image_hw)
    ctx.batch_axis_kept = False
    ctx.node("Identity", [ctx.const("priors", priors, np.float32)], ctx.outputs)
    return [list(priors.shape)]


# ------------------------------------------------------------------------------------ DetectionOutput


def _stable_sort_descending(ctx: LayerContext, values: str, size: int, tag: str) -> tuple[str, str]:
    """(sorted values, indices) along the last axis, descending, ties by ascending index (std::stable_sort
    of Caffe's GetMaxScoreIndex). ONNX's TopK promises that tie order, but to hold on every provider the
    order is fixed with a second TopK on the exact integer key (run of equal values, index)."""
    k = ctx.const(f"{tag}_k", [size])
    last = ctx.const(f"{tag}_last_axis", [-1])
    sorted_values = ctx.graph.unique(f"{ctx.name}/{tag}_values")
    indices = ctx.graph.unique(f"{ctx.name}/{tag}_indices")
    ctx.graph.node(
        "TopK",
        [values, k],
        [sorted_values, indices],
        name=f"{ctx.name}/{tag}_TopK",
        axis=-1,
        largest=1,
        sorted=1,
    )
    if size == 1:
        return sorted_values, indices

    def axis_slice(tensor: str, start: int, end: int, suffix: str) -> str:
        return ctx.node(
            "Slice",
            [tensor, ctx.const(f"{tag}_{suffix}_s", [start]), ctx.const(f"{tag}_{suffix}_e", [end]), last],
        )

    changed = ctx.node(
        "Not",
        [
            ctx.node(
                "Equal",
                [axis_slice(sorted_values, 1, size, "tail"), axis_slice(sorted_values, 0, size - 1, "head")],
            )
        ],
    )
    first = ctx.node("Mul", [axis_slice(indices, 0, 1, "first"), ctx.const(f"{tag}_zero", np.int64(0))])
    steps = ctx.node("Concat", [first, ctx.node("Cast", [changed], to=TensorProto.INT64)], axis=-1)
    run = ctx.node("CumSum", [steps, ctx.const(f"{tag}_axis_scalar", np.int64(-1))])
    key = ctx.node("Add", [ctx.node("Mul", [run, ctx.const(f"{tag}_size", np.int64(size))]), indices])
    positions = ctx.graph.unique(f"{ctx.name}/{tag}_positions")
    ctx.graph.node(
        "TopK",
        [key, k],
        [ctx.graph.unique(f"{ctx.name}/{tag}_keys"), positions],
        name=f"{ctx.name}/{tag}_TopK_ties",
        axis=-1,
        largest=0,
        sorted=1,
    )
    return (
        ctx.node("GatherElements", [sorted_values, positions], axis=-1),
        ctx.node("GatherElements", [indices, positions], axis=-1),
    )


def _decode(ctx: LayerContext, loc: str, prior_xy: str, variance: str, code_type: int, encoded: bool) -> str:
    """Decoded boxes [N, P, L, 4] from predictions [N, P, L, 4] and priors/variances [1, P, 1, 4], with
    Caffe's float operation order (DecodeBBox)."""
    scaled = loc if encoded else ctx.node("Mul", [variance, loc])
    if code_type == caffe_pb2.PriorBoxParameter.CORNER:
        return ctx.node("Add", [prior_xy, scaled])

    def half(tensor: str, start: int, tag: str) -> str:
        return ctx.node(
            "Slice",
            [
                tensor,
                ctx.const(f"{tag}_s", [start]),
                ctx.const(f"{tag}_e", [start + 2]),
                ctx.const(f"{tag}_a", [-1]),
            ],
        )

    prior_min, prior_max = half(prior_xy, 0, "pmin"), half(prior_xy, 2, "pmax")
    prior_size = ctx.node("Sub", [prior_max, prior_min])  # (width, height)
    if code_type == caffe_pb2.PriorBoxParameter.CORNER_SIZE:
        sizes = ctx.node("Concat", [prior_size, prior_size], axis=-1)
        return ctx.node("Add", [prior_xy, ctx.node("Mul", [scaled, sizes])])
    prior_center = ctx.node("Mul", [ctx.node("Add", [prior_min, prior_max]), _scalar(ctx, "half", 0.5)])
    center = ctx.node("Add", [ctx.node("Mul", [half(scaled, 0, "lc"), prior_size]), prior_center])
    extent = ctx.node("Mul", [ctx.node("Exp", [half(scaled, 2, "ls")]), prior_size])
    half_extent = ctx.node("Mul", [extent, _scalar(ctx, "half2", 0.5)])
    return ctx.node(
        "Concat", [ctx.node("Sub", [center, half_extent]), ctx.node("Add", [center, half_extent])], axis=-1
    )


def _box_area(ctx: LayerContext, x0: str, y0: str, x1: str, y1: str) -> str:
    """BBoxSize: width * height, 0 for an inverted box."""
    width, height = ctx.node("Sub", [x1, x0]), ctx.node("Sub", [y1, y0])
    inverted = ctx.node("Or", [ctx.node("Less", [x1, x0]), ctx.node("Less", [y1, y0])])
    return ctx.node("Where", [inverted, _scalar(ctx, "zero_area", 0.0), ctx.node("Mul", [width, height])])


def _nms_body(
    name: str, coords: list[str], area: str, valid: str, positions: str, eta: float, adaptive: bool
) -> helper.GraphProto:
    """One step of ApplyNMSFast for every (image, class) at once: candidate j (in score order) is kept when
    it is valid and its Jaccard overlap with every kept candidate is <= the (adaptive) threshold."""
    nodes = []

    def local(value: str) -> str:  # subgraph names must not clash with the outer graph's
        return f"{name}/nms/{value}"

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [local(output)], name=local(output), **attrs))
        return local(output)

    def constant(output: str, array: np.ndarray) -> str:
        tensor = helper.make_tensor(
            local(output),
            helper.np_dtype_to_tensor_dtype(array.dtype),
            array.shape,
            array.reshape(-1).tolist(),
        )
        nodes.append(helper.make_node("Constant", [], [local(output)], name=local(output), value=tensor))
        return local(output)

    j, keep_in, threshold_in = local("j"), local("keep_in"), local("threshold_in")
    zero = constant("zero", np.array(0.0, dtype=np.float32))
    j1 = node("Unsqueeze", [j, constant("axis0", np.array([0], dtype=np.int64))], "j1")
    x0, y0, x1, y1 = coords
    picked = [
        node("Gather", [c, j1], f"cand_{i}", axis=2) for i, c in enumerate([x0, y0, x1, y1, area, valid])
    ]

    # std::min(a, b) = b < a ? b : a and std::max(a, b) = a < b ? b : a, NaN included (a = the candidate).
    def cpp_min(a: str, b: str, out: str) -> str:
        return node("Where", [node("Less", [b, a], f"{out}_lt"), b, a], out)

    def cpp_max(a: str, b: str, out: str) -> str:
        return node("Where", [node("Less", [a, b], f"{out}_lt"), b, a], out)

    inter_w = node("Sub", [cpp_min(picked[2], x1, "min_x1"), cpp_max(picked[0], x0, "max_x0")], "iw")
    inter_h = node("Sub", [cpp_min(picked[3], y1, "min_y1"), cpp_max(picked[1], y0, "max_y0")], "ih")
    overlapping = node(
        "And", [node("Greater", [inter_w, zero], "iw_pos"), node("Greater", [inter_h, zero], "ih_pos")], "pos"
    )
    inter = node("Mul", [inter_w, inter_h], "inter")
    union = node("Sub", [node("Add", [picked[4], area], "area_sum"), inter], "union")
    overlap = node("Where", [overlapping, node("Div", [inter, union], "ratio"), zero], "overlap")
    # Caffe keeps a candidate while overlap <= threshold: a NaN overlap suppresses it.
    within = node("LessOrEqual", [overlap, threshold_in], "within")
    suppresses = node("And", [node("Not", [within], "over"), keep_in], "suppresses")
    as_float = node("Cast", [suppresses], "suppresses_f", to=TensorProto.FLOAT)
    suppressed = node("ReduceMax", [as_float], "suppressed", axes=[2], keepdims=1)
    free = node("Not", [node("Cast", [suppressed], "suppressed_b", to=TensorProto.BOOL)], "free")
    keep_j = node("And", [picked[5], free], "keep_j")
    at_j = node("Equal", [positions, j], "at_j")
    node("Or", [keep_in, node("And", [at_j, keep_j], "new_keep")], "keep_out")
    node("Identity", [local("cond_in")], "cond_out")
    if adaptive:
        above_half = node(
            "Greater", [threshold_in, constant("half", np.array(0.5, np.float32))], "above_half"
        )
        lowered = node("Mul", [threshold_in, constant("eta", np.array(eta, np.float32))], "lowered")
        node("Where", [node("And", [keep_j, above_half], "shrink"), lowered, threshold_in], "threshold_out")
    else:
        node("Identity", [threshold_in], "threshold_out")
    return helper.make_graph(
        nodes,
        local("step"),
        [
            helper.make_tensor_value_info(j, TensorProto.INT64, []),
            helper.make_tensor_value_info(local("cond_in"), TensorProto.BOOL, []),
            helper.make_tensor_value_info(keep_in, TensorProto.BOOL, None),
            helper.make_tensor_value_info(threshold_in, TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info(local("cond_out"), TensorProto.BOOL, []),
            helper.make_tensor_value_info(local("keep_out"), TensorProto.BOOL, None),
            helper.make_tensor_value_info(local("threshold_out"), TensorProto.FLOAT, None),
        ],
    )


def _detection_settings(ctx: LayerContext) -> dict:
    """The parameters DetectionOutput's forward uses, after Caffe's checks; refuses what it cannot mirror."""
    param = ctx.layer.detection_output_param
    if not param.HasField("num_classes"):
        raise LayerRefused("detection_output_param.num_classes is required")
    if not param.HasField("nms_param"):
        raise LayerRefused(
            "no nms_param: weiliu89 SSD then runs NMS with its defaults (threshold 0.3) while brocolli-caffe "
            "skips NMS and the confidence threshold; add nms_param { nms_threshold: ... } to say which"
        )
    if param.clip:
        raise LayerRefused("clip: true (OpenCV's extension: clip decoded boxes) is not supported")
    if not param.normalized_bbox:
        raise LayerRefused(
            "normalized_bbox: false (OpenCV's extension: pixel boxes, +1 areas) is not supported"
        )
    nms = param.nms_param
    if nms.nms_threshold < 0:
        raise LayerRefused(f"nms_threshold {nms.nms_threshold} is negative (Caffe aborts)")
    if not 0 < nms.eta <= 1:
        raise LayerRefused(f"nms_param.eta {nms.eta} is outside (0, 1] (Caffe aborts)")
    num_classes = int(param.num_classes)
    background = int(param.background_label_id)
    if param.share_location and background == -1:
        raise LayerRefused(
            "background_label_id -1 with share_location true: Caffe skips decoding the shared boxes (label -1) "
            "and aborts"
        )
    if param.code_type not in (1, 2, 3):
        raise LayerRefused(f"code_type {param.code_type} is unknown")
    return {
        "num_classes": num_classes,
        "loc_classes": 1 if param.share_location else num_classes,
        "classes": [c for c in range(num_classes) if c != background],
        "code_type": int(param.code_type),
        "encoded": bool(param.variance_encoded_in_target),
        "keep_top_k": int(param.keep_top_k),
        "top_k": int(nms.top_k) if nms.HasField("top_k") else -1,
        "threshold": float(param.confidence_threshold)
        if param.HasField("confidence_threshold")
        else -FLT_MAX,
        "nms_threshold": float(nms.nms_threshold),
        "eta": float(nms.eta),
    }


@converter("DetectionOutput", arity=(3, 3, 1, 1))
def detection_output(ctx: LayerContext) -> list[Shape]:
    settings = _detection_settings(ctx)
    loc_shape, conf_shape, prior_shape = ctx.input_shapes
    num_classes, loc_classes = settings["num_classes"], settings["loc_classes"]
    if len(prior_shape) != 3 or prior_shape[1] != 2:
        raise LayerRefused(
            f"the prior blob must be [1, 2, 4 * priors] (PriorBox's output), got {tuple(prior_shape)}"
        )
    priors = prior_shape[2] // 4
    if product(loc_shape[1:]) != priors * loc_classes * 4 or loc_shape[1] != priors * loc_classes * 4:
        raise LayerRefused(
            f"location blob {tuple(loc_shape)} does not hold {priors} priors x {loc_classes} x 4"
        )
    if product(conf_shape[1:]) != priors * num_classes or conf_shape[1] != priors * num_classes:
        raise LayerRefused(
            f"confidence blob {tuple(conf_shape)} does not hold {priors} priors x {num_classes}"
        )
    if loc_shape[0] != conf_shape[0]:
        raise LayerRefused(f"location and confidence batch sizes differ ({loc_shape[0]} vs {conf_shape[0]})")
    ctx.batch_axis_kept = False
    loc, conf, prior = ctx.inputs
    top_k = settings["top_k"]
    candidates = priors if top_k < 0 else min(top_k, priors)
    classes = settings["classes"]
    batch = ctx.node("Slice", [ctx.node("Shape", [loc]), ctx.const("b_s", [0]), ctx.const("b_e", [1])])
    if not classes or candidates == 0:
        rows = _no_detection_rows(ctx, batch)
        ctx.node("Reshape", [rows, ctx.const("out_shape", [1, 1, -1, 7])], ctx.outputs)
        return [[1, 1, 1, 7]]

    # Priors [1, P, 1, 4] and variances; predictions [N, P, L, 4]; decoded boxes per class [N, C', P, 4].
    prior_flat = ctx.node(
        "Slice",
        [
            ctx.node("Reshape", [prior, ctx.const("flat", [-1])]),
            ctx.const("p_s", [0]),
            ctx.const("p_e", [8 * priors]),
        ],
    )
    prior_parts = ctx.node("Reshape", [prior_flat, ctx.const("prior_shape", [2, 1, priors, 1, 4])])
    prior_xy = ctx.node("Gather", [prior_parts, ctx.const("i0", np.int64(0))], axis=0)
    variance = ctx.node("Gather", [prior_parts, ctx.const("i1", np.int64(1))], axis=0)
    loc4 = ctx.node("Reshape", [loc, ctx.const("loc_shape", [0, priors, loc_classes, 4])])
    decoded = _decode(ctx, loc4, prior_xy, variance, settings["code_type"], settings["encoded"])
    by_class = ctx.node("Transpose", [decoded], perm=[0, 2, 1, 3])  # [N, L, P, 4]
    class_index = ctx.const("classes", classes)
    if loc_classes == 1:
        boxes = ctx.node("Expand", [by_class, ctx.const("class_expand", [1, len(classes), 1, 1])])
    else:
        boxes = ctx.node("Gather", [by_class, class_index], axis=1)

    conf3 = ctx.node("Reshape", [conf, ctx.const("conf_shape", [0, priors, num_classes])])
    scores = ctx.node("Gather", [ctx.node("Transpose", [conf3], perm=[0, 2, 1]), class_index], axis=1)
    sorted_scores, order = _stable_sort_descending(ctx, scores, priors, "score")
    if candidates < priors:
        cut = [ctx.const("cand_s", [0]), ctx.const("cand_e", [candidates]), ctx.const("cand_a", [-1])]
        sorted_scores = ctx.node("Slice", [sorted_scores, *cut])
        order = ctx.node("Slice", [order, *cut])
    valid = ctx.node("Greater", [sorted_scores, _scalar(ctx, "confidence_threshold", settings["threshold"])])
    gather_index = ctx.node(
        "Expand", [ctx.node("Unsqueeze", [order, ctx.const("u_last", [-1])]), ctx.const("four", [1, 1, 1, 4])]
    )
    cand_boxes = ctx.node("GatherElements", [boxes, gather_index], axis=2)  # [N, C', K, 4]
    coords = [
        ctx.node(
            "Squeeze",
            [
                ctx.node(
                    "Slice",
                    [
                        cand_boxes,
                        ctx.const(f"c{i}_s", [i]),
                        ctx.const(f"c{i}_e", [i + 1]),
                        ctx.const(f"c{i}_a", [-1]),
                    ],
                ),
                ctx.const(f"c{i}_sq", [-1]),
            ],
        )
        for i in range(4)
    ]
    area = _box_area(ctx, *coords)

    keep = _greedy_nms(ctx, coords, area, valid, candidates, settings)
    hits = _kept_rows(ctx, keep, sorted_scores, len(classes), candidates, settings["keep_top_k"])
    column = ctx.const("col_shape", [-1, 1])

    def hit_part(index: int) -> str:
        return ctx.node("Gather", [hits, ctx.const(f"hit{index}", np.int64(index))], axis=1)

    image = ctx.node("Cast", [hit_part(0)], to=TensorProto.FLOAT)
    label = ctx.node(
        "Gather", [ctx.const("class_labels", np.array(classes, np.float32), np.float32), hit_part(1)]
    )
    score = ctx.node("GatherND", [sorted_scores, hits])
    box = ctx.node("GatherND", [cand_boxes, hits])
    rows = ctx.node(
        "Concat",
        [
            ctx.node("Reshape", [image, column]),
            ctx.node("Reshape", [label, column]),
            ctx.node("Reshape", [score, column]),
            box,
        ],
        axis=1,
    )
    # Nothing kept in the whole batch: Caffe writes one row [i, -1, -1, -1, -1, -1, -1] per image.
    fallback = _no_detection_rows(ctx, batch)
    found = ctx.node("Slice", [ctx.node("Shape", [rows]), ctx.const("r_s", [0]), ctx.const("r_e", [1])])
    end = ctx.node("Where", [ctx.node("Greater", [found, ctx.const("zero_rows", [0])]), found, batch])
    chosen = ctx.node(
        "Slice",
        [ctx.node("Concat", [rows, fallback], axis=0), ctx.const("o_s", [0]), end, ctx.const("o_a", [0])],
    )
    ctx.node("Reshape", [chosen, ctx.const("out_shape", [1, 1, -1, 7])], ctx.outputs)
    return [[1, 1, 1, 7]]


def _no_detection_rows(ctx: LayerContext, batch: str) -> str:
    images = ctx.node(
        "Cast",
        [
            ctx.node(
                "Range",
                [
                    ctx.const("range_0", np.int64(0)),
                    ctx.node("Squeeze", [batch, ctx.const("sq0", [0])]),
                    ctx.const("range_1", np.int64(1)),
                ],
            )
        ],
        to=TensorProto.FLOAT,
    )
    minus_ones = ctx.node(
        "Expand",
        [
            ctx.const("minus_ones", np.full((1, 6), -1.0, np.float32), np.float32),
            ctx.node("Concat", [batch, ctx.const("six", [6])], axis=0),
        ],
    )
    return ctx.node(
        "Concat", [ctx.node("Reshape", [images, ctx.const("fb_col", [-1, 1])]), minus_ones], axis=1
    )


def _greedy_nms(
    ctx: LayerContext, coords: list[str], area: str, valid: str, candidates: int, settings: dict
) -> str:
    """Caffe's ApplyNMSFast over the score-ordered candidates of every (image, class) pair in one Loop whose
    trip count is the largest number of valid candidates."""
    count = ctx.node(
        "ReduceSum",
        [ctx.node("Cast", [valid], to=TensorProto.INT64), ctx.const("count_axis", [2])],
        keepdims=0,
    )
    trips = ctx.node("ReduceMax", [count], keepdims=0)
    positions = ctx.const("positions", np.arange(candidates, dtype=np.int64))
    no_keep = ctx.node(
        "Cast",
        [
            ctx.node(
                "Mul", [ctx.node("Cast", [valid], to=TensorProto.INT64), ctx.const("zero_i", np.int64(0))]
            )
        ],
        to=TensorProto.BOOL,
    )
    threshold = ctx.node(
        "Expand",
        [
            _scalar(ctx, "nms_threshold", settings["nms_threshold"]),
            ctx.node("Shape", [ctx.node("ReduceMax", [area], axes=[2], keepdims=1)]),
        ],
    )
    adaptive = settings["eta"] < 1
    body = _nms_body(ctx.name, coords, area, valid, positions, settings["eta"], adaptive)
    keep = ctx.graph.unique(f"{ctx.name}/nms_keep")
    final_threshold = ctx.graph.unique(f"{ctx.name}/nms_threshold_out")
    ctx.graph.node(
        "Loop", [trips, "", no_keep, threshold], [keep, final_threshold], name=f"{ctx.name}/nms", body=body
    )
    return keep


def _kept_rows(
    ctx: LayerContext, keep: str, scores: str, classes: int, candidates: int, keep_top_k: int
) -> str:
    """[R, 3] (image, class, NMS rank) of the rows Caffe writes, in its order. Without truncation: by image,
    label, NMS order. When an image has more than keep_top_k detections, Caffe keeps the first keep_top_k of
    a std::sort by descending score over its detections (label, then NMS order) and writes them by label, in
    that sort's order: the sort is modelled as libstdc++ runs it (see _introsort_ranks), which decides the
    order among exactly equal scores (std::sort is not stable)."""
    per_image = classes * candidates
    if keep_top_k < 0 or keep_top_k >= per_image:
        return ctx.node("Transpose", [ctx.node("NonZero", [keep])], perm=[1, 0])
    flat_shape = ctx.const("per_image", [0, per_image])
    flat_keep = ctx.node("Reshape", [keep, flat_shape])
    masked = ctx.node(
        "Where", [flat_keep, ctx.node("Reshape", [scores, flat_shape]), _scalar(ctx, "neg_inf", -np.inf)]
    )
    ranks = _introsort_ranks(ctx, flat_keep, masked, per_image)
    limit = ctx.const("keep_top_k", np.int64(keep_top_k))
    selected = ctx.node("And", [flat_keep, ctx.node("Less", [ranks, limit])])
    count = ctx.node(
        "ReduceSum",
        [ctx.node("Cast", [flat_keep], to=TensorProto.INT64), ctx.const("kr_axis", [1])],
        keepdims=1,
    )
    truncated = ctx.node("Greater", [count, limit])
    flat = ctx.const("kr_flat", np.arange(per_image, dtype=np.int64)[None])
    width = ctx.const("kr_candidates", np.int64(candidates))
    class_index = ctx.node("Div", [flat, width])
    within_class = ctx.node("Where", [truncated, ranks, ctx.node("Mod", [flat, width])])
    key = ctx.node(
        "Add", [ctx.node("Mul", [class_index, ctx.const("kr_size", np.int64(per_image))]), within_class]
    )
    unused = ctx.const("kr_unused", np.int64(per_image * per_image + per_image))
    masked_key = ctx.node("Where", [selected, key, unused])
    sorted_keys = ctx.graph.unique(f"{ctx.name}/row_keys")
    order = ctx.graph.unique(f"{ctx.name}/row_order")
    ctx.graph.node(
        "TopK",
        [masked_key, ctx.const("kr_k", [per_image])],
        [sorted_keys, order],
        name=f"{ctx.name}/row_TopK",
        axis=1,
        largest=0,
        sorted=1,
    )
    places = ctx.node(
        "Transpose", [ctx.node("NonZero", [ctx.node("Less", [sorted_keys, unused])])], perm=[1, 0]
    )
    images = ctx.node("Gather", [places, ctx.const("kr_i0", np.int64(0))], axis=1)
    detection = ctx.node("GatherND", [order, places])
    parts = [images, ctx.node("Div", [detection, width]), ctx.node("Mod", [detection, width])]
    column = ctx.const("kr_col", [-1, 1])
    return ctx.node("Concat", [ctx.node("Reshape", [part, column]) for part in parts], axis=1)


def _introsort_ranks(ctx: LayerContext, flat_keep: str, flat_scores: str, size: int) -> str:
    """Each kept detection's place in the output of Caffe's std::sort (descending score) over the kept
    detections in label-then-NMS order, as libstdc++ (GCC >= 4.9) sorts: introsort partitions (median of
    three moved to the front, Hoare's unguarded partition) until segments hold at most 16 elements, then an
    insertion sort, which keeps the partitioned order among equal scores. Every partition round runs on all
    segments at once: the k-th left stop (score <= pivot) swaps with the k-th right stop (score >= pivot)
    while they have not crossed. Not modelled: the heapsort fallback past 2*log2(n) levels."""
    int64 = TensorProto.INT64
    positions = ctx.const("is_pos", np.arange(size, dtype=np.int64)[None])
    keep_int = ctx.node("Cast", [flat_keep], to=int64)
    count = ctx.node("ReduceSum", [keep_int, ctx.const("is_axis", [1])], keepdims=1)  # n per image [B, 1]
    # Kept detections first, in their label/NMS order, then the others (a segment that is never sorted).
    kept_before = ctx.node(
        "Sub", [ctx.node("CumSum", [keep_int, ctx.const("is_cum_axis", np.int64(1))]), keep_int]
    )
    others_before = ctx.node("Sub", [positions, kept_before])
    slot = ctx.node("Where", [flat_keep, kept_before, ctx.node("Add", [count, others_before])])
    zeros = ctx.node(
        "Mul",
        [ctx.node("Expand", [positions, ctx.node("Shape", [keep_int])]), ctx.const("is_zero", np.int64(0))],
    )
    flat_index = ctx.node("Add", [zeros, positions])
    values = ctx.node(
        "ScatterElements", [ctx.node("Cast", [zeros], to=TensorProto.FLOAT), slot, flat_scores], axis=1
    )
    origin = ctx.node("ScatterElements", [zeros, slot, flat_index], axis=1)
    real = ctx.node("Less", [positions, count])
    start = ctx.node("Where", [real, zeros, ctx.node("Add", [zeros, count])])
    end = ctx.node("Where", [real, ctx.node("Add", [zeros, count]), ctx.const("is_size", np.int64(size))])
    powers = ctx.const("is_powers", [2**k for k in range(1, 40)])
    log2 = ctx.node(
        "ReduceSum",
        [
            ctx.node("Cast", [ctx.node("GreaterOrEqual", [count, powers])], to=int64),
            ctx.const("is_axis2", [1]),
        ],
        keepdims=1,
    )
    depth = ctx.node("Mul", [log2, ctx.const("is_two", np.int64(2))])
    zero_column = ctx.node(
        "Slice", [zeros, ctx.const("is_c0", [0]), ctx.const("is_c1", [1]), ctx.const("is_c_axis", [1])]
    )

    levels = 2 * max(1, size.bit_length() - 1)
    body = _introsort_level_graph(ctx.name, size, positions, flat_index, real, depth, zero_column)
    outputs = [ctx.graph.unique(f"{ctx.name}/is_{name}") for name in ("values", "origin", "start", "end")]
    ctx.graph.node(
        "Loop",
        [ctx.const("is_levels", np.int64(levels)), "", values, origin, start, end],
        outputs,
        name=f"{ctx.name}/introsort",
        body=body,
    )
    values, origin = outputs[:2]
    # The final insertion sort is stable: descending score, ties in the partitioned order.
    ordered_values = ctx.node("Where", [real, values, _scalar(ctx, "is_neg_inf", -np.inf)])
    _, order = _stable_sort_descending(ctx, ordered_values, size, "is_final")
    sorted_origin = ctx.node("GatherElements", [origin, order], axis=1)
    return ctx.node("ScatterElements", [zeros, sorted_origin, flat_index], axis=1)


class _Subgraph:
    """Nodes of a Loop body, named under a prefix (subgraph names must not clash with the outer graph's)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list = []
        self._count = 0

    def name(self, base: str) -> str:
        self._count += 1
        return f"{self.prefix}/{base}_{self._count}"

    def node(self, op_type: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        output = output or self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output

    def const(self, base: str, values, dtype=np.int64) -> str:
        array = np.asarray(values, dtype=dtype)
        output = self.name(base)
        tensor = helper.make_tensor(
            output, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array.reshape(-1).tolist()
        )
        self.nodes.append(helper.make_node("Constant", [], [output], name=output, value=tensor))
        return output


def _introsort_level_graph(
    name: str, size: int, positions: str, flat_index: str, real: str, depth: str, zero_column: str
) -> helper.GraphProto:
    """One introsort partition level over every segment longer than 16 (Loop body; see _introsort_ranks)."""
    int64 = TensorProto.INT64
    g = _Subgraph(f"{name}/introsort")
    level, cond = g.name("level"), g.name("cond")
    values, origin, start, end = (g.name(n) for n in ("values_in", "origin_in", "start_in", "end_in"))
    inputs = [level, cond, values, origin, start, end]
    last = g.const("last", np.int64(size - 1))

    def gather(data: str, index: str) -> str:
        return g.node("GatherElements", [data, index], axis=1)

    def clamp(index: str) -> str:
        return g.node("Min", [index, last])

    seg = g.node("Sub", [end, start])
    active = g.node(
        "And",
        [
            g.node("And", [g.node("Greater", [seg, g.const("is_16", np.int64(16))]), real]),
            g.node("Greater", [depth, level]),
        ],
    )
    one = g.const("is_one", np.int64(1))
    x = clamp(g.node("Add", [start, one]))
    y = clamp(g.node("Add", [start, g.node("Div", [seg, g.const("is_2", np.int64(2))])]))
    z = clamp(g.node("Max", [g.node("Sub", [end, one]), start]))
    vx, vy, vz = gather(values, x), gather(values, y), gather(values, z)
    x_gt_y, y_gt_z, x_gt_z = (g.node("Greater", pair) for pair in ([vx, vy], [vy, vz], [vx, vz]))
    pick = g.node(
        "Where",
        [
            x_gt_y,
            g.node("Where", [y_gt_z, y, g.node("Where", [x_gt_z, z, x])]),
            g.node("Where", [x_gt_z, x, g.node("Where", [y_gt_z, z, y])]),
        ],
    )
    at_start = g.node("And", [active, g.node("Equal", [positions, start])])
    at_pick = g.node("And", [active, g.node("Equal", [positions, pick])])
    source = g.node("Where", [at_start, pick, g.node("Where", [at_pick, start, flat_index])])
    values, origin = gather(values, source), gather(origin, source)
    pivot = gather(values, start)
    left = g.node(
        "And",
        [
            g.node("And", [active, g.node("Greater", [positions, start])]),
            g.node("Not", [g.node("Greater", [values, pivot])]),
        ],
    )
    right = g.node("And", [active, g.node("Not", [g.node("Greater", [pivot, values])])])
    left_int, right_int = g.node("Cast", [left], to=int64), g.node("Cast", [right], to=int64)
    axis = g.const("is_ax", np.int64(1))
    left_cum = g.node("CumSum", [left_int, axis])
    left_before = g.node("Sub", [left_cum, left_int])
    left_base = gather(left_before, start)
    left_rank = g.node("Sub", [left_before, left_base])
    left_count = g.node(
        "Sub", [gather(left_cum, clamp(g.node("Max", [g.node("Sub", [end, one]), start]))), left_base]
    )
    right_cum = g.node("CumSum", [right_int, axis], reverse=1)  # stops at or after each position
    right_padded = g.node("Concat", [right_cum, zero_column], axis=1)
    right_base = gather(right_padded, end)  # stops from the segment's end on
    right_rank = g.node("Sub", [g.node("Sub", [right_cum, right_int]), right_base])
    right_count = g.node("Sub", [gather(right_cum, start), right_base])
    beyond = g.node("Add", [positions, g.const("is_m", np.int64(size))])
    no_index = g.node("Mul", [flat_index, g.const("zero", np.int64(0))])
    table_shape = g.node("Concat", [no_index, no_index], axis=1)
    left_table = g.node(
        "ScatterElements",
        [table_shape, g.node("Where", [left, g.node("Add", [start, left_rank]), beyond]), flat_index],
        axis=1,
    )
    right_table = g.node(
        "ScatterElements",
        [
            table_shape,
            g.node("Where", [right, g.node("Add", [start, right_rank]), beyond]),
            flat_index,
        ],
        axis=1,
    )
    offset = g.node("Sub", [positions, start])
    left_at = gather(left_table, flat_index)
    right_at = gather(right_table, flat_index)
    crossing = g.node(
        "And",
        [
            g.node("And", [active, g.node("Less", [offset, left_count])]),
            g.node("And", [g.node("Less", [offset, right_count]), g.node("Less", [left_at, right_at])]),
        ],
    )
    swaps_cum = g.node("CumSum", [g.node("Cast", [crossing], to=int64), axis])
    swaps = g.node(
        "Sub",
        [
            gather(swaps_cum, clamp(g.node("Max", [g.node("Sub", [end, one]), start]))),
            g.node("Sub", [gather(swaps_cum, start), gather(g.node("Cast", [crossing], to=int64), start)]),
        ],
    )
    # The left scan stops at the next left stop, or at the last swapped right stop (which now holds a
    # score <= pivot), whichever comes first.
    next_left = g.node(
        "Where",
        [
            g.node("Less", [swaps, left_count]),
            gather(left_table, clamp(g.node("Add", [start, swaps]))),
            g.const("is_far", np.int64(2 * size)),
        ],
    )
    previous = g.node("Max", [g.node("Sub", [swaps, one]), g.const("is_0", np.int64(0))])
    last_right = gather(right_table, clamp(g.node("Add", [start, previous])))
    cut = g.node(
        "Where",
        [
            g.node("Greater", [swaps, g.const("is_00", np.int64(0))]),
            g.node("Min", [next_left, last_right]),
            next_left,
        ],
    )
    from_right = g.node("And", [left, g.node("Less", [left_rank, swaps])])
    from_left = g.node("And", [right, g.node("Less", [right_rank, swaps])])
    source = g.node(
        "Where",
        [
            from_right,
            gather(right_table, clamp(g.node("Add", [start, left_rank]))),
            g.node(
                "Where",
                [from_left, gather(left_table, clamp(g.node("Add", [start, right_rank]))), flat_index],
            ),
        ],
    )
    values, origin = gather(values, source), gather(origin, source)
    below_cut = g.node("Less", [positions, cut])
    start = g.node("Where", [active, g.node("Where", [below_cut, start, cut]), start])
    end = g.node("Where", [active, g.node("Where", [below_cut, cut, end]), end])
    outputs = [g.node("Identity", [cond]), *(g.node("Identity", [v]) for v in (values, origin, start, end))]
    types = [TensorProto.BOOL, TensorProto.FLOAT, int64, int64, int64]
    return helper.make_graph(
        g.nodes,
        g.name("level_graph"),
        [
            helper.make_tensor_value_info(n, t, [] if n in (level, cond) else None)
            for n, t in zip(
                inputs, [int64, TensorProto.BOOL, TensorProto.FLOAT, int64, int64, int64], strict=True
            )
        ],
        [
            helper.make_tensor_value_info(n, t, [] if t == TensorProto.BOOL else None)
            for n, t in zip(outputs, types, strict=True)
        ],
    )
