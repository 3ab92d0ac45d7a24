"""Saliency methods: each turns one forward pass (and whatever extra passes it needs) into raw maps.

The pipeline is shared; a method contributes only its maps. `make_method(name, session, ...)` returns an
object with
  - `head`: the target (feature blob to fetch, probability output, class count, names for messages), and
  - `maps(batch) -> (N, k, h, w)` float32 raw maps of the chosen classes, before upsampling/normalising.
"""

from __future__ import annotations

import importlib

from camcaffe.explain.methods.base import MethodBatch, SaliencyMethod

# name -> (module, class). Modules are imported when a method is made: the gradient methods need the onnx
# package (to build the backward graph), which plain CAM does not.
METHODS: dict[str, tuple[str, str]] = {
    "cam": ("camcaffe.explain.methods.cam", "ClassActivationMap"),
    "gradcam": ("camcaffe.explain.methods.gradcam", "GradCAM"),
    "gradcam++": ("camcaffe.explain.methods.gradcam_pp", "GradCAMPlusPlus"),
    "layercam": ("camcaffe.explain.methods.layercam", "LayerCAM"),
    "scorecam": ("camcaffe.explain.methods.scorecam", "ScoreCAM"),
    "ablationcam": ("camcaffe.explain.methods.ablationcam", "AblationCAM"),
    "eigencam": ("camcaffe.explain.methods.eigencam", "EigenCAM"),
}


def method_class(name: str) -> type[SaliencyMethod]:
    from camcaffe.errors import CamcaffeError

    try:
        module, cls = METHODS[name]
    except KeyError:
        raise CamcaffeError(f"--method {name}: unknown; choose one of {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(module), cls)


def method_names() -> list[str]:
    return list(METHODS)


def make_method(name: str, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
    cls = method_class(name)
    return cls(session, feature_layer=feature_layer, fc_layer=fc_layer, **options)


__all__ = ["METHODS", "MethodBatch", "SaliencyMethod", "make_method", "method_class", "method_names"]
