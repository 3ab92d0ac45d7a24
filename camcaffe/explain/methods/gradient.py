"""The shared part of the gradient methods (Grad-CAM, Grad-CAM++, LayerCAM): the target, the tail's backward,
one backward pass per (image, class) in batches; a method only combines activations and gradients."""

from __future__ import annotations

import numpy as np

from camcaffe.explain.methods.base import MethodBatch, SaliencyMethod
from camcaffe.explain.methods.tail import TailRunner
from camcaffe.explain.methods.target import resolve_target


class GradientMethod(SaliencyMethod):
    """Subclasses implement `combine(features, gradients) -> (M, h, w)` for M (image, class) pairs."""

    def __init__(self, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
        super().__init__(session, feature_layer, fc_layer, **options)
        score = options.get("score", "logit")
        self.head = resolve_target(session, feature_layer=feature_layer, fc_layer=fc_layer, score=score)
        self.batch_size = max(1, int(options.get("batch_size", 32)))
        self.runner = TailRunner(
            session, self.head, gradient=True, input_layout=options.get("input_layout", "nchw")
        )

    def gradients(self, batch: MethodBatch) -> tuple[np.ndarray, np.ndarray]:
        """(features, d class score / d features), both (N*k, C, h, w), image-major."""
        n, k = batch.classes.shape
        features = np.repeat(np.asarray(batch.features, np.float32), k, axis=0)
        classes = batch.classes.reshape(-1)
        side = self.runner.side_values(batch.inputs, repeat=k)
        grads = np.empty_like(features)
        for start in range(0, len(features), self.batch_size):
            part = slice(start, start + self.batch_size)
            chunk_side = {name: value[part] for name, value in side.items()}
            _, grads[part] = self.runner.gradients(features[part], classes[part], chunk_side)
        return features, grads

    def maps(self, batch: MethodBatch) -> np.ndarray:
        n, k = batch.classes.shape
        features, grads = self.gradients(batch)
        maps = self.combine(features.astype(np.float64), grads.astype(np.float64))
        return maps.reshape(n, k, *maps.shape[1:]).astype(np.float32)

    def combine(self, features: np.ndarray, gradients: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError
