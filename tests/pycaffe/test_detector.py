"""caffe.Detector as BVLC detector.py: windows cropped (with R-CNN context padding when asked), warped to the
input size and classified in order; Selective Search is refused with the way around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import camcaffe as caffe
from camcaffe.convert.random_model import write_random_caffemodel
from tests import caffe_reference
from tests.helpers import assert_close
from tests.pycaffe.test_pycaffe import TINY_NET, caffemodel_arrays

MEAN = np.array([104.0, 117.0, 123.0])  # BGR, the net's channel order


@pytest.fixture
def setup(tmp_path: Path):
    import cv2

    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(TINY_NET)  # input 2 x 3 x 8 x 8
    caffemodel = tmp_path / "weights.caffemodel"
    write_random_caffemodel(prototxt, caffemodel, seed=4)
    pixels = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), pixels)
    return prototxt, caffemodel, image


def _detector(setup, **kwargs) -> caffe.Detector:
    prototxt, caffemodel, _ = setup
    return caffe.Detector(
        str(prototxt), str(caffemodel), mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), **kwargs
    )


def _expected(setup, crops: list[np.ndarray]) -> np.ndarray:
    batch = np.stack(
        [
            (caffe.io.resize_image(c, (8, 8)).transpose(2, 0, 1)[::-1] * 255.0 - MEAN[:, None, None])
            for c in crops
        ]
    ).astype(np.float32)
    return caffe_reference.forward(TINY_NET, caffemodel_arrays(setup[1]), {"data": batch})["prob"]


def test_windows_are_cropped_warped_and_classified_in_order(setup) -> None:
    net = _detector(setup)
    image_path = setup[2]
    windows = [(0, 0, 5, 7), (2, 3, 10, 12), (1, 1, 9, 9)]
    detections = net.detect_windows([(str(image_path), windows[:2]), (str(image_path), windows[2:])])
    assert [d["window"] for d in detections] == windows
    assert [d["filename"] for d in detections] == [str(image_path)] * 3
    image = caffe.io.load_image(str(image_path))
    expected = _expected(setup, [image[a:c, b:d] for a, b, c, d in windows])
    for detection, prob in zip(detections, expected, strict=True):
        assert_close(detection["prediction"], prob, str(detection["window"]))


def test_context_padding_fills_outside_the_image_with_the_mean(setup) -> None:
    net = _detector(setup, context_pad=2)  # scale 8 / (8 - 4) = 2
    assert list(net.crop_dims) == [8, 8, 3]
    np.testing.assert_allclose(net.crop_mean.reshape(-1), MEAN[::-1] / 255.0)  # RGB, [0, 1]
    image = caffe.io.load_image(str(setup[2]))
    inside = net.crop(image, np.array([2, 2, 5, 5]))  # box 0..8 -> the 8x8 corner, no padding
    np.testing.assert_allclose(inside, image[0:8, 0:8], atol=1e-6)
    corner = net.crop(image, np.array([0, 0, 3, 3]))  # box -2..6: 2 pixels of mean, then image[0:6, 0:6]
    assert corner.shape == (8, 8, 3)
    np.testing.assert_allclose(corner[2:, 2:], image[0:6, 0:6], atol=1e-6)
    np.testing.assert_allclose(corner[:2, :, :], np.broadcast_to(MEAN[::-1] / 255.0, (2, 8, 3)), atol=1e-6)
    (detection,) = net.detect_windows([(str(setup[2]), [np.array([0, 0, 3, 3])])])
    assert_close(detection["prediction"], _expected(setup, [corner])[0], "context crop")


def test_bad_windows_and_selective_search_are_refused(setup) -> None:
    net = _detector(setup)
    with pytest.raises(caffe.PycaffeError, match="empty"):
        net.detect_windows([(str(setup[2]), [(5, 5, 5, 9)])])
    with pytest.raises(caffe.PycaffeError, match="no windows"):
        net.detect_windows([(str(setup[2]), [])])
    with pytest.raises(caffe.PycaffeError, match="detect_windows"):
        net.detect_selective_search([str(setup[2])])
