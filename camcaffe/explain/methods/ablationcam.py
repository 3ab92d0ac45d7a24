"""Ablation-CAM (Desai & Ramaswamy 2020): channel k weighs (y_c - y_c^k) / y_c, the relative drop of the class
score y_c when channel k of the feature map is zeroed. Only the tail after the feature (its own small session)
is rerun, for all (image, channel) pairs in batches of `batch_size`."""

from __future__ import annotations

import math
import time

import numpy as np

from camcaffe.explain.methods.base import MethodBatch, SaliencyMethod, relu
from camcaffe.explain.methods.tail import TailRunner
from camcaffe.explain.methods.target import resolve_target

_TINY = 1e-7


class AblationCAM(SaliencyMethod):
    name = "ablationcam"

    def __init__(self, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
        super().__init__(session, feature_layer, fc_layer, **options)
        self.head = resolve_target(session, feature_layer=feature_layer, fc_layer=fc_layer)
        self.batch_size = max(1, int(options.get("batch_size", 32)))
        self.runner = TailRunner(
            session, self.head, gradient=False, input_layout=options.get("input_layout", "nchw")
        )

    def extra_passes(
        self, features_shape: tuple[int, ...], net_input: np.ndarray
    ) -> tuple[int, float] | None:
        """One run of the tail per feature channel, `batch_size` at a time: timed on one such run."""
        channels = int(features_shape[1])
        count = min(self.batch_size, channels)
        side = self.runner.side_values(np.repeat(net_input[:1], count, axis=0))
        features = np.zeros((count, *features_shape[1:]), np.float32)
        started = time.perf_counter()
        self.runner.scores(features, side)
        per_run = time.perf_counter() - started
        return channels, per_run * math.ceil(channels / count)

    def maps(self, batch: MethodBatch) -> np.ndarray:
        features = np.asarray(batch.features, np.float32)
        n, channels = features.shape[:2]
        side = self.runner.side_values(batch.inputs)
        base = np.take_along_axis(self.runner.scores(features, side), batch.classes, axis=1).astype(
            np.float64
        )
        base = np.where(np.abs(base) < _TINY, _TINY, base)
        pairs = np.stack(np.meshgrid(np.arange(n), np.arange(channels), indexing="ij"), -1).reshape(-1, 2)
        weights = np.empty((n, channels, batch.classes.shape[1]), np.float64)
        for start in range(0, len(pairs), self.batch_size):
            images, chans = pairs[start : start + self.batch_size].T
            ablated = features[images].copy()
            ablated[np.arange(len(images)), chans] = 0.0
            chunk_side = {name: value[images] for name, value in side.items()}
            scores = np.take_along_axis(
                self.runner.scores(ablated, chunk_side), batch.classes[images], axis=1
            )
            weights[images, chans] = (base[images] - scores) / base[images]
            self.step(min(start + self.batch_size, len(pairs)), len(pairs))
        maps = np.einsum("nck,nchw->nkhw", weights, features.astype(np.float64))
        return relu(maps).astype(np.float32)
