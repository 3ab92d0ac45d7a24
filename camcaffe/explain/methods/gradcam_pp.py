"""Grad-CAM++ (Chattopadhyay et al. 2018), the closed form for an exponential of the class score.

With g = d score / d A: alpha = g^2 / (2 g^2 + sum_ij(A) g^3) (0 where the denominator is 0), channel weights
w_k = sum_ij alpha ReLU(g); exp(score) only scales every weight of a class by the same positive factor."""

from __future__ import annotations

import numpy as np

from camcaffe.explain.methods.base import relu, weighted_maps
from camcaffe.explain.methods.gradient import GradientMethod


class GradCAMPlusPlus(GradientMethod):
    name = "gradcam++"

    def combine(self, features: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        squared = gradients**2
        denominator = 2.0 * squared + features.sum(axis=(2, 3), keepdims=True) * gradients**3
        safe = np.where(denominator != 0.0, denominator, 1.0)
        alpha = np.where(denominator != 0.0, squared / safe, 0.0)
        return weighted_maps(features, (alpha * relu(gradients)).sum(axis=(2, 3)))
