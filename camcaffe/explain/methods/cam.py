"""CAM (Zhou et al. 2016): the classifier's weights on the globally pooled feature map."""

from __future__ import annotations

import numpy as np

from camcaffe.explain.cam import compute_cams
from camcaffe.explain.cam_head import find_cam_head, head_from_metadata
from camcaffe.explain.methods.base import MethodBatch, SaliencyMethod


class ClassActivationMap(SaliencyMethod):
    name = "cam"

    def __init__(self, session, feature_layer: str | None = None, fc_layer: str | None = None, **options):
        super().__init__(session, feature_layer, fc_layer, **options)
        # A model written by `camcaffe convert` names its head in the metadata: no graph analysis needed.
        fast = head_from_metadata(session) if feature_layer is None and fc_layer is None else None
        self.head = fast or find_cam_head(session.model, feature_layer=feature_layer, fc_layer=fc_layer)

    def maps(self, batch: MethodBatch) -> np.ndarray:
        return compute_cams(batch.features, self.head.weights, batch.classes)
