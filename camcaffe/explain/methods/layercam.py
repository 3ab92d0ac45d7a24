"""LayerCAM (Jiang et al. 2021): every position weighted by its own positive gradient,
ReLU(sum_k ReLU(g_k) * A_k)."""

from __future__ import annotations

import numpy as np

from camcaffe.explain.methods.base import relu
from camcaffe.explain.methods.gradient import GradientMethod


class LayerCAM(GradientMethod):
    name = "layercam"

    def combine(self, features: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        return relu((relu(gradients) * features).sum(axis=1))
