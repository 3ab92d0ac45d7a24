"""Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of d score / d feature."""

from __future__ import annotations

import numpy as np

from camcaffe.explain.methods.base import weighted_maps
from camcaffe.explain.methods.gradient import GradientMethod


class GradCAM(GradientMethod):
    name = "gradcam"

    def combine(self, features: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        return weighted_maps(features, gradients.mean(axis=(2, 3)))
