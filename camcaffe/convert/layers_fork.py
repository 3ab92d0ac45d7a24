"""Layers of popular Caffe forks: Axpy (SENet), the MobileNet forks' depthwise convolutions,
ShuffleChannel (ShuffleNet), Reorg (YOLOv2 ports), and BVLC's SPP and Im2col.

Each converter follows the fork's CPU Forward (the value Caffe computes); where the fork's GPU
kernel computes something else, a comment says so."""

from __future__ import annotations

import numpy as np

from camcaffe.caffe import caffe_pb2
from camcaffe.convert.axes import canonical_axis, product, spatial_values
from camcaffe.convert.layers_conv import conv_output_size, convolution, emit_conv
from camcaffe.convert.registry import (
    LayerContext,
    LayerRefused,
    Shape,
    converter,
    get_converter,
    refused_type,
)


def _optional(param, field: str) -> int | None:
    return int(getattr(param, field)) if param.HasField(field) else None


def _window_2d(param: caffe_pb2.ConvolutionParameter) -> tuple[list[int], list[int], list[int], list[int]]:
    """Kernel, stride, pad and dilation (per spatial axis) of a 2-D convolution_param."""
    kernel = spatial_values(
        param.kernel_size, _optional(param, "kernel_h"), _optional(param, "kernel_w"), 2, None, "kernel_size"
    )
    stride = spatial_values(
        param.stride, _optional(param, "stride_h"), _optional(param, "stride_w"), 2, 1, "stride"
    )
    pad = spatial_values(param.pad, _optional(param, "pad_h"), _optional(param, "pad_w"), 2, 0, "pad")
    dilation = spatial_values(param.dilation, None, None, 2, 1, "dilation")
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
        raise LayerRefused(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    return kernel, stride, pad, dilation


def _require_4d(ctx: LayerContext, what: str = "") -> None:
    if len(ctx.shape) != 4:
        raise LayerRefused(
            f"{what or ctx.layer.type} needs a 4-D (N, C, H, W) bottom, got {tuple(ctx.shape)}"
        )


# ------------------------------------------------------------------------------------------- SENet


@converter("Axpy", arity=(3, 3, 1, 1))
def axpy(ctx: LayerContext) -> list[Shape]:
    """hujie-frank/SENet: top = scale * x + y for bottoms (scale, x, y), scale (N, C[, 1, 1]) broadcast
    over x's spatial axes (axpy_layer.cpp and .cu agree). OpenCV 4's importer swaps x and y (scale * y + x),
    so `--verify` leaves Axpy tops and everything after them uncompared on SENets."""
    scale_shape, x_shape, y_shape = ctx.input_shapes
    if len(x_shape) < 2 or len(scale_shape) < 2:
        raise LayerRefused(f"scale {tuple(scale_shape)} and x {tuple(x_shape)} need at least 2 axes")
    if list(x_shape) != list(y_shape):
        raise LayerRefused(f"x {tuple(x_shape)} and y {tuple(y_shape)} must have the same shape")
    batch, channels = x_shape[0], x_shape[1]
    if scale_shape[0] != batch or scale_shape[1] != channels:
        raise LayerRefused(f"scale {tuple(scale_shape)} must start with x's (N, C) = ({batch}, {channels})")
    if product(scale_shape) != batch * channels:
        # The fork only checks axes 2 and 3 of a 4-D scale and then reads its first N*C values.
        raise LayerRefused(f"scale {tuple(scale_shape)} must hold one value per (n, c): shape (N, C, 1, 1)")
    broadcast = [0, channels] + [1] * (len(x_shape) - 2)
    scale = ctx.inputs[0]
    if list(scale_shape) != [batch, *broadcast[1:]]:
        scale = ctx.node("Reshape", [scale, ctx.const("scale_shape", broadcast)])
    scaled = ctx.node("Mul", [scale, ctx.inputs[1]])
    ctx.node("Add", [scaled, ctx.inputs[2]], ctx.outputs)
    return [list(x_shape)]


# ------------------------------------------------------------------------------------------- MobileNet


@converter("DepthwiseConvolution")
def depthwise_convolution(ctx: LayerContext) -> list[Shape]:
    """yonghenglh6/DepthwiseConvolution: its CPU Forward is BaseConvolutionLayer's, i.e. Convolution
    with convolution_param's group (weights (num_output, C/group, kh, kw)). Its GPU kernel assumes
    group == C == num_output, ignores dilation and misaligns the kernel on maps smaller than the
    kernel extent; those models are converted as the CPU computes them."""
    return convolution(ctx)


@converter("ConvolutionDepthwise")
def convolution_depthwise(ctx: LayerContext) -> list[Shape]:
    """The MobileNet-YOLO / BVLC PR 5665 layer (conv_dw_layer.cpp): one kh x kw filter per input
    channel, weights (C, 1, kh, kw), bias (C); the top has C channels, group is not read. Without
    stride/pad the PR's LayerSetUp reads past an empty repeated field; the forks that run such files
    (mini-caffe) use 1 and 0, as here."""
    _require_4d(ctx)
    param = ctx.layer.convolution_param
    if canonical_axis(param.axis, 4, "convolution_param.axis") != 1:
        raise LayerRefused("convolution_param.axis other than 1 is not supported")
    channels = ctx.shape[1]
    if param.HasField("num_output") and param.num_output != channels:
        # conv_dw_layer ignores num_output; BaseConvolution-based layers of the same name honour it.
        raise LayerRefused(
            f"num_output {param.num_output} differs from the input channels {channels}: forks of this "
            "type disagree on its meaning (conv_dw_layer outputs C channels, others num_output); set "
            f"num_output: {channels} (or use Convolution with group)"
        )
    for name in ("stride", "pad"):
        if param.HasField(f"{name}_h") != param.HasField(f"{name}_w"):
            # conv_dw_layer reads x_h/x_w only as a pair, else the (here absent) repeated field.
            raise LayerRefused(f"{name}_h and {name}_w must be given together")
    kernel, stride, pad, dilation = _window_2d(param)
    expected = [(channels, 1, *kernel)] + ([(channels,)] if param.bias_term else [])
    return emit_conv(ctx, ctx.params(expected), kernel, stride, pad, dilation, channels, channels)


# ------------------------------------------------------------------------------------------- ShuffleNet


@converter("ShuffleChannel")
def shuffle_channel(ctx: LayerContext) -> list[Shape]:
    """farmingyard/ShuffleNet: channel i*(C/g)+j moves to j*g+i (a (g, C/g) transpose per item)."""
    shape = ctx.shape
    if len(shape) < 2:
        raise LayerRefused(f"needs a bottom with a channel axis, got {tuple(shape)}")
    group = int(ctx.layer.shuffle_channel_param.group)
    channels = shape[1]
    if group <= 0 or channels % group:
        raise LayerRefused(f"group {group} must be positive and divide the channels ({channels})")
    if group == 1 or group == channels:
        ctx.node("Identity", [ctx.inputs[0]], ctx.outputs)
        return [list(shape)]
    spatial = product(shape[2:])
    grouped = ctx.node(
        "Reshape", [ctx.inputs[0], ctx.const("grouped", [0, group, channels // group, spatial])]
    )
    swapped = ctx.node("Transpose", [grouped], perm=[0, 2, 1, 3])
    ctx.node("Reshape", [swapped, ctx.const("shape", [0, *shape[1:]])], ctx.outputs)
    return [list(shape)]


# ------------------------------------------------------------------------------------------- YOLOv2


@converter("Reorg")
def reorg(ctx: LayerContext) -> list[Shape]:
    """The YOLOv2 ports' Reorg: darknet's reorg_cpu called with the bottom's (w, h, c) and
    forward = reverse. Not a plain space-to-depth: the flat bottom is read as (C/s^2, H*s, W*s) and
    each (dy, dx) offset of that map becomes a block of C/s^2 channels on the bottom's (H, W) grid,
    which is then read as (C*s^2, H/s, W/s). reverse: the inverse placement, top (C/s^2, H*s, W*s)."""
    _require_4d(ctx)
    param = ctx.layer.reorg_param
    if not param.HasField("stride"):
        raise LayerRefused("reorg_param.stride must be given (the ports disagree on its default)")
    stride = int(param.stride)
    batch, channels, height, width = ctx.shape
    if stride <= 0 or channels % (stride * stride):
        raise LayerRefused(
            f"stride {stride} must be positive with stride^2 dividing the channels ({channels})"
        )
    blocks = channels // (stride * stride)
    if param.reverse:
        # bottom read as (s, s, C/s^2, H, W) -> top (C/s^2, H, s, W, s)
        split = [0, stride, stride, blocks, height, width]
        perm = [0, 3, 4, 1, 5, 2]
        out = [batch, blocks, height * stride, width * stride]
    else:
        if height % stride or width % stride:
            raise LayerRefused(
                f"height {height} and width {width} must be multiples of the stride {stride} (Caffe would "
                "write past the top)"
            )
        # bottom read as (C/s^2, H, s, W, s) -> top (s, s, C/s^2, H, W)
        split = [0, blocks, height, stride, width, stride]
        perm = [0, 3, 5, 1, 2, 4]
        out = [batch, channels * stride * stride, height // stride, width // stride]
    if stride == 1:
        ctx.node("Identity", [ctx.inputs[0]], ctx.outputs)
        return [out]
    six_d = ctx.node("Reshape", [ctx.inputs[0], ctx.const("split", split)])
    moved = ctx.node("Transpose", [six_d], perm=perm)
    ctx.node("Reshape", [moved, ctx.const("shape", [0, *out[1:]])], ctx.outputs)
    return [out]


# ------------------------------------------------------------------------------------------- BVLC SPP, Im2col


def spp_level_geometry(level: int, height: int, width: int) -> tuple[list[int], list[int]]:
    """BVLC SPPLayer::GetPoolingParam: (kernel, pad) of pyramid level `level`; stride = kernel."""
    bins = 2**level
    kernel, pad = [], []
    for size in (height, width):
        k = -(-size // bins)
        kernel.append(k)
        pad.append((k * bins - size + 1) // 2)
    return kernel, pad


def _spp_pooling_layer(name: str, method: int, kernel: list[int], pad: list[int]) -> caffe_pb2.LayerParameter:
    layer = caffe_pb2.LayerParameter(name=name, type="Pooling")
    pool = layer.pooling_param
    pool.pool = (
        caffe_pb2.PoolingParameter.MAX
        if method == caffe_pb2.SPPParameter.MAX
        else caffe_pb2.PoolingParameter.AVE
    )
    pool.kernel_h, pool.kernel_w = kernel
    pool.stride_h, pool.stride_w = kernel
    pool.pad_h, pool.pad_w = pad
    return layer


@converter("SPP")
def spp(ctx: LayerContext) -> list[Shape]:
    """BVLC SPP: per level l a Pooling with 2^l bins (kernel ceil(H/2^l), pad (k*2^l-H+1)/2, stride k,
    Caffe's ceil rounding), each flattened, concatenated on axis 1. pyramid_height 1: the Pooling's
    4-D top itself."""
    _require_4d(ctx)
    param = ctx.layer.spp_param
    height, width = ctx.shape[2:]
    levels = int(param.pyramid_height)
    if levels < 1:
        raise LayerRefused("spp_param.pyramid_height must be at least 1")
    if param.pool == param.STOCHASTIC:
        raise LayerRefused("STOCHASTIC pooling is not supported")
    pooling_converter = get_converter("Pooling")
    assert pooling_converter is not None
    flat, total = [], 0
    for level in range(levels):
        kernel, pad = spp_level_geometry(level, height, width)
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise LayerRefused(
                f"level {level} of a {height}x{width} input needs kernel {kernel} with pad {pad}; Caffe's "
                "Pooling aborts when pad >= kernel (use a lower pyramid_height or a larger input)"
            )
        name = f"{ctx.name}/level{level}"
        last = levels == 1
        sub = LayerContext(
            layer=_spp_pooling_layer(name, param.pool, kernel, pad),
            inputs=[ctx.inputs[0]],
            input_shapes=[list(ctx.shape)],
            outputs=list(ctx.outputs) if last else [ctx.graph.unique(f"{name}:out")],
            graph=ctx.graph,
            fetch_params=ctx.fetch_params,
        )
        (pooled_shape,) = pooling_converter(sub)
        ctx.batch_fixed = ctx.batch_fixed or sub.batch_fixed
        if last:
            return [list(pooled_shape)]
        flat.append(ctx.node("Flatten", [sub.outputs[0]], axis=1))
        total += product(pooled_shape[1:])
    ctx.node("Concat", flat, ctx.outputs, axis=1)
    return [[ctx.shape[0], total]]


def im2col_indices(
    height: int, width: int, kernel: list[int], stride: list[int], pad: list[int], dilation: list[int]
) -> tuple[np.ndarray, list[int]]:
    """Flat indices into the zero-padded (H+2p) x (W+2p) plane, ordered (kh, kw, out_h, out_w)."""
    out = [
        conv_output_size(s, k, st, p, d)
        for s, k, st, p, d in zip((height, width), kernel, stride, pad, dilation, strict=True)
    ]
    padded_width = width + 2 * pad[1]
    rows = (np.arange(kernel[0]) * dilation[0])[:, None] + (np.arange(out[0]) * stride[0])[None, :]
    cols = (np.arange(kernel[1]) * dilation[1])[:, None] + (np.arange(out[1]) * stride[1])[None, :]
    index = rows[:, None, :, None] * padded_width + cols[None, :, None, :]
    return index.reshape(-1).astype(np.int64), out


@converter("Im2col")
def im2col(ctx: LayerContext) -> list[Shape]:
    """BVLC Im2col: top (N, C*kh*kw, out_h, out_w), channel c*kh*kw + i*kw + j holding the input at
    kernel offset (i, j) of each window (zero where the window covers padding)."""
    param = ctx.layer.convolution_param
    _require_4d(ctx)
    if canonical_axis(param.axis, 4, "convolution_param.axis") != 1:
        raise LayerRefused("convolution_param.axis other than 1 is not supported")
    kernel, stride, pad, dilation = _window_2d(param)
    batch, channels, height, width = ctx.shape
    index, out = im2col_indices(height, width, kernel, stride, pad, dilation)
    if min(out) <= 0:
        raise LayerRefused(
            f"kernel {kernel} (dilation {dilation}) is larger than the padded input {(height, width)}"
        )
    source = ctx.inputs[0]
    if any(pad):
        source = ctx.node(
            "Pad", [source, ctx.const("pads", [0, 0, pad[0], pad[1], 0, 0, pad[0], pad[1]])], mode="constant"
        )
    plane = (height + 2 * pad[0]) * (width + 2 * pad[1])
    flat = ctx.node("Reshape", [source, ctx.const("planes", [0, channels, plane])])
    gathered = ctx.node("Gather", [flat, ctx.const("index", index)], axis=2)
    out_shape = [batch, channels * kernel[0] * kernel[1], *out]
    ctx.node("Reshape", [gathered, ctx.const("shape", [0, *out_shape[1:]])], ctx.outputs)
    return [out_shape]


# ------------------------------------------------------------------------------------------- YOLO outputs

# The YOLO ports' output layers differ from port to port (eight Region layers among the public forks: some
# rewrite the bottom with logistic/softmax, some emit boxes and thresholded class scores as two tops, one
# swaps width and height), and OpenCV's Region reads its anchors from a layer blob that no fork writes, so
# there is no second opinion. They are refused with what to do instead.
_YOLO_OUTPUT = (
    "YOLO output layers differ between the Caffe ports (anchor decoding, thresholds, NMS and even the number "
    "of tops), so camcaffe does not convert them; remove this layer, convert the net up to its bottom blob and "
    "decode the boxes after inference as the port's post-processing does"
)
for _type_name in (
    "Region",
    "RegionLoss",
    "Yolo",
    "YoloV1",
    "Yolov3",
    "YoloDetectionOutput",
    "Yolov3DetectionOutput",
    "YoloLoss",
    "YOLOLoss",
    "YoloV2Loss",
    "YoloSeg",
):
    refused_type(_type_name, _YOLO_OUTPUT)
