"""Score-CAM (Wang et al. 2020): channel weights are the class probability of the input masked by that channel.

Each channel is upsampled to the input size (bilinear), min-max normalised to [0, 1] and multiplied into the
preprocessed net input. The preprocessed input is mean-subtracted, so a masked-out pixel becomes the mean pixel
(0), the usual "baseline" of Caffe nets. The masked inputs of all (image, channel) pairs run through the
net's own session in batches of `batch_size`."""

from __future__ import annotations

import math
import time

import numpy as np

from camcaffe.explain.cam import normalize, softmax, upsample
from camcaffe.explain.methods.base import MethodBatch, SaliencyMethod, relu, to_layout
from camcaffe.explain.methods.target import resolve_target


class ScoreCAM(SaliencyMethod):
    name = "scorecam"

    def __init__(self, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
        super().__init__(session, feature_layer, fc_layer, **options)
        self.head = resolve_target(session, feature_layer=feature_layer, fc_layer=fc_layer)
        self.batch_size = max(1, int(options.get("batch_size", 32)))
        self.input_name = session.input_names[0]
        self.input_layout = options.get("input_layout", "nchw")

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (M, K) of net inputs (M, C, H, W), from the Softmax or the scores."""
        name = self.head.prob_output or self.head.score_tensor
        feed = {self.input_name: to_layout(inputs, self.input_layout)}
        values = self.session.run(feed, [name])[name].reshape(len(inputs), -1)
        return values if self.head.prob_output else softmax(values, axis=1)

    def extra_passes(
        self, features_shape: tuple[int, ...], net_input: np.ndarray
    ) -> tuple[int, float] | None:
        """One masked input per feature channel, run `batch_size` at a time: timed on one such run."""
        channels = int(features_shape[1])
        probe = np.repeat(net_input[:1], min(self.batch_size, channels), axis=0)
        started = time.perf_counter()
        self.probabilities(probe)
        per_run = time.perf_counter() - started
        return channels, per_run * math.ceil(channels / len(probe))

    def maps(self, batch: MethodBatch) -> np.ndarray:
        features = np.asarray(batch.features, np.float32)
        n, channels = features.shape[:2]
        size = batch.inputs.shape[2:]
        pairs = np.stack(np.meshgrid(np.arange(n), np.arange(channels), indexing="ij"), -1).reshape(-1, 2)
        weights = np.empty((n, channels, batch.classes.shape[1]), np.float64)
        for start in range(0, len(pairs), self.batch_size):
            images, chans = pairs[start : start + self.batch_size].T
            masks = normalize(upsample(features[images, chans], size))  # (b, H, W)
            probabilities = self.probabilities(batch.inputs[images] * masks[:, None])
            weights[images, chans] = np.take_along_axis(probabilities, batch.classes[images], axis=1)
            self.step(min(start + self.batch_size, len(pairs)), len(pairs))
        maps = np.einsum("nck,nchw->nkhw", weights, features.astype(np.float64))
        return relu(maps).astype(np.float32)
