"""The interface every saliency method implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from camcaffe.errors import CamcaffeError


@dataclass
class MethodBatch:
    """What one forward pass produced, for N net inputs (views of images)."""

    inputs: np.ndarray  # (N, C, H, W) the preprocessed net inputs
    features: np.ndarray  # (N, C', h, w) the target feature blob
    probabilities: np.ndarray  # (N, K)
    classes: np.ndarray  # (N, k) int64 classes to map per input


class SaliencyMethod:
    """Base class. Subclasses set `name`, resolve `self.head` in __init__ and implement `maps`."""

    name = "base"

    def __init__(self, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
        self.session = session
        self.options = options
        # Called as (done, total) by methods that run many extra passes per batch (Score-CAM, Ablation-CAM).
        self.on_step: Callable[[int, int], None] | None = None

    def step(self, done: int, total: int) -> None:
        if self.on_step is not None:
            self.on_step(done, total)

    def extra_passes(
        self, features_shape: tuple[int, ...], net_input: np.ndarray
    ) -> tuple[int, float] | None:
        """(extra forward passes per net input, measured seconds per net input) for the costly methods; None
        for methods whose cost is one forward (and a backward) per batch."""
        return None

    def maps(self, batch: MethodBatch) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def relu(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 0.0)


def weighted_maps(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU(sum_k weights[m, k] * features[m, k]): features (M, C, h, w), weights (M, C) -> (M, h, w)."""
    return relu(np.einsum("mc,mchw->mhw", weights, features))


def to_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    """N, C, H, W values in a net's layout ('nhwc': channels-last, as Keras and tf2onnx write them)."""
    return np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if layout == "nhwc" else batch


def from_layout(values: np.ndarray, layout: str) -> np.ndarray:
    """Values in a net's layout as N, C, h, w."""
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2)) if layout == "nhwc" else values


LAYOUTS = ("nchw", "nhwc")


def input_layout(dims: Sequence[int | None], given: str | None) -> str:
    """The layout images are fed in: `given` (--layout), else 'nhwc' for a 4-D input whose last dim is 1 or 3
    and whose second is not (Keras, tf2onnx), else 'nchw'."""
    if given is not None:
        if given not in LAYOUTS:
            raise CamcaffeError(f"--layout {given}: unknown; choose nchw or nhwc")
        return given
    if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3):
        return "nhwc"
    return "nchw"


def nchw_dims(dims: Sequence[int | None], layout: str) -> list[int | None]:
    """An input's dims in N, C, H, W order."""
    dims = list(dims)
    return [dims[0], dims[3], dims[1], dims[2]] if layout == "nhwc" and len(dims) == 4 else dims
