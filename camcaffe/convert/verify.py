"""Second opinion: run the original Caffe files in OpenCV 4's dnn module and compare every blob."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcaffe.caffe.net import CaffeNet
from camcaffe.convert.converter import ConvertedNet


@dataclass
class BlobComparison:
    blob: str
    max_abs_diff: float
    reference_max: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(1.0, self.reference_max)


@dataclass
class VerifyReport:
    compared: list[BlobComparison] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unavailable: str | None = None
    # Layers whose blobs (and everything computed from them) were not compared, with the reason.
    not_judged: list[str] = field(default_factory=list)

    def worst(self) -> BlobComparison | None:
        return max(self.compared, key=lambda c: c.relative, default=None)

    def failures(self, tolerance: float) -> list[BlobComparison]:
        return [c for c in self.compared if not c.relative <= tolerance]


def opencv_differs(layer) -> str | None:
    """Why OpenCV 4's implementation of this layer computes something other than the Caffe fork that defines
    it (so it cannot judge our value), or None. Found by reading both sources and checked in the tests."""
    kind = layer.type
    if kind == "Axpy":
        return "OpenCV's Axpy swaps the x and y bottoms of hujie-frank/SENet's layer"
    if kind == "Reorg" and (layer.reorg_param.stride not in (0, 2) or layer.reorg_param.reverse):
        return "OpenCV's Reorg always uses stride 2 and has no reverse"
    if kind == "ReLU6" and layer.HasField("relu6_param"):
        return "OpenCV's ReLU6 ignores relu6_param (threshold, negative_slope)"
    if kind == "Swish" and layer.HasField("swish_param") and layer.swish_param.beta != 1:
        return "OpenCV's Swish ignores swish_param.beta"
    if kind == "MVN" and layer.mvn_param.normalize_variance and layer.mvn_param.eps > 1e-6:
        return "OpenCV's MVN adds eps under the square root (Caffe adds it to the standard deviation)"
    if kind == "Interp" and (
        layer.interp_param.pad_beg or layer.interp_param.pad_end
        or (layer.interp_param.HasField("zoom_factor") and layer.interp_param.HasField("shrink_factor"))
    ):  # fmt: skip
        return "OpenCV's Interp ignores pad_beg/pad_end and shrink_factor next to zoom_factor"
    if kind == "DetectionOutput":
        return "OpenCV's DetectionOutput orders rows by score across classes and pads with zero rows"
    if kind == "PriorBox" and any(
        float(v) != int(v) for v in [*layer.prior_box_param.min_size, *layer.prior_box_param.max_size]
    ):
        return "OpenCV keeps PriorBox's fractional min/max sizes, which Caffe truncates to int"
    if kind == "Proposal":
        return "OpenCV's Proposal follows py-faster-rcnn, not the C++ Proposal layer (anchor sizes differ)"
    return None


def _not_judged(net: CaffeNet) -> tuple[set[str], list[str]]:
    """Blobs computed by (or from) a layer OpenCV computes differently, and one note per such layer."""
    tainted: set[str] = set()
    notes: list[str] = []
    for layer in net.layers:
        reason = opencv_differs(layer)
        if reason:
            notes.append(f"layer '{layer.name}' ({layer.type}): {reason}")
        if reason or any(bottom in tainted for bottom in layer.bottom):
            tainted.update(layer.top)
    return tainted, notes



def opencv_available() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromCaffe")


def verify_with_opencv(
    prototxt: Path,
    caffemodel: Path,
    onnx_path: Path,
    net: CaffeNet,
    converted: ConvertedNet,
    seed: int = 0,
    all_blobs: bool = True,
) -> VerifyReport:
    """Feed one random input (batch 1) to both runtimes and compare the net's blobs."""
    report = VerifyReport()
    if not opencv_available():
        report.unavailable = "this cv2 has no dnn.readNetFromCaffe (OpenCV 5 removed it; install opencv<5)"
        return report
    import cv2

    try:
        cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    except cv2.error as exc:
        report.unavailable = f"OpenCV could not load the Caffe files: {str(exc).strip().splitlines()[-1]}"
        return report
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    # Fusion makes OpenCV alias Concat inputs and fold BatchNorm/ReLU, hiding intermediate blobs.
    cv_net.enableFusion(False)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in converted.inputs:
        feeds[name] = rng.uniform(-128, 128, [1, *shape[1:]]).astype(np.float32)
    last_writer: dict[str, str] = {}
    single_top: set[str] = set()
    for layer in net.layers:
        if layer.type == "Input":
            continue
        for top in layer.top:
            last_writer[top] = layer.name
        if len(layer.top) == 1:
            single_top.add(layer.name)
    blobs = [b for b in last_writer if b in converted.blob_tensors] if all_blobs else list(net.outputs)
    tainted, report.not_judged = _not_judged(net)
    comparable = [b for b in blobs if last_writer[b] in single_top and b not in tainted]
    report.skipped = [b for b in blobs if b not in comparable]
    if not comparable:
        report.unavailable = "OpenCV computes every blob differently: " + "; ".join(report.not_judged[:3])
        return report
    if len(feeds) == 1:
        cv_net.setInput(next(iter(feeds.values())))
    else:
        for name, value in feeds.items():
            cv_net.setInput(value, name)
    try:
        cv_values = cv_net.forward([last_writer[b] for b in comparable])
    except cv2.error as exc:
        report.unavailable = f"OpenCV failed to run the net: {str(exc).strip().splitlines()[-1]}"
        return report
    from camcaffe.runtime.session import ModelSession

    tensors = [converted.blob_tensors[b] for b in comparable]
    ours = ModelSession(onnx_path, "cpu", io_binding=False).run(feeds, tensors)
    for blob, reference in zip(comparable, cv_values, strict=True):
        value = ours[converted.blob_tensors[blob]]
        reference = np.asarray(reference)
        if reference.size != value.size:
            report.skipped.append(blob)
            continue
        reference = reference.reshape(value.shape)
        diff = float(np.abs(value.astype(np.float64) - reference).max()) if value.size else 0.0
        report.compared.append(
            BlobComparison(blob, diff, float(np.abs(reference).max()) if value.size else 0.0)
        )
    return report
