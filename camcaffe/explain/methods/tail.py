"""Run a net's tail (feature -> class scores) and its backward in onnxruntime, next to the net's session."""

from __future__ import annotations

import numpy as np

from camcaffe.explain.methods.backward import TailModel, build_tail
from camcaffe.explain.methods.base import from_layout, to_layout
from camcaffe.explain.methods.target import Target
from camcaffe.runtime.session import CUDA, ModelSession


class TailRunner:
    """The tail after `target.feature_blob` as its own session, on the provider of the net's session.

    Tensors the tail reads besides the feature (a branch that skips the feature) are fetched from the full net
    with the same inputs; for the usual classifier tails there are none and nothing but the tail is rerun."""

    def __init__(self, session: ModelSession, target: Target, gradient: bool, input_layout: str = "nchw"):
        self.net = session
        self.target = target
        self.input_layout = input_layout
        self.layout = (
            target.layout
        )  # features come and go as (N, C, h, w); the tail reads them in this layout
        self.tail: TailModel = build_tail(session.model, target.feature_blob, target.score_tensor, gradient)
        provider = "cuda" if session.providers[0] == CUDA else "cpu"
        self.session = ModelSession(
            self.tail.model, provider, threads=session.threads, source=f"tail of {session.source}"
        )

    def side_values(self, inputs: np.ndarray, repeat: int = 1) -> dict[str, np.ndarray]:
        if not self.tail.side_inputs:
            return {}
        values = self.net.run(
            {self.net.input_names[0]: to_layout(inputs, self.input_layout)}, self.tail.side_inputs
        )
        return {name: np.repeat(value, repeat, axis=0) for name, value in values.items()}

    def scores(self, features: np.ndarray, side: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Class scores (M, K) of feature maps (M, C, h, w)."""
        feeds = {self.tail.feature: to_layout(features, self.layout), **(side or {})}
        values = self.session.run(feeds, [self.tail.score])
        return values[self.tail.score].reshape(len(features), -1)

    def gradients(
        self, features: np.ndarray, classes: np.ndarray, side: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores (M, K), d score[m, classes[m]] / d features[m], shaped like features)."""
        m = len(features)
        seed = np.zeros((m, self.target.num_classes), np.float32)
        seed[np.arange(m), np.asarray(classes, dtype=np.int64)] = 1.0
        seed = seed.reshape(m, *self.tail.score_shape[1:])
        feeds = {self.tail.feature: to_layout(features, self.layout), self.tail.seed: seed, **(side or {})}
        values = self.session.run(feeds, [self.tail.score, self.tail.gradient])
        return values[self.tail.score].reshape(m, -1), from_layout(values[self.tail.gradient], self.layout)
