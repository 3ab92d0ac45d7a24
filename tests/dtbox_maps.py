"""Synthetic 8-bit heat maps for the dt_box tests, built with integer arithmetic only (so every platform and
numpy version makes the same pixels): the maximum of elliptic paraboloids, each given as
(centre y, centre x, radius y, radius x, peak); a peak above 255 makes a flat plateau."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

Blob = Sequence[int]  # cy, cx, ry, rx, peak
CASES_FILE = Path(__file__).with_name("data") / "dtbox_synthetic.json"


def paraboloid_map(height: int, width: int, blobs: Sequence[Blob]) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.int64)
    out = np.zeros((height, width), np.int64)
    for cy, cx, ry, rx, peak in blobs:
        whole = (ry * rx) ** 2
        inside = whole - ((yy - cy) * rx) ** 2 - ((xx - cx) * ry) ** 2
        out = np.maximum(out, np.where(inside > 0, peak * inside // whole, 0))
    return np.clip(out, 0, 255).astype(np.uint8)


def load_cases(path: Path = CASES_FILE) -> list[dict]:
    """The stored cases: {"h", "w", "blobs", "legacy", "modern"}, the last two the compiled program's
    rectangles (x, y, w, h) with and without the one-pixel border cleared (see camcaffe.dtbox)."""
    return json.loads(path.read_text())["cases"]


def random_case(rng: np.random.Generator) -> dict:
    """Sizes, blob counts and shapes chosen to reach every rule: blobs over the edges, thin bridges, rings of
    separate blobs, plateaus, tiny maps."""
    height, width = int(rng.integers(12, 121)), int(rng.integers(12, 161))
    blobs = []
    for _ in range(int(rng.integers(1, 6))):
        kind = rng.integers(0, 4)
        if kind == 0:  # round-ish, anywhere, partly outside the map too
            ry = int(rng.integers(2, max(3, height // 2)))
            rx = int(rng.integers(2, max(3, width // 2)))
        elif kind == 1:  # thin and long: a bridge
            ry, rx = int(rng.integers(1, 4)), int(rng.integers(5, max(6, width)))
        elif kind == 2:
            ry, rx = int(rng.integers(5, max(6, height))), int(rng.integers(1, 4))
        else:  # small
            ry, rx = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        cy = int(rng.integers(-ry // 2, height + ry // 2))
        cx = int(rng.integers(-rx // 2, width + rx // 2))
        blobs.append([cy, cx, ry, rx, int(rng.integers(25, 400))])
    return {"h": height, "w": width, "blobs": blobs}


def grid_case(rng: np.random.Generator) -> dict:
    """A grid of identical blobs: many rectangles of equal area (more than std::sort's 16-element insertion
    sort), so the order the program's unstable sort leaves ties in shows in its output."""
    rows, cols = int(rng.integers(2, 4)), int(rng.integers(3, 5))
    pitch_y, pitch_x = int(rng.integers(14, 24)), int(rng.integers(14, 24))
    ry, rx = int(rng.integers(4, pitch_y // 2 + 1)), int(rng.integers(4, pitch_x // 2 + 1))
    peak = int(rng.integers(120, 400))
    height, width = rows * pitch_y + int(rng.integers(0, 8)), cols * pitch_x + int(rng.integers(0, 8))
    blobs = [
        [r * pitch_y + pitch_y // 2, c * pitch_x + pitch_x // 2, ry, rx, peak]
        for r in range(rows)
        for c in range(cols)
    ]
    return {"h": height, "w": width, "blobs": blobs}
