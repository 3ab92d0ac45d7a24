"""Eigen-CAM (Muhammad & Yeasin 2020): the feature map projected on its first principal component.

Per image, the activations (h w positions x C channels) are centred per channel and the projection on the
first right singular vector is the map; its sign is chosen so that the map correlates positively with the
channel-summed activations. Class-agnostic: every requested class gets the same map. No ReLU (as in the
paper): the pipeline's min-max normalisation maps the most negative value to 0."""

from __future__ import annotations

import numpy as np

from camcaffe.explain.methods.base import MethodBatch, SaliencyMethod
from camcaffe.explain.methods.target import resolve_target


def principal_projection(features: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (h, w): the centred activations projected on their first principal direction."""
    channels, height, width = features.shape
    positions = features.reshape(channels, -1).T.astype(np.float64)
    centred = positions - positions.mean(axis=0)
    if not np.any(centred):
        return np.zeros((height, width), np.float32)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projection = centred @ vt[0]
    total = positions.sum(axis=1)
    if np.dot(projection - projection.mean(), total - total.mean()) < 0:
        projection = -projection
    return projection.reshape(height, width).astype(np.float32)


class EigenCAM(SaliencyMethod):
    name = "eigencam"

    def __init__(self, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
        super().__init__(session, feature_layer, fc_layer, **options)
        self.head = resolve_target(session, feature_layer=feature_layer, fc_layer=fc_layer)

    def maps(self, batch: MethodBatch) -> np.ndarray:
        k = batch.classes.shape[1]
        maps = np.stack([principal_projection(f) for f in np.asarray(batch.features)])
        return np.repeat(maps[:, None], k, axis=1)
