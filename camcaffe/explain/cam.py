"""Class Activation Maps (Zhou et al. 2016), pure numpy.

For a feature map F (C x h x w) that is globally averaged and fed to a linear classifier W (K x C), the CAM of
class c is M_c(x, y) = sum_k W[c, k] * F[k, x, y]. Everything here is vectorised over images, classes and
channels.

SqueezeNet-style heads (a 1x1 class convolution BEFORE the global pooling, `CamHead.kind == 'class_conv'`)
already produce one map per class: there `weights` is the identity, so `compute_cams(F, eye(K), idx)` returns
the class channels; `select_class_maps` does the same without the matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from camcaffe.errors import CamcaffeError

_CV_MAX_CHANNELS = 512


class CamInputError(CamcaffeError, ValueError):
    """Arrays given to the CAM functions have shapes or values that do not fit together."""


def _check_class_indices(class_indices: np.ndarray, batch: int, num_classes: int) -> np.ndarray:
    idx = np.asarray(class_indices)
    if idx.ndim == 1:
        idx = idx[:, np.newaxis]
    if idx.ndim != 2 or idx.shape[0] != batch:
        raise CamInputError(f"class_indices shape {np.shape(class_indices)} must be (N, k) with N = {batch}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise CamInputError(f"class_indices must be integers, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        bad = int(idx.min() if idx.min() < 0 else idx.max())
        raise CamInputError(
            f"class index {bad} is outside 0..{num_classes - 1} (the classifier has {num_classes} classes)"
        )
    return idx


def compute_cams(features: np.ndarray, weights: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """CAMs of chosen classes: features (N, C, h, w), weights (K, C), class_indices (N, k) -> (N, k, h, w).

    cams[n, j] = sum_c weights[class_indices[n, j], c] * features[n, c]; float32."""
    feats = np.asarray(features)
    w = np.asarray(weights)
    if feats.ndim != 4:
        raise CamInputError(f"features shape {feats.shape} must be (N, C, h, w)")
    if w.ndim != 2 or w.shape[1] != feats.shape[1]:
        raise CamInputError(
            f"classifier weights shape {w.shape} do not fit features with {feats.shape[1]} channels; "
            "the feature layer must be the one the classifier pools"
        )
    n, c, h, width = feats.shape
    idx = _check_class_indices(class_indices, n, w.shape[0])
    chosen = w.astype(np.float32, copy=False)[idx]  # (N, k, C)
    flat = feats.astype(np.float32, copy=False).reshape(n, c, h * width)
    return np.matmul(chosen, flat).reshape(n, idx.shape[1], h, width)


def select_class_maps(class_maps: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    """For class-conv heads: maps (N, K, h, w), class_indices (N, k) -> (N, k, h, w), the chosen channels."""
    maps = np.asarray(class_maps)
    if maps.ndim != 4:
        raise CamInputError(f"class maps shape {maps.shape} must be (N, K, h, w)")
    idx = _check_class_indices(class_indices, maps.shape[0], maps.shape[1])
    return np.take_along_axis(maps, idx[:, :, np.newaxis, np.newaxis], axis=1).astype(np.float32, copy=False)


def upsample(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize (cv2.INTER_LINEAR) of the last two axes of cam (..., h, w) to (H, W); float32."""
    arr = np.asarray(cam, dtype=np.float32)
    if arr.ndim < 2:
        raise CamInputError(f"cam shape {arr.shape} must end with (h, w)")
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise CamInputError(f"upsample size {tuple(size)} must be two positive integers (H, W)")
    lead = arr.shape[:-2]
    stack = arr.reshape(-1, *arr.shape[-2:]).transpose(1, 2, 0)  # (h, w, M)
    chunks = []
    for start in range(0, stack.shape[2], _CV_MAX_CHANNELS):
        part = np.ascontiguousarray(stack[:, :, start : start + _CV_MAX_CHANNELS])
        out = cv2.resize(part, (width, height), interpolation=cv2.INTER_LINEAR)
        chunks.append(out.reshape(height, width, -1))
    resized = np.concatenate(chunks, axis=2) if chunks else np.zeros((height, width, 0), np.float32)
    return resized.transpose(2, 0, 1).reshape(*lead, height, width)


def normalize(cam: np.ndarray) -> np.ndarray:
    """Min-max scale each map (last two axes) to [0, 1]; a constant map becomes zeros. float32."""
    arr = np.asarray(cam, dtype=np.float32)
    if arr.ndim < 2:
        raise CamInputError(f"cam shape {arr.shape} must end with (h, w)")
    flat = arr.reshape((int(np.prod(arr.shape[:-2])), *arr.shape[-2:]))
    out = np.empty(flat.shape, dtype=np.float32)
    for index, plane in enumerate(flat):
        if plane.size == 0:
            continue
        if not cv2.checkRange(plane)[
            0
        ]:  # NaN or infinite values: numpy's semantics (a NaN map becomes zeros)
            low, span = plane.min(), plane.max() - plane.min()
            with np.errstate(invalid="ignore"):
                out[index] = np.where(span > 0, (plane - low) / np.where(span > 0, span, 1.0), 0.0)
            continue
        low, high = (np.float32(v) for v in cv2.minMaxLoc(plane)[:2])
        if high > low:
            np.subtract(plane, low, out=out[index])
            np.divide(out[index], np.float32(high - low), out=out[index])
        else:
            out[index] = 0.0
    return out.reshape(arr.shape)


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest scores per row: (indices, values), best first; ties go to the lower class index.

    probabilities (N, K) -> two (N, min(k, K)) arrays; a 1-D (K,) input gives 1-D results."""
    probs = np.asarray(probabilities)
    if probs.ndim not in (1, 2) or probs.shape[-1] == 0:
        raise CamInputError(f"probabilities shape {probs.shape} must be (K,) or (N, K)")
    if int(k) < 1:
        raise CamInputError(f"top-k must be at least 1, got {k}")
    rows = probs[np.newaxis] if probs.ndim == 1 else probs
    kk = min(int(k), rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :kk]
    values = np.take_along_axis(rows, order, axis=1)
    if probs.ndim == 1:
        return order[0], values[0]
    return order, values


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along axis."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return (shifted / shifted.sum(axis=axis, keepdims=True)).astype(np.float32)


def global_average_pool(features: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N, C): the mean over the spatial axes, as the CAM head's pooling computes it."""
    feats = np.asarray(features)
    if feats.ndim != 4:
        raise CamInputError(f"features shape {feats.shape} must be (N, C, h, w)")
    return feats.astype(np.float64).mean(axis=(2, 3)).astype(np.float32)
