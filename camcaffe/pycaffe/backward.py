"""`net.backward()` for the classic uses of pycaffe's backward pass on a deploy net: the gradient of the
outputs (or of a layer's tops, `start=`) with respect to the input blobs (saliency maps, deep-dream steps).

The gradient is the ONNX backward graph camcaffe builds for Grad-CAM (camcaffe.explain.methods.backward): the
part of the converted net from the input to the seeded tensor, run with its reverse-mode rules in ONNX
Runtime. As in Caffe, nothing is computed unless the prototxt says `force_backward: true` (a deploy net has no
loss, so no layer needs backward); layers without a gradient rule are named in the error."""

from __future__ import annotations

import numpy as np

from camcaffe.errors import CamcaffeError
from camcaffe.explain.methods.backward import GradientError, TailModel, build_tail
from camcaffe.runtime.session import ModelSession


def depends_on(model, feature: str, score: str) -> bool:
    """Whether tensor `score` is computed from tensor `feature` in the model's graph."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen, frontier = {feature}, [feature]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return score in seen


class GradientCache:
    """The gradient models of one converted net, by (input tensor, seeded tensor), with their sessions."""

    def __init__(self, model, source: str):
        self.model = model
        self.source = source
        self._tails: dict[tuple[str, str], tuple[TailModel, dict[str, ModelSession]]] = {}

    def gradient(
        self,
        feature: str,
        score: str,
        feeds: dict[str, np.ndarray],
        seed: np.ndarray,
        provider: str,
        what: str,
    ) -> np.ndarray:
        """d sum(seed * score) / d feature, with the other net inputs the tail reads taken from `feeds`
        (zeros when the score does not depend on the feature)."""
        if not depends_on(self.model, feature, score):
            return np.zeros_like(feeds[feature], dtype=np.float32)
        key = (feature, score)
        held = self._tails.get(key)
        if held is None:
            try:
                tail = build_tail(self.model, feature, score)
            except GradientError as exc:
                raise CamcaffeError(f"{self.source}: backward {what}: {exc}") from None
            held = self._tails[key] = (tail, {})
        tail, sessions = held
        missing = [name for name in tail.side_inputs if name not in feeds]
        if missing:
            raise CamcaffeError(
                f"{self.source}: backward {what} also depends on {missing}, which do not come from the input "
                "blobs; backward through such a branch is not supported"
            )
        session = sessions.get(provider)
        if session is None:
            session = sessions[provider] = ModelSession(
                tail.model, provider, source=f"backward of {self.source}"
            )
        run_feeds = {feature: feeds[feature], tail.seed: seed.astype(np.float32)}
        run_feeds.update({name: feeds[name] for name in tail.side_inputs})
        return session.run(run_feeds, [tail.gradient])[tail.gradient]
