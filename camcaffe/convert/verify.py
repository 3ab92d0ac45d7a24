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

    def worst(self) -> BlobComparison | None:
        return max(self.compared, key=lambda c: c.relative, default=None)

    def failures(self, tolerance: float) -> list[BlobComparison]:
        return [c for c in self.compared if not c.relative <= tolerance]


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
    comparable = [b for b in blobs if last_writer[b] in single_top]
    report.skipped = [b for b in blobs if b not in comparable]
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
