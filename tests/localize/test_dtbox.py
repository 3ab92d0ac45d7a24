"""The authors' box generator (camcaffe.dtbox) against outputs of their compiled dt_box program.

The literals below were printed by zhoubolei/CAM's bboxgenerator/dt_box.cpp + dt.c built against OpenCV 4.6
(C API calls replaced by their cv::Mat equivalents) and run as `dt_box map.png 20 100 110`; the `legacy`
column with the one-pixel image border cleared before findContours, as OpenCV <= 3.1 did."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from camcaffe.localize.boxes import make_boxer
from camcaffe.localize.dtbox import (
    _heap_sort,
    big_overlap,
    check_thresholds,
    dt_boxes,
    dt_rects,
    heatmap_to_gray,
    merge_rects,
    std_sort,
)
from tests.helpers import shared_path


def synthetic_maps() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float64)
    two_bumps = np.exp(-((yy - 40) ** 2 + (xx - 45) ** 2) / (2 * 15**2)) + 0.6 * np.exp(
        -((yy - 80) ** 2 + (xx - 120) ** 2) / (2 * 10**2)
    )
    ring = np.exp(-((np.hypot(yy - 60, xx - 80) - 30) ** 2) / (2 * 6**2))
    border = np.exp(-((yy - 5) ** 2 + (xx - 150) ** 2) / (2 * 25**2)) + 0.5 * np.exp(
        -((yy - 100) ** 2 + (xx - 10) ** 2) / (2 * 12**2)
    )
    block = np.zeros((60, 60))
    block[20:40, 10:50] = 1.0
    return {"two_bumps": two_bumps, "ring": ring, "border": border, "block": block, "full": np.ones((40, 50))}


# name: (legacy border, OpenCV >= 3.2), each the program's "x y w h" rectangles in order
COMPILED = {
    "two_bumps": (
        [(13, 8, 65, 65), (25, 20, 41, 41), (101, 61, 39, 39), (111, 71, 19, 19)],
        [(13, 8, 65, 65), (25, 20, 41, 41), (101, 61, 39, 39), (111, 71, 19, 19)],
    ),
    "ring": (  # hole contours give boxes too
        [(37, 17, 87, 87), (43, 23, 75, 75), (57, 37, 47, 47), (63, 43, 35, 35)],
        [(37, 17, 87, 87), (43, 23, 75, 75), (57, 37, 47, 47), (63, 43, 35, 35)],
    ),
    "border": (
        [(96, 1, 59, 59), (117, 1, 38, 38), (1, 80, 30, 35), (3, 93, 15, 15)],
        [(96, 0, 59, 60), (117, 0, 38, 39), (0, 80, 31, 35), (3, 93, 15, 15)],
    ),
    # three identical rectangles: the first erases the second and steps past the third
    "block": ([(10, 20, 40, 20), (10, 20, 40, 20)], [(10, 20, 40, 20), (10, 20, 40, 20)]),
    # no background: the map is kept whole, then clipped to W-5-x, H-5-y
    "full": ([(1, 1, 44, 34), (1, 1, 44, 34)], [(0, 0, 45, 35), (0, 0, 45, 35)]),
}


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_matches_the_compiled_program(name):
    gray = heatmap_to_gray(synthetic_maps()[name])
    legacy, modern = COMPILED[name]
    assert dt_rects(gray, legacy_border=True) == legacy
    assert dt_rects(gray, legacy_border=False) == modern


def test_heatmap_6_gives_the_authors_boxes():
    # bboxgenerator/heatmap_6.txt in zhoubolei/CAM (their output) and our compiled build agree on these.
    gray = cv2.imread(str(shared_path("data", "cam_reference", "heatmap_6.jpg")), cv2.IMREAD_GRAYSCALE)
    expected = [(41, 145, 362, 202), (102, 188, 242, 126)]
    assert dt_rects(gray, (20, 100, 110)) == expected
    assert dt_rects(gray, (20, 100, 110), legacy_border=False) == expected
    boxes = dt_boxes(gray.astype(np.float32) / 255.0)
    assert boxes == [(41, 145, 403, 347), (102, 188, 344, 314)]
    assert make_boxer("dt")(gray.astype(np.float32) / 255.0) == boxes


def test_gray_scaling_and_empty_maps():
    assert heatmap_to_gray(np.array([[0.0, 0.5], [1.0, 2.0]])).tolist() == [[0, 64], [128, 255]]
    assert dt_boxes(np.zeros((30, 40))) == [(0, 0, 39, 29)]  # nothing found: whole image
    with pytest.raises(ValueError, match="NaN"):
        dt_boxes(np.full((4, 4), np.nan))


def test_threshold_fallback():
    assert check_thresholds((20, 100, 110)) == (20, 100, 110)
    assert check_thresholds((100, 20, 110)) == (30, 90, 150)
    assert check_thresholds((0, 100, 110)) == (30, 90, 150)


def test_overlap_rule_and_merge_quirk():
    a, b = (0, 0, 10, 10), (0, 0, 10, 5)  # overlap 50 > int(100 * 0.5)? no
    assert not big_overlap(a, b)
    assert big_overlap(a, (0, 0, 10, 6))
    # b1 and b2 both overlap a: b1 is erased, b2 moves into its place and is stepped over
    assert merge_rects([a, (0, 0, 9, 9), (1, 1, 9, 9), (50, 50, 2, 2)]) == [a, (1, 1, 9, 9), (50, 50, 2, 2)]


def test_std_sort_orders_like_libstdcxx():
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 16, 17, 40, 300):
        keys = rng.integers(0, 8, n).tolist()
        items = list(enumerate(keys))
        std_sort(items, lambda p, q: p[1] > q[1])
        assert [k for _, k in items] == sorted(keys, reverse=True)
        if n <= 16:  # insertion sort: stable
            assert items == sorted(enumerate(keys), key=lambda p: -p[1])
    # Ties in a 20-element run come out in libstdc++'s (unstable) order; this sequence was sorted by
    # std::sort(v.begin(), v.end(), greater) in C++ (GCC 12) and its indices printed.
    keys = [3, 1, 3, 2, 3, 1, 2, 3, 3, 1, 2, 2, 3, 1, 3, 2, 1, 3, 2, 3]
    items = list(enumerate(keys))
    std_sort(items, lambda p, q: p[1] > q[1])
    assert [i for i, _ in items] == STD_SORT_20


STD_SORT_20 = [19, 2, 4, 17, 7, 8, 14, 0, 12, 10, 18, 15, 11, 6, 3, 13, 9, 16, 5, 1]
# std::partial_sort(v.begin(), v.end(), v.end(), greater): the heap sort introsort falls back to
HEAP_SORT_20 = [17, 8, 19, 4, 12, 0, 7, 2, 14, 15, 18, 10, 3, 11, 6, 16, 1, 9, 5, 13]


def test_heap_sort_fallback_orders_like_libstdcxx():
    keys = [3, 1, 3, 2, 3, 1, 2, 3, 3, 1, 2, 2, 3, 1, 3, 2, 1, 3, 2, 3]
    items = list(enumerate(keys))
    _heap_sort(items, 0, len(items), lambda p, q: p[1] > q[1])
    assert [i for i, _ in items] == HEAP_SORT_20


def test_many_contours_are_fast_and_ranked():
    rng = np.random.default_rng(3)
    noise = rng.random((200, 240))
    rects = dt_rects(heatmap_to_gray(noise))
    areas = [w * h for _, _, w, h in rects]
    assert len(rects) > 100 and areas == sorted(areas, reverse=True)
