"""Boxes from synthetic CAMs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from camcaffe.explain.cam import CamInputError
from camcaffe.localize.boxes import box_from_cam


def test_single_rectangle() -> None:
    cam = np.zeros((40, 60), np.float32)
    cam[5:13, 20:31] = 1.0
    assert box_from_cam(cam) == (20, 5, 30, 12)


def test_largest_component_wins() -> None:
    cam = np.zeros((50, 50), np.float32)
    cam[2:6, 2:6] = 1.0  # 16 px, holds the peak
    cam[20:30, 30:45] = 0.5  # 150 px
    cam[2, 2] = 2.0
    assert box_from_cam(cam, threshold=0.2) == (30, 20, 44, 29)
    # above half the peak only the small square survives
    assert box_from_cam(cam, threshold=0.3) == (2, 2, 5, 5)


def test_threshold_is_inclusive_and_relative_to_max() -> None:
    cam = np.zeros((10, 10), np.float32)
    cam[4, 4] = 10.0
    cam[4, 5:9] = 2.0  # exactly 0.2 * max: kept
    cam[5, 4] = 1.9  # below: dropped
    assert box_from_cam(cam, threshold=0.2) == (4, 4, 8, 4)


def test_diagonal_neighbours_are_connected() -> None:
    cam = np.zeros((10, 10), np.float32)
    cam[1:3, 1:3] = 1.0
    cam[3:5, 3:5] = 1.0  # touches the first square only at a corner
    cam[7:9, 0:3] = 1.0  # separate, 6 px: smaller than the 8-connected 8 px pair
    assert box_from_cam(cam) == (1, 1, 4, 4)


def test_gaussian_blob_box_is_centred() -> None:
    yy, xx = np.mgrid[0:101, 0:121]
    cam = np.exp(-(((yy - 40) / 10.0) ** 2 + ((xx - 70) / 15.0) ** 2))
    x0, y0, x1, y1 = box_from_cam(cam, threshold=0.5)
    assert (x0 + x1) / 2 == pytest.approx(70, abs=0.5)
    assert (y0 + y1) / 2 == pytest.approx(40, abs=0.5)
    # exp(-r^2) >= 0.5 <=> r <= sqrt(ln 2): half-widths 15 * 0.8326 and 10 * 0.8326
    assert x1 - x0 == 2 * int(15 * np.sqrt(np.log(2)))
    assert y1 - y0 == 2 * int(10 * np.sqrt(np.log(2)))


@pytest.mark.parametrize("value", [0.0, 3.0, -1.0])
def test_constant_or_non_positive_map_gives_whole_image(value: float) -> None:
    assert box_from_cam(np.full((8, 12), value, np.float32)) == (0, 0, 11, 7)


def test_negative_map_with_positive_peak() -> None:
    cam = np.full((6, 6), -5.0, np.float32)
    cam[2, 3] = 1.0
    assert box_from_cam(cam) == (3, 2, 3, 2)


def test_bad_input() -> None:
    with pytest.raises(CamInputError):
        box_from_cam(np.zeros((2, 2, 2)))
    with pytest.raises(CamInputError):
        box_from_cam(np.zeros((4, 4)), threshold=1.5)
    cam = np.zeros((4, 4))
    cam[1, 1] = np.nan
    with pytest.raises(CamInputError, match="NaN"):
        box_from_cam(cam)


def test_dt_boxes_are_never_inverted_on_small_or_edge_maps():
    from camcaffe.localize.boxes import make_boxer

    boxer = make_boxer("dt")
    tiny = np.array([[0.0, 0.2, 0.1, 0.0], [0.3, 1.0, 0.8, 0.1], [0.0, 0.4, 0.2, 0.0]], np.float32)
    edge = np.zeros((40, 50), np.float32)
    edge[5:35, 46:49] = 1.0  # a region starting in the last 4 columns
    for cam in (tiny, edge):
        boxes = boxer(cam)
        assert boxes
        height, width = cam.shape
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 <= x1 < width + 1 and 0 <= y0 <= y1 < height + 1
