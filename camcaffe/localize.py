"""Bounding boxes from class activation maps (the CAM paper's simple thresholding localisation).

Keep the pixels whose activation is at least `threshold` times the map's maximum, take the largest
8-connected region of them, and return its bounding box in inclusive pixel coordinates.
"""

from __future__ import annotations

import cv2
import numpy as np

from camcaffe.cam import CamInputError

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
    peak = float(cam.max())
    if peak <= 0.0 or peak == float(cam.min()):
        return whole_image_box(height, width)
    mask = (cam >= np.float32(threshold * peak)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return whole_image_box(height, width)
    areas = stats[1:, cv2.CC_STAT_AREA]
    candidates = np.flatnonzero(areas == areas.max()) + 1
    if candidates.size > 1:
        peaks = [float(cam[labels == label].max()) for label in candidates]
        best = int(candidates[int(np.argmax(peaks))])
    else:
        best = int(candidates[0])
    x0 = int(stats[best, cv2.CC_STAT_LEFT])
    y0 = int(stats[best, cv2.CC_STAT_TOP])
    x1 = x0 + int(stats[best, cv2.CC_STAT_WIDTH]) - 1
    y1 = y0 + int(stats[best, cv2.CC_STAT_HEIGHT]) - 1
    return x0, y0, x1, y1


def threshold_boxes(cam_upsampled: np.ndarray, threshold: float = 0.2) -> list[Box]:
    """The paper's heuristic as a box list (one box)."""
    return [box_from_cam(cam_upsampled, threshold)]


BOXERS = {"threshold": threshold_boxes}


def make_boxer(kind: str, threshold: float = 0.2):
    """A function map (H, W) in [0, 1] -> non-empty list of boxes, best first."""
    from camcaffe.errors import CamcaffeError

    try:
        boxer = BOXERS[kind]
    except KeyError:
        raise CamcaffeError(f"--boxes {kind}: unknown; choose one of {', '.join(BOXERS)}") from None
    return lambda cam: boxer(cam, threshold)
