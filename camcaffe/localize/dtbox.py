"""The CAM authors' released box generator (`bboxgenerator/dt_box` in zhoubolei/CAM), in OpenCV + numpy.

Their ILSVRC localisation protocol writes each merged heat map as an 8-bit image scaled by its maximum and
runs `dt_box heatmap.jpg 20 100 110`. For each of the three thresholds t the program

1. binarises the map (`gray > t`),
2. replaces each foreground pixel by its exact Euclidean distance to the nearest background pixel (pixels
   outside the image are not background), rescales those distances by 255 / (largest distance) and rounds
   them (`(int)(d + 0.5)`); a map with no background or no foreground pixel is left as it is,
3. keeps the pixels whose rounded value is above 10 (this trims thin bridges and the rim of each blob),
4. finds all contours of that mask, outer borders and hole borders alike (`RETR_CCOMP`), and takes each
   contour's bounding rectangle (x, y, w, h), clipped as the program does: x to [0, W-5], y to [0, H-5],
   w to [0, W-5-x], h to [0, H-5-y] (x, y before clipping).

The rectangles of the three masks, in that order, are ranked by area w*h, largest first, with the C++
standard library's (unstable) `std::sort`, reproduced here so that ties come out in the same order; then,
for each rectangle i in turn, every later rectangle j whose intersection area exceeds
int(max(area_i, area_j) * 0.5) is erased (the program's loop steps past the rectangle that moves into
place j after an erasure, and so do we). The survivors are the program's output, best first.

The authors' evaluation turns (x, y, w, h) into the box (x, y, x + w, y + h) and scores it with inclusive
(+1) pixel arithmetic; `dt_boxes` returns exactly that inclusive box.

OpenCV up to 3.1 (what the program was built with in 2016) cleared the one-pixel image border before
tracing contours, so a blob touching the border came out one pixel smaller there; `legacy_border=True`
(the default) reproduces that, `False` gives what the same program built against OpenCV >= 3.2 prints.
Distances are exact while the largest one is under 2048 pixels (OpenCV's precise transform is float32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from camcaffe.explain.cam import CamInputError

Rect = tuple[int, int, int, int]  # x, y, width, height as the program prints them
Box = tuple[int, int, int, int]  # inclusive x0, y0, x1, y1

AUTHOR_THRESHOLDS = (20, 100, 110)  # what generate_bbox.m and ILSVRC_evaluate_bbox.m pass
PROGRAM_DEFAULT_THRESHOLDS = (30, 90, 150)  # used when the given ones are not 0 < t0 < t1 < t2 < 255
DISTANCE_CUT = 10  # keep pixels whose rescaled distance is above this


def heatmap_to_gray(heatmap: np.ndarray) -> np.ndarray:
    """A map scaled 0-255 by its maximum and rounded, as MATLAB's imwrite(map ./ max(map(:))) stores it."""
    cam = np.asarray(heatmap, dtype=np.float64)
    if cam.ndim != 2 or cam.size == 0:
        raise CamInputError(f"heat map shape {cam.shape} must be a non-empty (H, W) map")
    if not np.all(np.isfinite(cam)):
        raise CamInputError("heat map contains NaN or infinite values; cannot place a box")
    peak = float(cam.max())
    if peak <= 0.0:
        return np.zeros(cam.shape, dtype=np.uint8)
    return np.floor(np.clip(cam / peak, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def distance_cut(gray: np.ndarray, threshold: int) -> np.ndarray:
    """Step 1-3 for one threshold: uint8 mask (255 = kept)."""
    foreground = gray > threshold
    if foreground.all():
        return np.full(gray.shape, 255, dtype=np.uint8)
    if not foreground.any():
        return np.zeros(gray.shape, dtype=np.uint8)
    binary = foreground.astype(np.uint8)
    distance = cv2.distanceTransform(binary, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # The program works on exact squared distances in double precision: recover them, then do its arithmetic.
    squared = np.rint(distance.astype(np.float64) ** 2)
    root = np.sqrt(squared)
    scale = 255.0 / (float(root.max()) - 0.0)
    rounded = np.floor(root * scale + 0.5)
    return np.where(rounded > DISTANCE_CUT, 255, 0).astype(np.uint8)


def _limit(value: int, low: int, high: int) -> int:
    return low if value < low else (high if value > high else value)


def mask_rects(mask: np.ndarray, legacy_border: bool = True) -> list[Rect]:
    """Step 4: clipped bounding rectangles of every contour (outer and hole) of a mask, in OpenCV's order."""
    height, width = mask.shape
    image = mask.copy()
    if legacy_border:
        image[0, :] = image[-1, :] = 0
        image[:, 0] = image[:, -1] = 0
    contours, _ = cv2.findContours(image, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    rects = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        rects.append(
            (
                _limit(x, 0, width - 5),
                _limit(y, 0, height - 5),
                _limit(w, 0, width - x - 5),
                _limit(h, 0, height - y - 5),
            )
        )
    return rects


def _area(rect: Rect) -> int:
    return rect[2] * rect[3]


def big_overlap(a: Rect, b: Rect) -> bool:
    """The program's suppression rule: intersection area > int(max(area a, area b) * 0.5)."""
    limit = int(max(_area(a), _area(b)) * 0.5)
    x_overlap = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    y_overlap = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return x_overlap * y_overlap > limit


def merge_rects(rects: list[Rect]) -> list[Rect]:
    """The program's suppression loop, including its step past the element that follows an erased one.

    For rectangle i, the later ones are visited in order; an overlapping one is erased and the one that moves
    into its place is not looked at (for this i). Overlaps are computed for all later rectangles at once."""
    kept = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    i = 0
    while i < len(kept) - 1:
        rest = kept[i + 1 :]
        x, y, w, h = (int(v) for v in kept[i])
        limit = (np.maximum(w * h, rest[:, 2] * rest[:, 3]).astype(np.float64) * 0.5).astype(np.int64)
        x_overlap = np.maximum(0, np.minimum(x + w, rest[:, 0] + rest[:, 2]) - np.maximum(x, rest[:, 0]))
        y_overlap = np.maximum(0, np.minimum(y + h, rest[:, 1] + rest[:, 3]) - np.maximum(y, rest[:, 1]))
        hits = np.flatnonzero(x_overlap * y_overlap > limit)
        erased, next_visited = [], 0
        for position in hits.tolist():
            if position >= next_visited:
                erased.append(position)
                next_visited = position + 2
        if erased:
            kept = np.delete(kept, np.asarray(erased) + i + 1, axis=0)
        i += 1
    return [tuple(int(v) for v in row) for row in kept]


# --- std::sort as GCC's libstdc++ implements it (introsort + final insertion sort) ------------------------
_THRESHOLD = 16


def std_sort(items: list, less: Callable[[object, object], bool]) -> None:
    """Sort in place exactly as libstdc++'s std::sort(first, last, less) orders elements, ties included."""
    n = len(items)
    if n < 2:
        return
    _introsort_loop(items, 0, n, 2 * (n.bit_length() - 1), less)
    if n > _THRESHOLD:
        _insertion_sort(items, 0, _THRESHOLD, less)
        for i in range(_THRESHOLD, n):
            _unguarded_linear_insert(items, i, less)
    else:
        _insertion_sort(items, 0, n, less)


def _introsort_loop(a: list, first: int, last: int, depth: int, less) -> None:
    while last - first > _THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last, less)
            return
        depth -= 1
        cut = _partition_pivot(a, first, last, less)
        _introsort_loop(a, cut, last, depth, less)
        last = cut


def _partition_pivot(a: list, first: int, last: int, less) -> int:
    mid = first + (last - first) // 2
    _median_to_first(a, first, first + 1, mid, last - 1, less)
    return _unguarded_partition(a, first + 1, last, first, less)


def _median_to_first(a: list, result: int, x: int, y: int, z: int, less) -> None:
    if less(a[x], a[y]):
        if less(a[y], a[z]):
            pick = y
        elif less(a[x], a[z]):
            pick = z
        else:
            pick = x
    elif less(a[x], a[z]):
        pick = x
    elif less(a[y], a[z]):
        pick = z
    else:
        pick = y
    a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a: list, first: int, last: int, pivot: int, less) -> int:
    while True:
        while less(a[first], a[pivot]):
            first += 1
        last -= 1
        while less(a[pivot], a[last]):
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


def _insertion_sort(a: list, first: int, last: int, less) -> None:
    for i in range(first + 1, last):
        if less(a[i], a[first]):
            value = a[i]
            a[first + 1 : i + 1] = a[first:i]
            a[first] = value
        else:
            _unguarded_linear_insert(a, i, less)


def _unguarded_linear_insert(a: list, last: int, less) -> None:
    value = a[last]
    previous = last - 1
    while less(value, a[previous]):
        a[last] = a[previous]
        last = previous
        previous -= 1
    a[last] = value


def _heap_sort(a: list, first: int, last: int, less) -> None:
    """std::__partial_sort(first, last, last): make_heap then sort_heap."""
    length = last - first
    if length >= 2:
        parent = (length - 2) // 2
        while True:
            _adjust_heap(a, first, parent, length, a[first + parent], less)
            if parent == 0:
                break
            parent -= 1
    while last - first > 1:
        last -= 1
        value = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, value, less)


def _adjust_heap(a: list, base: int, hole: int, length: int, value, less) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if less(a[base + child], a[base + child - 1]):
            child -= 1
        a[base + hole] = a[base + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[base + hole] = a[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and less(a[base + parent], value):
        a[base + hole] = a[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[base + hole] = value


# --- the program ------------------------------------------------------------------------------------------
def check_thresholds(thresholds: Sequence[int]) -> tuple[int, int, int]:
    """The program takes three integers and falls back to 30, 90, 150 unless 0 < t0 < t1 < t2 < 255."""
    if len(thresholds) != 3:
        raise CamInputError(f"dt_box takes three thresholds, got {list(thresholds)}")
    t0, t1, t2 = (int(t) for t in thresholds)
    if 0 < t0 < t1 < t2 < 255:
        return t0, t1, t2
    return PROGRAM_DEFAULT_THRESHOLDS


def dt_rects(
    gray: np.ndarray, thresholds: Sequence[int] = AUTHOR_THRESHOLDS, legacy_border: bool = True
) -> list[Rect]:
    """What `dt_box image t0 t1 t2` prints for an 8-bit grey image: (x, y, w, h) rectangles, best first."""
    image = np.asarray(gray)
    if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise CamInputError(f"dt_box needs a non-empty 8-bit grey image, got {image.dtype} {image.shape}")
    rects: list[Rect] = []
    for threshold in check_thresholds(thresholds):
        rects.extend(mask_rects(distance_cut(image, threshold), legacy_border))
    std_sort(rects, lambda a, b: _area(a) > _area(b))
    return merge_rects(rects)


def rect_to_box(rect: Rect) -> Box:
    x, y, w, h = rect
    return x, y, x + w, y + h


def dt_boxes(
    heatmap: np.ndarray, thresholds: Sequence[int] = AUTHOR_THRESHOLDS, legacy_border: bool = True
) -> list[Box]:
    """Inclusive boxes (x, y, x + w, y + h) of the program's rectangles for a heat map, best first; a map
    where it finds nothing (e.g. all zero) gives the whole image."""
    gray = heatmap_to_gray(heatmap)
    boxes = [rect_to_box(r) for r in dt_rects(gray, thresholds, legacy_border)]
    if not boxes:
        height, width = gray.shape
        return [(0, 0, width - 1, height - 1)]
    return boxes
