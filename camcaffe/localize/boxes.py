"""Bounding boxes from class activation maps (the CAM paper's simple thresholding localisation).

Keep the pixels whose activation is at least `threshold` times the map's maximum, take the largest
8-connected region of them, and return its bounding box in inclusive pixel coordinates.
"""

from __future__ import annotations

import cv2
import numpy as np

from camcaffe.explain.cam import CamInputError

Box = tuple[int, int, int, int]


def whole_image_box(height: int, width: int) -> Box:
    return 0, 0, width - 1, height - 1


def box_from_cam(cam_upsampled: np.ndarray, threshold: float = 0.2) -> Box:
    """(x0, y0, x1, y1), inclusive, of the largest 8-connected region where cam >= threshold * max(cam).

    A constant map, or one whose maximum is not positive, gives the whole image. When two regions have the
    same area, the one holding the higher peak wins (then the one met first in raster order)."""
    cam = np.asarray(cam_upsampled, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise CamInputError(f"cam shape {cam.shape} must be a non-empty (H, W) map")
    if not 0.0 <= float(threshold) <= 1.0:
        raise CamInputError(f"box threshold {threshold} must lie in [0, 1]")
    if not np.all(np.isfinite(cam)):
        raise CamInputError("cam contains NaN or infinite values; cannot place a box")
    height, width = cam.shape
    low, peak = (float(v) for v in cv2.minMaxLoc(cam)[:2])
    if peak <= 0.0 or peak == low:
        return whole_image_box(height, width)
    mask = cv2.compare(cam, float(np.float32(threshold * peak)), cv2.CMP_GE)
    # Labels without per-component statistics, then the statistics of the winner only: several times faster
    # than connectedComponentsWithStats on photo-sized maps, where usually one region is found.
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count <= 1:
        return whole_image_box(height, width)
    if count == 2:
        region = mask
    else:
        areas = np.bincount(labels.ravel(), minlength=count)[1:]
        candidates = np.flatnonzero(areas == areas.max()) + 1
        if candidates.size > 1:
            peaks = [float(cam[labels == label].max()) for label in candidates]
            best = int(candidates[int(np.argmax(peaks))])
        else:
            best = int(candidates[0])
        region = np.equal(labels, best).view(np.uint8)
    x0, y0, box_width, box_height = cv2.boundingRect(region)
    return x0, y0, x0 + box_width - 1, y0 + box_height - 1


def threshold_boxes(cam_upsampled: np.ndarray, threshold: float = 0.2) -> list[Box]:
    """The paper's heuristic as a box list (one box)."""
    return [box_from_cam(cam_upsampled, threshold)]


def dt_boxes(cam_upsampled: np.ndarray, threshold: float = 0.2) -> list[Box]:
    """The CAM authors' released box generator (camcaffe.dtbox, thresholds 20, 100, 110 of 255 as their
    scripts pass them; `threshold` plays no part): several boxes, largest first."""
    from camcaffe.localize.dtbox import dt_boxes as authors_dt_boxes

    # The authors' edge clipping (x <= W-5, width <= W-5-x) leaves inverted boxes for contours that start in
    # the last 4 columns or rows, or on maps under 5 px; their program prints those, we drop them.
    boxes = [b for b in authors_dt_boxes(cam_upsampled) if b[2] >= b[0] and b[3] >= b[1] and min(b) >= 0]
    return boxes or [whole_image_box(*np.asarray(cam_upsampled).shape[:2])]


BOXERS = {"threshold": threshold_boxes, "dt": dt_boxes}


def make_boxer(kind: str, threshold: float = 0.2):
    """A function map (H, W) in [0, 1] -> non-empty list of boxes, best first."""
    from camcaffe.errors import CamcaffeError

    try:
        boxer = BOXERS[kind]
    except KeyError:
        raise CamcaffeError(f"--boxes {kind}: unknown; choose one of {', '.join(BOXERS)}") from None
    return lambda cam: boxer(cam, threshold)
