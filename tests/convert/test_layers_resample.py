"""Segmentation / resampling fork layers (camcaffe/convert/layers_resample.py) against the numpy oracle
(tests/caffe_reference.py, transcribed from each fork's C++ and checked here against real Caffe's golden_v2
outputs), OpenCV 4's Interp as a second opinion, and SegNet- / PSPNet-shaped synthetic nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from camcaffe.caffe.caffemodel import read_caffemodel, write_caffemodel
from camcaffe.convert.api import convert_files
from camcaffe.convert.converter import ConvertOptions
from camcaffe.errors import UnsupportedLayerError
from tests import caffe_reference as cr
from tests.helpers import assert_close, blobs_of, convert_text, net_text, opencv_blobs, shared_path


def _oracle(text: str, feeds: dict[str, np.ndarray], blobs_by_layer: dict[str, list[np.ndarray]]) -> dict:
    net = cr.parse_net(text)
    return cr.run_net(net, feeds, lambda layer, bottoms: blobs_by_layer.get(layer.name, []))


def _check(
    tmp_path: Path, text: str, shape: tuple[int, ...], seed: int = 0, batch: int | None = None
) -> dict:
    """Convert with random weights, run ONNX and the oracle on the same input; every blob must agree."""
    result, weights, onnx_path = convert_text(tmp_path, text, seed=seed)
    x = np.random.default_rng(seed).uniform(-1, 1, (batch or shape[0], *shape[1:])).astype(np.float32)
    got = blobs_of(result, onnx_path, {"data": x})
    record = {name: arrays for name, (_, arrays) in weights.record.items()}
    expected = _oracle(text, {"data": x}, record)
    for blob, value in expected.items():
        assert_close(got[blob], value, blob)
    return got


def _layer(name: str, kind: str, bottoms: list[str], params: str = "", top: str | None = None) -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{kind}" {bottom} top: "{top or name}" {params} }}\n'


@pytest.mark.parametrize("folder", ["pad_pixelshuffle_resize", "pool_mask_unpool_upsample"])
def test_oracle_matches_real_caffe(folder):
    """The oracle itself against brocolli-caffe's stored blobs (so the tests below compare to Caffe)."""
    path = shared_path("golden_v2", folder)
    weights = read_caffemodel(path / "weights.caffemodel") if (path / "weights.caffemodel").exists() else None

    def source(layer, bottoms):
        stored = weights.get(layer.name) if weights is not None else None
        return [blob.values.reshape(blob.shape) for blob in stored.blobs] if stored else []

    out = cr.run_net(
        cr.parse_net((path / "deploy.prototxt").read_text()), {"data": np.load(path / "input.npy")}, source
    )
    reference = np.load(path / "blobs.npz")
    for blob in reference.files:
        if blob in out:
            assert_close(out[blob], reference[blob], blob, rel=1e-6)


PAD_CASES = [
    "pad_type: CONSTANT pad_u: 1 pad_d: 0 pad_l: 2 pad_r: 3 pad_value: -0.5",
    "pad_type: REPLICATE pad_u: 3 pad_d: 1 pad_l: 0 pad_r: 2",
    "pad_type: REFLECT pad_u: 4 pad_d: 1 pad_l: 5 pad_r: 2",
    "pad_type: REFLECT pad_u: -1 pad_d: -2 pad_l: -1 pad_r: -3",
    "pad_u: 0",
]


@pytest.mark.parametrize("params", PAD_CASES)
def test_pad(tmp_path, params):
    _check(
        tmp_path,
        net_text((2, 3, 5, 6), _layer("pad", "Pad", ["data"], f"pad_param {{ {params} }}")),
        (2, 3, 5, 6),
    )


@pytest.mark.parametrize(("channels", "factor"), [(8, 2), (6, 2), (9, 3)])
def test_pixel_shuffle(tmp_path, channels, factor):
    """C = 6, r = 2: Caffe checks C % r only and ignores the channels past (C // r^2) * r^2."""
    params = f"pixelshuffle_param {{ upscale_factor: {factor} }}"
    text = net_text((1, channels, 4, 5), _layer("ps", "PixelShuffle", ["data"], params))
    assert _check(tmp_path, text, (1, channels, 4, 5))["ps"].shape == (
        1,
        channels // factor**2,
        4 * factor,
        5 * factor,
    )


RESIZE_CASES = [
    "height: 11 width: 14",
    "height: 2 width: 3",
    "height: 7 width: 5",
    "is_pyramid_test: true out_height_scale: 1.7 out_width_scale: 0.5",
]


@pytest.mark.parametrize("params", RESIZE_CASES)
def test_resize_drops_border_neighbours(tmp_path, params):
    text = net_text((1, 2, 5, 6), _layer("rs", "Resize", ["data"], f"resize_param {{ {params} }}"))
    _check(tmp_path, text, (1, 2, 5, 6))


def test_resize_of_a_single_row_attenuates_it(tmp_path):
    text = net_text((1, 2, 1, 4), _layer("rs", "Resize", ["data"], "resize_param { height: 3 width: 8 }"))
    got = _check(tmp_path, text, (1, 2, 1, 4))
    # rows 1 and 2 keep 2/3 and 1/3 of row 0 (the missing +1 row is dropped, not clamped)
    np.testing.assert_allclose(got["rs"][:, :, 2], got["rs"][:, :, 0] / 3, rtol=1e-5, atol=1e-6)


BILINEAR_CASES = [
    "dst_h: 9 dst_w: 13",
    "dst_h: 9 dst_w: 13 align_corners: false",
    "dst_h: 2 dst_w: 4 align_corners: false",
    "dst_h: 3 dst_w: 2",
    "dst_h: 8",
    "scale_factor: 1.5 align_corners: false",
    "scale_factor: 0.5",
    "dst_h: 1 dst_w: 1 align_corners: false",
]


@pytest.mark.parametrize("params", BILINEAR_CASES)
def test_bilinear_interpolate(tmp_path, params):
    text = net_text(
        (2, 2, 5, 7),
        _layer("bi", "BilinearInterpolate", ["data"], f"bilinear_interpolate_param {{ {params} }}"),
    )
    _check(tmp_path, text, (2, 2, 5, 7))


INTERP_CASES = [
    "zoom_factor: 3",
    "shrink_factor: 2",
    "height: 9 width: 4",
    "shrink_factor: 2 zoom_factor: 3",
    "zoom_factor: 2 pad_beg: -1 pad_end: -2",
    "height: 1 width: 5",
    "height: 5 width: 7",
]


@pytest.mark.parametrize("params", INTERP_CASES)
def test_interp(tmp_path, params):
    _check(
        tmp_path,
        net_text((2, 3, 5, 7), _layer("ip", "Interp", ["data"], f"interp_param {{ {params} }}")),
        (2, 3, 5, 7),
    )


def test_interp_agrees_with_opencv(tmp_path):
    """OpenCV 4 implements Interp (aligned corners) for zoom_factor and height/width; it ignores
    pad_beg/pad_end, ignores shrink_factor next to zoom_factor and gives an empty blob for shrink_factor
    alone (PSPNet's C++ crops and shrinks), so those stay with the oracle."""
    layers = "".join(
        _layer(name, "Interp", ["data"], f"interp_param {{ {params} }}")
        for name, params in [
            ("zoom", "zoom_factor: 4"),
            ("size", "height: 11 width: 3"),
            ("one", "height: 1 width: 4"),
        ]
    )
    text = net_text((1, 3, 6, 9), layers)
    got = _check(tmp_path, text, (1, 3, 6, 9))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 6, 9)).astype(np.float32)
    names = ["zoom", "size", "one"]
    for name, value in zip(
        names,
        opencv_blobs(tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel", x, names),
        strict=True,
    ):
        assert_close(got[name], value, f"opencv {name}")


@pytest.mark.parametrize("params", ["upsample_param { scale: 2 }", "upsample_param { scale: 3 }", ""])
def test_nearest_upsample(tmp_path, params):
    _check(tmp_path, net_text((2, 3, 4, 5), _layer("up", "Upsample", ["data"], params)), (2, 3, 4, 5))


def test_nearest_upsample_of_three_axes(tmp_path):
    data = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 } } }\n'
    text = data + _layer("up", "Upsample", ["data"], "upsample_param { scale: 2 dims_num: 3 }")
    assert _check(tmp_path, text, (2, 3, 5))["up"].shape == (2, 3, 10)


def _pool_mask(kernel: int, stride: int, pad: int = 0) -> str:
    params = f"pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} pad: {pad} }}"
    return f'layer {{ name: "pool" type: "Pooling" bottom: "conv1" top: "pool" top: "mask" {params} }}\n'


CONV1 = _layer("conv1", "Convolution", ["data"], "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
CONV2 = _layer("conv2", "Convolution", ["pool"], "convolution_param { num_output: 4 kernel_size: 1 }")


@pytest.mark.parametrize(
    ("pool", "unpool"),
    [
        ((2, 2, 0), "max_unpool_param { dst_h: 11 dst_w: 13 }"),
        ((3, 2, 1), "max_unpool_param { dst_h: 11 dst_w: 13 }"),
        ((3, 2, 0), "max_unpool_param { dst_h: 12 dst_w: 15 }"),
    ],
)
def test_max_unpool_of_another_blob_keeps_the_last_write(tmp_path, pool, unpool):
    """Overlapping windows (kernel 3, stride 2) repeat mask indices; unpooling conv2 (not the pooled values)
    writes different values to one cell, and Caffe keeps the last. dst 12x15 does not re-map the indices."""
    text = net_text(
        (2, 3, 11, 13),
        CONV1 + _pool_mask(*pool) + CONV2 + _layer("unpool", "MaxUnPool", ["conv2", "mask"], unpool),
    )
    _check(tmp_path, text, (2, 3, 11, 13), seed=3)


SEGNET_UPSAMPLE_CASES = [
    ("upsample_param { scale: 2 }", (2, 2, 0), (9, 12)),
    ("", (2, 2, 0), (9, 12)),
    ("upsample_param { upsample_h: 11 upsample_w: 13 }", (2, 2, 0), (9, 12)),
    ("upsample_param { scale_h: 2 scale_w: 2 pad_out_h: true }", (2, 2, 0), (9, 12)),
    ("upsample_param { upsample_h: 11 upsample_w: 13 }", (3, 2, 0), (11, 13)),
]


@pytest.mark.parametrize(("params", "pool", "size"), SEGNET_UPSAMPLE_CASES)
def test_segnet_upsample(tmp_path, params, pool, size):
    text = net_text(
        (1, 3, *size), CONV1 + _pool_mask(*pool) + CONV2 + _layer("up", "Upsample", ["conv2", "mask"], params)
    )
    _check(tmp_path, text, (1, 3, *size), seed=1)


def test_segnet_upsample_with_symbolic_batch(tmp_path):
    text = net_text((1, 3, 8, 10), CONV1 + _pool_mask(2, 2) + _layer("up", "Upsample", ["pool", "mask"], ""))
    assert _check(tmp_path, text, (1, 3, 8, 10), batch=3)["up"].shape == (3, 4, 8, 10)


@pytest.mark.parametrize(
    "params", ["bn_param { bn_mode: INFERENCE }", "bn_param { bn_mode: LEARN }", "bn_param { eps: 0.01 }", ""]
)
def test_bn_from_the_blob_layout(tmp_path, params):
    """SegNet's 2 blobs (INFERENCE: scale and shift; LEARN: the batch's own statistics, eps 1e-9) or
    PSPNet's 4 blobs (1,C,1,1) with the running variance; in place, as both nets use it."""
    bn = _layer("bn", "BN", ["conv1"], params, top="conv1")
    text = net_text((2, 3, 5, 6), CONV1 + bn + _layer("relu", "ReLU", ["conv1"], top="conv1"))
    _check(tmp_path, text, (2, 3, 5, 6), batch=2)


def test_bn_with_two_dimensional_blobs_is_brocollis_inverse_std(tmp_path):
    """brocolli-caffe's BN stores (1, C) blobs and its fourth blob is the running INVERSE std."""
    text = net_text((2, 3, 4, 5), _layer("bn", "BN", ["data"], "bn_param { eps: 0.5 }"))
    (tmp_path / "deploy.prototxt").write_text(text)
    rng = np.random.default_rng(5)
    blobs = [
        rng.uniform(0.5, 1.5, (1, 3)),
        rng.normal(0, 0.2, (1, 3)),
        rng.normal(0, 0.5, (1, 3)),
        rng.uniform(0.5, 2, (1, 3)),
    ]
    blobs = [b.astype(np.float32) for b in blobs]
    write_caffemodel(tmp_path / "w.caffemodel", [("bn", "BN", blobs)])
    result = convert_files(
        tmp_path / "deploy.prototxt",
        tmp_path / "w.caffemodel",
        tmp_path / "m.onnx",
        ConvertOptions(expose_all=True),
    )
    x = rng.uniform(-1, 1, (2, 3, 4, 5)).astype(np.float32)
    got = blobs_of(result, tmp_path / "m.onnx", {"data": x})["bn"]
    slope, bias, mean, inv_std = (b.reshape(1, 3, 1, 1).astype(np.float64) for b in blobs)
    assert_close(got, (x - mean) * inv_std * slope + bias, "bn")


REFUSED = [
    ("Pad", "pad_param { pad_u: -1 pad_d: 2 }", "mixed signs"),
    ("Pad", "pad_param { pad_type: REFLECT pad_l: 6 }", "REFLECT"),
    ("PixelShuffle", "pixelshuffle_param { upscale_factor: 4 }", "multiple"),
    ("PixelShuffle", "", "required"),
    ("Resize", "resize_param { height: 3 }", "height and width"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 3 scale_factor: 2 }", "exactly one"),
    ("BilinearInterpolate", "bilinear_interpolate_param { dst_h: 1 dst_w: 4 }", "divides by zero"),
    ("Interp", "interp_param { zoom_factor: 2 pad_beg: 1 }", "cropping only"),
    ("Interp", "interp_param { height: 4 }", "needs"),
    ("Upsample", "upsample_param { upsample_h: 8 upsample_w: 8 }", "second bottom"),
    ("Upsample", "upsample_param { scale: 2 dims_num: 3 }", "3-D bottom"),
    ("MaxUnPool", "max_unpool_param { dst_h: 8 }", "dst_h and dst_w"),
]


def test_refusals_are_listed_in_one_error(tmp_path):
    layers = "".join(
        _layer(f"bad{index}", kind, ["data"] if kind != "MaxUnPool" else ["data", "data"], params)
        for index, (kind, params, _) in enumerate(REFUSED)
    )
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(net_text((1, 6, 4, 5), layers))
    with pytest.raises(UnsupportedLayerError) as error:
        convert_files(prototxt, None, tmp_path / "m.onnx", ConvertOptions())
    message = str(error.value)
    for index, (_, _, why) in enumerate(REFUSED):
        assert f"'bad{index}'" in message and why in message, (index, message)


def test_bn_with_unknown_blob_layout_is_refused(tmp_path):
    text = net_text((1, 3, 4, 5), _layer("bn", "BN", ["data"]))
    (tmp_path / "deploy.prototxt").write_text(text)
    write_caffemodel(tmp_path / "w.caffemodel", [("bn", "BN", [np.ones((1, 3, 1, 1), np.float32)] * 3)])
    with pytest.raises(UnsupportedLayerError, match="BN with 3 blob"):
        convert_files(
            tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel", tmp_path / "m.onnx", ConvertOptions()
        )


def test_segnet_shaped_net(tmp_path):
    """SegNet's encoder/decoder: conv-BN-ReLU, MAX pooling with mask, again, then Upsample with each mask
    (one by scale, one by upsample_h/w) and conv-BN-ReLU; a classifier conv and Softmax at the end."""

    def conv_bn_relu(name: str, bottom: str, outputs: int) -> str:
        conv = _layer(
            name,
            "Convolution",
            [bottom],
            f"convolution_param {{ num_output: {outputs} kernel_size: 3 pad: 1 }}",
        )
        bn = _layer(f"{name}_bn", "BN", [name], "bn_param { bn_mode: INFERENCE }", top=name)
        return conv + bn + _layer(f"{name}_relu", "ReLU", [name], top=name)

    def pool(name: str, bottom: str) -> str:
        params = "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"
        return f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" top: "{name}_mask" {params} }}\n'

    layers = (
        conv_bn_relu("conv1", "data", 4)
        + pool("pool1", "conv1")
        + conv_bn_relu("conv2", "pool1", 6)
        + pool("pool2", "conv2")
        + _layer("up2", "Upsample", ["pool2", "pool2_mask"], "upsample_param { scale: 2 pad_out_h: true }")
        + conv_bn_relu("conv2_D", "up2", 4)
        + _layer(
            "up1", "Upsample", ["conv2_D", "pool1_mask"], "upsample_param { upsample_h: 14 upsample_w: 20 }"
        )
        + conv_bn_relu("conv1_D", "up1", 4)
        + _layer(
            "classifier", "Convolution", ["conv1_D"], "convolution_param { num_output: 3 kernel_size: 1 }"
        )
        + _layer("prob", "Softmax", ["classifier"])
    )
    got = _check(tmp_path, net_text((1, 3, 14, 20), layers), (1, 3, 14, 20), seed=2)
    assert got["prob"].shape == (1, 3, 14, 20)


def test_pspnet_shaped_pyramid_pooling(tmp_path):
    """PSPNet's pyramid pooling module: AVE pooling to 1, 2, 3 and 6 bins, 1x1 conv + BN (4 blobs) +
    ReLU, Interp back to the feature size, Concat, conv, and a final Interp zoom (as PSPNet's deploy)."""
    feature = 12
    branches, names = "", ["conv5"]
    for bins in (1, 2, 3, 6):
        size = feature // bins
        pool = f"pooling_param {{ pool: AVE kernel_size: {size} stride: {size} }}"
        branches += _layer(f"pool{bins}", "Pooling", ["conv5"], pool)
        branches += _layer(
            f"pool{bins}_conv",
            "Convolution",
            [f"pool{bins}"],
            "convolution_param { num_output: 2 kernel_size: 1 bias_term: false }",
        )
        branches += _layer(
            f"pool{bins}_bn",
            "BN",
            [f"pool{bins}_conv"],
            "bn_param { slope_filler { value: 1 } }",
            top=f"pool{bins}_conv",
        )
        branches += _layer(f"pool{bins}_relu", "ReLU", [f"pool{bins}_conv"], top=f"pool{bins}_conv")
        branches += _layer(
            f"pool{bins}_interp",
            "Interp",
            [f"pool{bins}_conv"],
            f"interp_param {{ height: {feature} width: {feature} }}",
        )
        names.append(f"pool{bins}_interp")
    layers = (
        _layer("conv5", "Convolution", ["data"], "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
        + _layer("conv5_bn", "BN", ["conv5"], "", top="conv5")
        + branches
        + _layer("concat", "Concat", names)
        + _layer("conv6", "Convolution", ["concat"], "convolution_param { num_output: 3 kernel_size: 1 }")
        + _layer("conv6_interp", "Interp", ["conv6"], "interp_param { zoom_factor: 4 }")
    )
    got = _check(tmp_path, net_text((1, 3, feature, feature), layers), (1, 3, feature, feature), seed=4)
    assert got["conv6_interp"].shape == (1, 3, 45, 45)


def test_unpooling_needs_a_mask_of_the_data_shape(tmp_path):
    layers = (
        CONV1
        + _pool_mask(2, 2)
        + _layer("unpool", "MaxUnPool", ["conv1", "mask"], "max_unpool_param { dst_h: 8 dst_w: 8 }")
    )
    layers += _layer("up", "Upsample", ["conv1", "mask"], "upsample_param { scale: 2 }")
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(net_text((1, 3, 4, 4), layers))
    with pytest.raises(UnsupportedLayerError) as error:
        convert_files(prototxt, None, tmp_path / "m.onnx", ConvertOptions())
    assert str(error.value).count("must have the data bottom's shape") == 2
