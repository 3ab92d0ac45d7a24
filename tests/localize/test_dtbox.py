"""The authors' box generator (camcaffe.dtbox) against outputs of their compiled dt_box program.

The literals below were printed by zhoubolei/CAM's bboxgenerator/dt_box.cpp + dt.c built against OpenCV 4.6
(C API calls replaced by their cv::Mat equivalents) and run as `dt_box map.png 20 100 110`; the `legacy`
column with the one-pixel image border cleared before findContours, as OpenCV <= 3.1 did."""

from __future__ import annotations

import json

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
from tests.dtbox_maps import load_cases, paraboloid_map
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


# Maps each of which changes output when one of the program's rules changes (found among the stored random
# maps by planting each change in camcaffe.dtbox; every row is the compiled program's output, legacy border
# then modern): (h, w, blobs as (cy, cx, ry, rx, peak)), legacy rects, modern rects.
# fmt: off
RULE_CASES = {
    # distance cut: a rounded rescaled distance of exactly 10 is dropped (> 10); a cut of 9, >= 10 or none
    # keeps the rim and the thin bridges here
    "cut_keeps_above_10": (
        (76, 54, [[53, 19, 35, 25, 200], [5, 52, 3, 10, 122]]),
        [(1, 21, 41, 50), (3, 30, 33, 41), (44, 4, 5, 3), (48, 4, 1, 3), (49, 5, 0, 1)],
        [(0, 21, 42, 50), (3, 30, 33, 41), (44, 4, 5, 3), (48, 4, 1, 3), (49, 5, 0, 1)],
    ),
    # ... and a cut of 11 removes pixels the program keeps
    "cut_is_not_11": (
        (60, 82, [[58, 21, 1, 50, 48], [31, 54, 2, 30, 44], [13, 74, 21, 29, 288], [14, 58, 1, 7, 263],
                  [-4, 9, 22, 3, 208]]),
        [(39, 1, 38, 32), (52, 1, 25, 29), (7, 1, 5, 11), (8, 1, 3, 11)],
        [(39, 0, 38, 33), (52, 0, 25, 30), (7, 0, 5, 12), (8, 0, 3, 12)],
    ),
    # edge clipping x <= W-5, y <= H-5, w <= W-5-x, h <= H-5-y with the unclipped x, y: (0, 16, 1, -1) is
    # a contour at y = 17 of this 21-row map: y -> 16, h -> 21 - 17 - 5 = -1
    "edge_clipping": (
        (21, 17, [[6, 1, 1, 14, 223], [17, 12, 6, 2, 67], [0, 15, 1, 1, 102], [19, -2, 3, 3, 344]]),
        [(1, 6, 11, 1), (1, 6, 10, 1), (11, 13, 1, 3)],
        [(0, 6, 12, 1), (0, 6, 11, 1), (11, 13, 1, 3), (0, 16, 1, -1), (0, 16, 1, -2), (12, 0, -3, 1)],
    ),
    # overlap rule: intersection > int(0.5 * the larger area) (not 0.6, not the smaller area)
    "overlap_half_of_larger": (
        (30, 13, [[13, 13, 2, 2, 245], [4, -4, 2, 9, 83], [24, 3, 11, 4, 215], [1, 11, 2, 6, 103]]),
        [(1, 14, 6, 11), (1, 17, 5, 8), (1, 3, 3, 3), (6, 1, 2, 2), (8, 1, -3, 1)],
        [(0, 14, 7, 11), (1, 17, 5, 8), (0, 3, 4, 3), (6, 0, 2, 3), (8, 1, -3, 1), (8, 12, -4, 3)],
    ),
    # the loop's step past the rectangle that moves into an erased one's place
    "overlap_loop_quirk": (
        (12, 17, [[2, 13, 3, 4, 212], [10, 6, 1, 7, 396], [3, 13, 1, 8, 298], [6, 10, 7, 2, 181]]),
        [(1, 1, 11, 6), (1, 1, 11, 6)],
        [(0, 0, 12, 7), (1, 0, 11, 7)],
    ),
    # tie order: six identical blobs give 18 rectangles in equal-area groups, which libstdc++'s std::sort
    # (introsort, not stable past 16 elements) leaves in this order
    "tie_order": (
        (48, 42, [[10, 7, 4, 6, 224], [10, 21, 4, 6, 224], [10, 35, 4, 6, 224], [31, 7, 4, 6, 224],
                  [31, 21, 4, 6, 224], [31, 35, 4, 6, 224]]),
        [(16, 28, 11, 7), (2, 28, 11, 7), (16, 7, 11, 7), (2, 7, 11, 7), (30, 7, 7, 7), (30, 28, 7, 7),
         (3, 8, 9, 5), (31, 8, 6, 5)],
        [(16, 28, 11, 7), (2, 28, 11, 7), (16, 7, 11, 7), (2, 7, 11, 7), (30, 7, 7, 7), (30, 28, 7, 7),
         (3, 8, 9, 5), (31, 8, 6, 5)],
    ),
}
# fmt: on


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_each_rule_of_the_program(rule):
    (height, width, blobs), legacy, modern = RULE_CASES[rule]
    gray = paraboloid_map(height, width, blobs)
    assert dt_rects(gray, legacy_border=True) == legacy
    assert dt_rects(gray, legacy_border=False) == modern


def test_rule_cases_are_stored_program_outputs():
    """The literals above are rows of the data file (the compiled program's output), not hand copies."""
    stored = {(c["h"], c["w"], json.dumps(c["blobs"])): c for c in load_cases()}
    for (height, width, blobs), legacy, modern in RULE_CASES.values():
        case = stored[(height, width, json.dumps(blobs))]
        assert [tuple(r) for r in case["legacy"]] == legacy and [tuple(r) for r in case["modern"]] == modern


def test_hundreds_of_synthetic_maps_match_the_compiled_program():
    """tests/data/dtbox_synthetic.json: 440 maps (random blobs over edges, thin bridges, plateaus, tiny
    maps, grids of identical blobs) and the compiled program's rectangles for both border behaviours."""
    cases = load_cases()
    assert len(cases) >= 400
    wrong = []
    for index, case in enumerate(cases):
        gray = paraboloid_map(case["h"], case["w"], case["blobs"])
        for legacy, key in ((True, "legacy"), (False, "modern")):
            if dt_rects(gray, legacy_border=legacy) != [tuple(r) for r in case[key]]:
                wrong.append((index, key))
    assert not wrong, f"{len(wrong)} differ from the program, first: {wrong[:5]}"
