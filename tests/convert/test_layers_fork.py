"""Fork layers (Axpy, depthwise convolutions, ShuffleChannel, Reorg, SPP, Im2col) against the numpy
oracle (tests/caffe_reference.py, written from the forks' C++) and OpenCV 4's Caffe importer.

Real Caffe outputs for SPP and Im2col are checked in tests/convert/test_golden_v2.py
(spp_im2col_filter); the oracle's SPP/Im2col equal them too (test below)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from camcaffe.errors import CamcaffeError
from tests import caffe_reference as cr
from tests import random_nets as rn
from tests.convert import test_fuzz_layers as fuzz
from tests.helpers import opencv_blobs, shared_path


def _net(shape: tuple[int, ...], layers: str) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'name: "fork"\ninput: "data"\ninput_shape {{ {dims} }}\n{layers}\n'


def _conv(name: str, bottom: str, num_output: int, kernel: int = 1, extra: str = "") -> str:
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
        f"convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {kernel // 2} {extra}}} }}\n"
    )


def _layer(name: str, type_: str, bottoms: list[str], params: str = "", top: str | None = None) -> str:
    wiring = "".join(f'bottom: "{b}" ' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {wiring}top: "{top or name}" {params} }}\n'


def _se_block(prefix: str, x: str, shortcut: str, channels: int, fc: bool) -> str:
    """SE-ResNet's tail: global AVE pool -> reduce -> ReLU -> expand -> Sigmoid -> Axpy(scale, x, shortcut)."""
    pool = f"{prefix}_pool"
    text = _layer(pool, "Pooling", [x], "pooling_param { pool: AVE global_pooling: true }")
    if fc:
        text += _layer(f"{prefix}_down", "InnerProduct", [pool], "inner_product_param { num_output: 2 }")
        text += _layer(f"{prefix}_down/relu", "ReLU", [f"{prefix}_down"], top=f"{prefix}_down")
        up = f"inner_product_param {{ num_output: {channels} }}"
        text += _layer(f"{prefix}_up", "InnerProduct", [f"{prefix}_down"], up)
    else:
        text += _conv(f"{prefix}_down", pool, 2)
        text += _layer(f"{prefix}_down/relu", "ReLU", [f"{prefix}_down"], top=f"{prefix}_down")
        text += _conv(f"{prefix}_up", f"{prefix}_down", channels)
    text += _layer(f"{prefix}_prob", "Sigmoid", [f"{prefix}_up"], top=f"{prefix}_up")
    return text + _layer(prefix, "Axpy", [f"{prefix}_up", x, shortcut])


SE_RESNET = _net(
    (2, 3, 9, 8),
    _conv("conv1", "data", 6, 3)
    + _layer("conv1/relu", "ReLU", ["conv1"], top="conv1")
    + _conv("res_a", "conv1", 6, 3)
    + _se_block("res1", "res_a", "conv1", 6, fc=False)
    + _layer("res1/relu", "ReLU", ["res1"], top="res1")
    + _conv("res_b", "res1", 6, 1)
    + _se_block("res2", "res_b", "res1", 6, fc=True),
)

SHUFFLENET_UNIT = _net(
    (2, 6, 7, 7),
    _conv("gconv1", "data", 12, 1, "group: 3")
    + _layer("gconv1/relu", "ReLU", ["gconv1"], top="gconv1")
    + _layer("shuffle", "ShuffleChannel", ["gconv1"], "shuffle_channel_param { group: 3 }")
    + _layer(
        "dw",
        "ConvolutionDepthwise",
        ["shuffle"],
        "convolution_param { num_output: 12 kernel_size: 3 stride: 2 pad: 1 bias_term: false }",
    )
    + _conv("gconv2", "dw", 6, 1, "group: 3")
    + _layer("shortcut", "Pooling", ["data"], "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }")
    + _layer("concat", "Concat", ["shortcut", "gconv2"])
    + _layer("shuffle_odd", "ShuffleChannel", ["concat"], "shuffle_channel_param { group: 4 }"),
)

_MOBILENET_DW = (
    _layer(
        "conv2_1/dw",
        "ConvolutionDepthwise",
        ["data"],
        "convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 }",
    )
    + _layer("conv2_1/dw/relu", "ReLU", ["conv2_1/dw"], top="conv2_1/dw")
    + _conv("conv2_1/sep", "conv2_1/dw", 8)
)
_MOBILENET_DILATED = _layer(
    "dw_dil",
    "ConvolutionDepthwise",
    ["conv2_1/sep"],
    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 dilation: 2 }",
)
_YONGHENG_DW = _layer(
    "conv2_2/dw",
    "DepthwiseConvolution",
    ["conv2_1/sep"],
    "convolution_param { num_output: 8 group: 8 kernel_h: 3 kernel_w: 2 stride: 2 pad: 1 bias_term: false }",
) + _layer(
    "dw_mult",
    "DepthwiseConvolution",
    ["conv2_1/sep"],
    "convolution_param { num_output: 16 group: 8 kernel_size: 3 pad: 2 dilation: 2 }",
)
MOBILENET_BLOCKS = _net((1, 4, 10, 9), _MOBILENET_DW + _YONGHENG_DW + _MOBILENET_DILATED)
MOBILENET_OPENCV = _net(
    (1, 4, 10, 9), _MOBILENET_DW + _MOBILENET_DILATED
)  # OpenCV has no DepthwiseConvolution

YOLO_REORG = _net(
    (2, 8, 6, 4),
    _layer("reorg", "Reorg", ["data"], "reorg_param { stride: 2 }")
    + _conv("conv", "reorg", 9, 1)
    + _layer("reorg_back", "Reorg", ["reorg"], "reorg_param { stride: 2 reverse: true }")
    + _layer("reorg3", "Reorg", ["conv"], "reorg_param { stride: 3 reverse: true }")
    + _layer("reorg1", "Reorg", ["data"], "reorg_param { stride: 1 }"),
)

SPP_IM2COL = _net(
    (2, 3, 11, 13),
    _layer("spp1", "SPP", ["data"], "spp_param { pyramid_height: 1 }")
    + _layer("spp3_max", "SPP", ["data"], "spp_param { pyramid_height: 3 pool: MAX }")
    + _layer("spp3_ave", "SPP", ["data"], "spp_param { pyramid_height: 3 pool: AVE }")
    + _layer("im2col", "Im2col", ["data"], "convolution_param { kernel_size: 3 stride: 2 pad: 1 }")
    + _layer(
        "im2col_rect",
        "Im2col",
        ["data"],
        "convolution_param { kernel_h: 2 kernel_w: 4 stride_h: 3 stride_w: 1 pad_h: 0 pad_w: 2 }",
    )
    + _layer("im2col_dil", "Im2col", ["data"], "convolution_param { kernel_size: 3 dilation: 2 pad: 1 }"),
)

NETS = {
    "se_resnet": SE_RESNET,
    "shufflenet_unit": SHUFFLENET_UNIT,
    "mobilenet_blocks": MOBILENET_BLOCKS,
    "yolo_reorg": YOLO_REORG,
    "spp_im2col": SPP_IM2COL,
}


def _reference_and_converted(tmp_path: Path, text: str, seed: int = 5):
    shape = cr.declared_inputs(cr.parse_net(text))["data"]
    weights = rn.random_weights(text, seed)
    x = rn.random_input(tuple(shape), seed)
    reference = cr.forward(text, weights, {"data": x})
    converted = fuzz.run_converted(tmp_path, text, weights, {"data": x})
    return x, reference, converted


@pytest.mark.parametrize("name", list(NETS))
def test_fork_net_matches_oracle_on_every_blob(name, tmp_path):
    _, reference, converted = _reference_and_converted(tmp_path, NETS[name])
    comparison = fuzz.compare_blobs(reference, converted)
    assert comparison.ok, comparison.problems
    assert len(reference) >= 5


# OpenCV 4.14 implements Axpy, ShuffleChannel, ConvolutionDepthwise and Reorg (not DepthwiseConvolution,
# SPP, Im2col), with these differences from the forks' C++: its Axpy computes scale * bottom[2] + bottom[1]
# (SENet's axpy_layer.cpp/.cu: scale * bottom[1] + bottom[2]) and needs a 4-D scale and batch 1; its Reorg
# reads no stride (always 2, so stride 3 fails its shape check) and no reverse; its ConvolutionDepthwise
# needs num_output. The nets below stay inside what both implement; Axpy is compared with OpenCV's formula.
OPENCV_NETS = {
    "se_resnet": (
        _net(
            (1, 3, 9, 8),
            _conv("conv1", "data", 6, 3)
            + _conv("res_a", "conv1", 6, 3)
            + _se_block("res1", "res_a", "conv1", 6, fc=False),
        ),
        ["res1_prob", "res1"],  # OpenCV's values past its swapped Axpy differ from Caffe's
    ),
    "shufflenet_unit": (SHUFFLENET_UNIT, ["shuffle", "dw", "shuffle_odd"]),
    "mobilenet_blocks": (MOBILENET_OPENCV, ["conv2_1/dw/relu", "dw_dil"]),
    "yolo_reorg": (
        _net(
            (2, 8, 6, 4),
            _layer("reorg", "Reorg", ["data"], "reorg_param { stride: 2 }") + _conv("conv", "reorg", 3),
        ),
        ["reorg", "conv"],
    ),
}


@pytest.mark.parametrize("name", list(OPENCV_NETS))
def test_fork_net_matches_opencv(name, tmp_path):
    pytest.importorskip("cv2")
    text, layer_names = OPENCV_NETS[name]
    x, reference, converted = _reference_and_converted(tmp_path, text)
    net = cr.parse_net(text)
    theirs = opencv_blobs(tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel", x, layer_names)
    layers = {layer.name: layer for layer in net.layer}
    for layer_name, value in zip(layer_names, theirs, strict=True):
        ours = converted[layers[layer_name].top[0]]
        assert fuzz.relative_error(reference[layers[layer_name].top[0]], ours) <= 1e-4, layer_name
        if layers[layer_name].type == "Axpy":
            scale, x_blob, y_blob = (converted[b] for b in layers[layer_name].bottom)
            assert fuzz.relative_error(scale * y_blob + x_blob, ours) > 1e-2  # the swap shows
            ours = scale * y_blob + x_blob
        assert value.size == ours.size, layer_name
        assert fuzz.relative_error(value.reshape(ours.shape), ours) <= 1e-4, layer_name


def test_shuffle_channel_permutation_order(tmp_path):
    """ShuffleNet's order on channel indices: (g rows, C/g columns) transposed."""
    text = _net(
        (1, 6, 1, 1), _layer("shuffle", "ShuffleChannel", ["data"], "shuffle_channel_param { group: 2 }")
    )
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    converted = fuzz.run_converted(tmp_path, text, {}, {"data": x})
    assert converted["shuffle"].reshape(-1).tolist() == [0, 3, 1, 4, 2, 5]


def test_reorg_is_darknets_order_not_space_to_depth(tmp_path):
    """Darknet's reorg (as the YOLOv2 ports run it) on a 4x4x4 ramp, values worked out from reorg_cpu."""
    text = _net((1, 4, 2, 2), _layer("reorg", "Reorg", ["data"], "reorg_param { stride: 2 }"))
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    converted = fuzz.run_converted(tmp_path, text, {}, {"data": x})["reorg"]
    # the bottom read as one 4x4 map; offset (dy, dx) becomes channel block 2*dy + dx of 4 channels,
    # each block laid out on the bottom's 2x2 grid, then read as (16, 1, 1)
    assert converted.shape == (1, 16, 1, 1)
    assert converted.reshape(-1).tolist() == [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]


@pytest.mark.parametrize(
    "layers,shape,needle",
    [
        (
            _layer("ax", "Axpy", ["s", "data", "data"], top="data"),
            (1, 2, 3, 3),
            "(Axpy) writes blob 'data'",
        ),
        (
            _layer(
                "dw", "ConvolutionDepthwise", ["data"], "convolution_param { num_output: 4 kernel_size: 3 }"
            ),
            (1, 2, 5, 5),
            "num_output 4 differs from the input channels 2",
        ),
        (
            _layer(
                "dw", "ConvolutionDepthwise", ["data"], "convolution_param { kernel_size: 3 stride_h: 2 }"
            ),
            (1, 2, 5, 5),
            "stride_h and stride_w must be given together",
        ),
        (
            _layer("rg", "Reorg", ["data"], "reorg_param { reverse: false }"),
            (1, 4, 4, 4),
            "stride must be given",
        ),
        (
            _layer("rg", "Reorg", ["data"], "reorg_param { stride: 2 }"),
            (1, 4, 5, 4),
            "multiples of the stride",
        ),
        (_layer("rg", "Reorg", ["data"], "reorg_param { stride: 2 }"), (1, 6, 4, 4), "dividing the channels"),
        (
            _layer("sh", "ShuffleChannel", ["data"], "shuffle_channel_param { group: 4 }"),
            (1, 6, 2, 2),
            "divide",
        ),
        (_layer("spp", "SPP", ["data"], "spp_param { pyramid_height: 3 }"), (1, 2, 5, 5), "pad >= kernel"),
        (
            _layer("spp", "SPP", ["data"], "spp_param { pool: STOCHASTIC pyramid_height: 2 }"),
            (1, 2, 8, 8),
            "STOCHASTIC",
        ),
        (_layer("spp", "SPP", ["data"], ""), (1, 2, 8, 8), "pyramid_height must be at least 1"),
    ],
)
def test_refusals_name_the_layer_and_the_reason(layers, shape, needle, tmp_path):
    from tests.helpers import convert_text

    text = _net(shape, layers)
    if '"s"' in layers:
        text = text.replace(
            'input: "data"', 'input: "s"\ninput_shape { dim: 1 dim: 2 dim: 1 dim: 1 }\ninput: "data"'
        )
    with pytest.raises(CamcaffeError) as error:
        convert_text(tmp_path, text)
    message = str(error.value)
    assert needle in message, message


@pytest.mark.parametrize("type_name", ["Region", "Yolo", "YoloDetectionOutput", "Yolov3DetectionOutput"])
def test_yolo_output_layers_are_refused_by_name(type_name, tmp_path):
    from tests.helpers import convert_text

    text = _net((1, 4, 2, 2), _layer("out", type_name, ["data"], "region_param { classes: 2 num: 1 }"))
    with pytest.raises(CamcaffeError) as error:
        convert_text(tmp_path, text)
    message = str(error.value)
    assert f"layer 'out' ({type_name}: YOLO output layers differ between the Caffe ports" in message, message
    assert "remove this layer" in message


def test_oracle_spp_and_im2col_equal_real_caffe():
    folder = shared_path("golden_v2", "spp_im2col_filter")
    text = "\n".join(
        line for line in (folder / "deploy.prototxt").read_text().splitlines() if "Filter" not in line
    )
    inputs = np.load(folder / "inputs.npz")
    ours = cr.forward(text, {}, {key: inputs[key] for key in inputs.files})
    reference = np.load(folder / "blobs.npz")
    for blob in ("spp_max3", "spp_ave2", "im2col_k3", "im2col_k2x3_dil"):
        assert fuzz.relative_error(reference[blob], ours[blob]) <= 1e-6, blob
