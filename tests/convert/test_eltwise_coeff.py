"""Eltwise SUM coefficients 0, -1 and 2 over three bottoms, against a hand formula, the numpy oracle of Caffe
(tests/caffe_reference.py) and OpenCV 4's Caffe runtime."""

from __future__ import annotations

import numpy as np
import pytest

from camcaffe.convert.verify import opencv_available
from tests.caffe_reference import forward
from tests.helpers import assert_close, blobs_of, convert_text, net_text, opencv_blobs

X = np.random.default_rng(11).uniform(-2, 2, (2, 3, 5, 4)).astype(np.float32)
THREE = (
    'layer { name: "a" type: "Power" bottom: "data" top: "a" power_param { scale: 2 } }\n'
    'layer { name: "b" type: "Power" bottom: "data" top: "b" power_param { shift: 1 } }\n'
    'layer { name: "c" type: "Power" bottom: "data" top: "c" power_param { power: 2 shift: 0.5 } }\n'
)
BOTTOMS = (2 * X, X + 1, (X + 0.5) ** 2)  # a, b, c as the Power layers compute them


@pytest.mark.parametrize("coeffs", [(0, -1, 2), (-1, 2, 0), (2, 0, -1), (-1, -1, -1), (0, 0, 2)])
def test_eltwise_sum_coefficients_on_three_bottoms(tmp_path, coeffs):
    params = " ".join(f"coeff: {c}" for c in coeffs)
    text = net_text(
        X.shape,
        THREE + f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e" '
        f"eltwise_param {{ operation: SUM {params} }} }}",
    )
    result, _, onnx_path = convert_text(tmp_path, text)
    ours = blobs_of(result, onnx_path, {"data": X})["e"]
    by_hand = sum(np.float32(c) * b for c, b in zip(coeffs, BOTTOMS, strict=True))
    assert_close(ours, by_hand, f"hand formula {coeffs}", rel=1e-5)
    assert_close(ours, forward(text, {}, {"data": X})["e"], f"oracle {coeffs}", rel=1e-5)
    if opencv_available():
        (theirs,) = opencv_blobs(tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel", X, ["e"])
        assert_close(ours, theirs, f"OpenCV {coeffs}", rel=1e-5)
