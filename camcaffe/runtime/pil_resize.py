"""Pillow's `Image.resize` of 8-bit images reproduced bit for bit (what torchvision's `Resize` and Keras's
`load_img(target_size=...)` do to a PIL image), without Pillow.

The convolution filters (box, bilinear, hamming, bicubic, lanczos) resample in two passes (horizontal then
vertical, except where Pillow 13 goes the other way round: see `pil_resize`), each through an 8-bit intermediate: for every output pixel a window of input pixels whose weights come
from the filter stretched by the downscaling factor (the antialiasing), normalised to sum 1, turned into integers
with 22 fractional bits, summed with a rounding offset and shifted back, clipped to 0..255. NEAREST is an affine
scale instead: the source column of output x is int(x0 + (x + 0.5) * scale) with the position accumulated in
double precision from one column to the next, as Pillow's ImagingScaleAffine does. torchvision's `Resize(256)`
sets the shorter side to 256 and the longer to int(256 * long / short); `CenterCrop` takes the crop at
int(round((side - crop) / 2))."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from camcaffe.runtime.preprocess import PreprocessError

_PRECISION_BITS = 32 - 8 - 2


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _bilinear(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    angle = x * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        # Pillow writes the window's constants as C floats: 0.54f and 0.46f
        value = np.sin(angle) / angle * (float(np.float32(0.54)) + float(np.float32(0.46)) * np.cos(angle))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, value))


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    angle = x * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x == 0.0, 1.0, np.sin(angle) / angle)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


# name: (filter, support), Pillow's Resample.c table
_FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "box": (_box, 0.5),
    "bilinear": (_bilinear, 1.0),
    "hamming": (_hamming, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}
PIL_FILTERS = ("nearest", *_FILTERS)
"""The resampling filters of Pillow's Image.resize that `pil_resize` reproduces."""


def _coefficients(in_size: int, out_size: int, name: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """(first input index (out,), integer weights (out, ksize)) of a filter, as Pillow computes them
    (precompute_coeffs + normalize_coeffs_8bpc)."""
    function, filter_support = _FILTERS[name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = function((np.arange(xmax) + xmin - center + 0.5) * (1.0 / filterscale))
        total = 0.0
        for value in w:  # Pillow sums the weights one by one
            total += value
        weights[xx, :xmax] = w / total if total != 0.0 else w
        starts[xx] = xmin
    scaled = weights * (1 << _PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    return starts, fixed


def _pass(pixels: np.ndarray, out_size: int, axis: int, name: str = "bilinear") -> np.ndarray:
    """One 8-bit resampling pass of a (H, W, C) uint8 array along axis 0 or 1."""
    starts, fixed = _coefficients(pixels.shape[axis], out_size, name)
    index = np.minimum(starts[:, None] + np.arange(fixed.shape[1]), pixels.shape[axis] - 1)
    shape = [1, 1, 1]
    shape[axis] = out_size
    out_shape = list(pixels.shape)
    out_shape[axis] = out_size
    # 32-bit sums as Pillow's own (int ss); one filter tap at a time: integer sums are exact in any order, and a
    # 12-megapixel photo never needs a (rows, out, taps, channels) array.
    total = np.full(out_shape, 1 << (_PRECISION_BITS - 1), np.int32)
    fixed = fixed.astype(np.int32)
    for tap in range(fixed.shape[1]):
        weights = fixed[:, tap]
        if weights.any():
            total += np.take(pixels, index[:, tap], axis=axis) * weights.reshape(shape)
    return np.clip(total >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's NEAREST source index per output position: the position starts at scale / 2 and grows by scale
    at each step in double precision (accumulated, not multiplied), then is truncated."""
    scale = in_size / out_size
    steps = np.full(out_size, scale)
    steps[0] = scale * 0.5
    positions = np.add.accumulate(steps)  # sequential sums, as the C loop's xo += a[0]
    return np.minimum(positions.astype(np.int64), in_size - 1)


def pil_resize(pixels: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    """A (H, W, C) or (H, W) uint8 image resized to size = (height, width) as Pillow's
    `Image.resize((width, height), FILTER)` resizes it; `name` is one of PIL_FILTERS."""
    if name not in PIL_FILTERS:
        raise PreprocessError(f"unknown Pillow filter '{name}'; choose one of {', '.join(PIL_FILTERS)}")
    if pixels.dtype != np.uint8:
        raise PreprocessError(f"the PIL-style resize takes 8-bit pixels, got {pixels.dtype}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise PreprocessError(f"resize target {size} must be positive")
    image = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if image.shape[:2] == (height, width):
        return pixels.copy()
    if name == "nearest":
        rows = _nearest_index(image.shape[0], height)
        columns = _nearest_index(image.shape[1], width)
        image = image[rows][:, columns]
        return image[:, :, 0] if pixels.ndim == 2 else image
    in_height, in_width = image.shape[:2]
    if in_height > height and in_height - height > 2 * (in_width - width):
        # Pillow 13 (the one this is checked against) passes vertically first when the height shrinks by more
        # than twice what the width loses; the passes round to 8 bits in between, so the order shows.
        image = _pass(image, height, 0, name)
        if in_width != width:
            image = _pass(image, width, 1, name)
    else:
        if in_width != width:
            # Pillow's horizontal pass covers only the rows its vertical pass reads; rows are independent, so
            # passing every row gives the same pixels.
            image = _pass(image, width, 1, name)
        if in_height != height:
            image = _pass(image, height, 0, name)
    return image[:, :, 0] if pixels.ndim == 2 else image


def pil_bilinear_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W, C) or (H, W) uint8 image resized to size = (height, width) as Pillow's
    `Image.resize((width, height), Image.BILINEAR)` resizes it."""
    return pil_resize(pixels, size, "bilinear")


def torchvision_resize_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision `Resize(shorter)`: the shorter side becomes `shorter`, the longer int(shorter*long/short)."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def centre_crop_offset(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """torchvision `CenterCrop`: (top, left) = int(round((side - crop) / 2)) (Python's rounding)."""
    return int(round((height - crop[0]) / 2.0)), int(round((width - crop[1]) / 2.0))
