"""Saliency methods: each turns one forward pass (and whatever extra passes it needs) into raw maps.

The pipeline is shared; a method contributes only its maps. `make_method(name, session, ...)` returns an
object with
  - `head`: the target (feature blob to fetch, probability output, class count, names for messages), and
  - `maps(batch) -> (N, k, h, w)` float32 raw maps of the chosen classes, before upsampling/normalising.
"""

from __future__ import annotations

from camcaffe.explain.methods.ablationcam import AblationCAM
from camcaffe.explain.methods.base import MethodBatch, SaliencyMethod
from camcaffe.explain.methods.cam import ClassActivationMap
from camcaffe.explain.methods.eigencam import EigenCAM
from camcaffe.explain.methods.gradcam import GradCAM
from camcaffe.explain.methods.gradcam_pp import GradCAMPlusPlus
from camcaffe.explain.methods.layercam import LayerCAM
from camcaffe.explain.methods.scorecam import ScoreCAM

METHODS: dict[str, type[SaliencyMethod]] = {
    method.name: method
    for method in (
        ClassActivationMap,
        GradCAM,
        GradCAMPlusPlus,
        LayerCAM,
        ScoreCAM,
        AblationCAM,
        EigenCAM,
    )
}


def method_names() -> list[str]:
    return list(METHODS)


def make_method(name: str, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
    from camcaffe.errors import CamcaffeError

    try:
        cls = METHODS[name]
    except KeyError:
        raise CamcaffeError(f"--method {name}: unknown; choose one of {', '.join(METHODS)}") from None
    return cls(session, feature_layer=feature_layer, fc_layer=fc_layer, **options)


__all__ = ["METHODS", "MethodBatch", "SaliencyMethod", "make_method", "method_names"]
