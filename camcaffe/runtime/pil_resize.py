"""Pillow's antialiased bilinear resize of 8-bit images, reproduced bit for bit (what torchvision's
`Resize` does to a PIL image), without Pillow.

Pillow resamples in two passes, horizontal then vertical, each through an 8-bit intermediate: for every output
pixel a window of input pixels whose weights come from the triangle filter stretched by the downscaling factor
(the antialiasing), normalised to sum 1, turned into integers with 22 fractional bits, summed with a rounding
offset and shifted back, clipped to 0..255. torchvision's `Resize(256)` sets the shorter side to 256 and the
longer to int(256 * long / short); `CenterCrop` takes the crop at int(round((side - crop) / 2))."""

from __future__ import annotations

import math

import numpy as np

from camcaffe.runtime.preprocess import PreprocessError

_PRECISION_BITS = 32 - 8 - 2


def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input index (out,), integer weights (out, ksize)) of the bilinear filter, as Pillow computes
    them (precompute_coeffs + normalize_coeffs_8bpc)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        x = (np.arange(xmax) + xmin - center + 0.5) / filterscale
        w = np.maximum(1.0 - np.abs(x), 0.0)
        total = w.sum()
        weights[xx, :xmax] = w / total if total != 0.0 else w
        starts[xx] = xmin
    scaled = weights * (1 << _PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    return starts, fixed


def _pass(pixels: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One 8-bit resampling pass of a (H, W, C) uint8 array along axis 0 or 1."""
    starts, fixed = _coefficients(pixels.shape[axis], out_size)
    index = np.minimum(starts[:, None] + np.arange(fixed.shape[1]), pixels.shape[axis] - 1)
    gathered = np.take(pixels.astype(np.int64), index, axis=axis)  # axis -> (out, ksize)
    if axis == 0:
        total = np.einsum("okwc,ok->owc", gathered, fixed)
    else:
        total = np.einsum("hokc,ok->hoc", gathered, fixed)
    total += 1 << (_PRECISION_BITS - 1)
    return np.clip(total >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def pil_bilinear_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W, C) or (H, W) uint8 image resized to size = (height, width) as Pillow's
    `Image.resize((width, height), Image.BILINEAR)` resizes it."""
    if pixels.dtype != np.uint8:
        raise PreprocessError(f"the PIL-style resize takes 8-bit pixels, got {pixels.dtype}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise PreprocessError(f"resize target {size} must be positive")
    image = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if image.shape[:2] == (height, width):
        return pixels.copy()
    if image.shape[1] != width:
        # Pillow's horizontal pass covers only the rows its vertical pass reads; rows are independent, so
        # passing every row gives the same pixels.
        image = _pass(image, width, axis=1)
    if image.shape[0] != height:
        image = _pass(image, height, axis=0)
    return image[:, :, 0] if pixels.ndim == 2 else image


def torchvision_resize_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision `Resize(shorter)`: the shorter side becomes `shorter`, the longer int(shorter*long/short)."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def centre_crop_offset(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """torchvision `CenterCrop`: (top, left) = int(round((side - crop) / 2)) (Python's rounding)."""
    return int(round((height - crop[0]) / 2.0)), int(round((width - crop[1]) / 2.0))
