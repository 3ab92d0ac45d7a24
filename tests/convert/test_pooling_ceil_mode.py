"""Pooling: the SSD-era forks' ceil_mode (real floor rounding), Caffe's pad rule on both axes, and the
second (argmax mask) top. References: real Caffe (../shared/golden_v2), the numpy oracle, OpenCV 4."""

from __future__ import annotations

import re

import numpy as np
import pytest

from camcaffe.caffe import caffe_pb2
from camcaffe.convert.layers_conv import pooled_size
from camcaffe.errors import UnsupportedLayerError
from tests import caffe_reference as cr
from tests.helpers import assert_close, blobs_of, convert_text, net_text, shared_path


def _layer(text: str) -> caffe_pb2.LayerParameter:
    from google.protobuf import text_format

    return text_format.Parse(text, caffe_pb2.LayerParameter())


def test_pad_on_one_axis_drops_the_last_window_on_both():
    # Caffe checks "last window starts in the padding" on both axes as soon as either has a pad:
    # 18 wide, kernel 2, stride 3, pad_w 0 but pad_h 1 -> 6 columns (7 without the rule).
    assert pooled_size(18, 2, 3, 0, True, any_pad=True) == 6
    assert pooled_size(18, 2, 3, 0, True) == 7
    assert pooled_size(14, 3, 2, 1, False) == 7  # floor
    assert pooled_size(14, 3, 2, 1, True) == 8


POOL_CASES = [
    "pool: MAX kernel_size: 3 stride: 2 ceil_mode: false",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1 ceil_mode: false",
    "pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 ceil_mode: true",
    "pool: MAX kernel_size: 5 stride: 3 pad: 2 ceil_mode: false",
    "pool: AVE kernel_size: 2 stride: 2 round_mode: FLOOR ceil_mode: false",
]


@pytest.mark.parametrize("params", POOL_CASES)
def test_ceil_mode_matches_the_oracle(params, tmp_path):
    text = net_text(
        (2, 3, 13, 17),
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param {{ {params} }} }}',
    )
    result, _, onnx_path = convert_text(tmp_path, text)
    x = np.random.default_rng(1).normal(size=(2, 3, 13, 17)).astype(np.float32)
    expected = cr.pooling(x, _layer(f'name: "p" type: "Pooling" pooling_param {{ {params} }}'))
    assert_close(blobs_of(result, onnx_path, {"data": x})["p"], expected, params)


def test_ceil_mode_false_matches_opencv(tmp_path):
    from camcaffe.convert.verify import opencv_available

    if not opencv_available():
        pytest.skip("cv2 without dnn.readNetFromCaffe")
    from tests.helpers import opencv_blobs

    layers = "".join(
        f'layer {{ name: "p{i}" type: "Pooling" bottom: "data" top: "p{i}" pooling_param {{ {params} }} }}\n'
        for i, params in enumerate(POOL_CASES[:4])
    )
    text = net_text((1, 3, 13, 17), layers)
    result, _, onnx_path = convert_text(tmp_path, text)
    x = np.random.default_rng(2).normal(size=(1, 3, 13, 17)).astype(np.float32)
    ours = blobs_of(result, onnx_path, {"data": x})
    names = [f"p{i}" for i in range(4)]
    theirs = opencv_blobs(tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel", x, names)
    for name, value in zip(names, theirs, strict=True):
        assert_close(ours[name], value, name)


def _mask_net(params: str, shape=(2, 3, 9, 11)) -> str:
    return net_text(
        shape,
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" pooling_param {{ {params} }} }}',
    )


@pytest.mark.parametrize(
    "params",
    [
        "pool: MAX kernel_size: 2 stride: 2",
        "pool: MAX kernel_size: 3 stride: 2 pad: 1",
        "pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false",
        "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 3",
        "pool: MAX global_pooling: true",
    ],
)
def test_mask_top_is_the_first_max_in_the_plane(params, tmp_path):
    result, _, onnx_path = convert_text(tmp_path, _mask_net(params))
    # Few distinct values: many ties, which Caffe breaks by taking the first in row-major order.
    x = np.random.default_rng(3).integers(0, 3, size=(2, 3, 9, 11)).astype(np.float32)
    blobs = blobs_of(result, onnx_path, {"data": x})
    layer = _layer(f'name: "p" type: "Pooling" pooling_param {{ {params} }}')
    values, mask = cr.max_pooling_with_mask(x.astype(np.float64), layer)
    assert_close(blobs["p"], values, "values")
    assert blobs["m"].dtype == np.float32
    np.testing.assert_array_equal(blobs["m"], mask)


def test_ave_pooling_with_a_mask_top_is_refused(tmp_path):
    with pytest.raises(UnsupportedLayerError, match="only MAX pooling has a second"):
        convert_text(tmp_path, _mask_net("pool: AVE kernel_size: 2 stride: 2"))


def test_contradicting_ceil_mode_and_round_mode_are_refused(tmp_path):
    with pytest.raises(UnsupportedLayerError, match="contradict"):
        convert_text(
            tmp_path, _mask_net("pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR ceil_mode: true")
        )


def test_window_wholly_outside_the_input_is_refused(tmp_path):
    text = net_text(
        (1, 1, 8, 8),
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
        "pooling_param { pool: MAX kernel_size: 1 stride: 2 } }",
    )
    with pytest.raises(UnsupportedLayerError, match="wholly outside"):
        convert_text(tmp_path, text)


def test_golden_mask_tops_of_real_caffe(tmp_path):
    """pool_mask_unpool_upsample's Pooling layers against real Caffe, without the unpooling layers
    (another family): pool1/pool3 on the net cut before them, pool2 fed with Caffe's own unpool1."""
    folder = shared_path("golden_v2", "pool_mask_unpool_upsample")
    reference = np.load(folder / "blobs.npz")
    text = (folder / "deploy.prototxt").read_text()
    blocks = re.split(r"(?=^layer \{)", text, flags=re.M)
    kept = [b for b in blocks if not re.search(r'type: "(MaxUnPool|Upsample)"|name: "pool2"', b)]
    (tmp_path / "cut.prototxt").write_text("".join(kept))
    from camcaffe.convert.api import convert_files
    from camcaffe.convert.converter import ConvertOptions

    result = convert_files(
        tmp_path / "cut.prototxt",
        folder / "weights.caffemodel",
        tmp_path / "m.onnx",
        ConvertOptions(expose_all=True),
    )
    blobs = blobs_of(result, tmp_path / "m.onnx", {"data": np.load(folder / "input.npy")})
    for blob in ("pool1", "pool1_mask", "pool3", "pool3_mask"):
        assert_close(blobs[blob], reference[blob], blob, rel=0 if blob.endswith("mask") else 1e-4)
    pool2 = next(b for b in blocks if 'name: "pool2"' in b)
    result, _, onnx_path = convert_text(
        tmp_path, net_text(reference["unpool1"].shape, pool2.replace("unpool1", "data"))
    )
    blobs = blobs_of(result, onnx_path, {"data": reference["unpool1"]})
    assert_close(blobs["pool2"], reference["pool2"], "pool2")
    np.testing.assert_array_equal(blobs["pool2_mask"], reference["pool2_mask"])
