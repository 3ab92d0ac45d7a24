"""Where a layer's parameter blobs come from: a caffemodel, or seeded random values (tests,
benchmarks, and converting a prototxt alone for inspection)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from camcaffe.caffe import caffe_pb2
from camcaffe.caffe.caffemodel import CaffeWeights, WeightBlob
from camcaffe.errors import WeightsError


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def blob_matches(blob: WeightBlob, expected: tuple[int, ...]) -> bool:
    """Caffe's rule (exact shape, or the legacy 4-D form of it), plus singleton axes ignored."""
    if blob.shape == expected:
        return True
    if blob.legacy and len(expected) <= 4 and blob.shape == (1,) * (4 - len(expected)) + expected:
        return True
    return math.prod(blob.shape) == math.prod(expected) and _squeezed(blob.shape) == _squeezed(expected)


@dataclass
class CaffemodelWeights:
    weights: CaffeWeights
    missing: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def __call__(self, layer: caffe_pb2.LayerParameter, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        source = self.weights.get(layer.name)
        path = self.weights.path
        if source is None or not source.blobs:
            self.missing.append((layer.name, layer.type))
            return [np.zeros(shape, dtype=np.float32) for shape in expected]
        self.used.add(layer.name)
        if len(source.blobs) != len(expected):
            raise WeightsError(
                f"{path}: layer '{layer.name}' ({layer.type}) has {len(source.blobs)} weight blob(s) but the "
                f"prototxt needs {len(expected)} ({', '.join(str(s) for s in expected)}); check bias_term and "
                "that the caffemodel belongs to this prototxt"
            )
        arrays = []
        for index, (blob, shape) in enumerate(zip(source.blobs, expected, strict=True)):
            if blob.values.size != math.prod(blob.shape):
                raise WeightsError(
                    f"{path}: blob {index} of layer '{layer.name}' holds {blob.values.size} values but declares "
                    f"shape {blob.shape}; the caffemodel is corrupt"
                )
            if not blob_matches(blob, shape):
                raise WeightsError(
                    f"{path}: layer '{layer.name}' ({layer.type}) blob {index} has shape {blob.shape} but the "
                    f"prototxt needs {shape}; check num_output, kernel size and input shape"
                )
            array = blob.as_shape(shape)
            if not np.isfinite(array).all():
                bad = int(array.size - np.isfinite(array).sum())
                self.warnings.append(f"{path}: layer '{layer.name}' blob {index} has {bad} NaN/Inf value(s)")
            arrays.append(array)
        return arrays

    def check_complete(self, source: str) -> None:
        if not self.missing:
            return
        names = ", ".join(f"'{n}' ({t})" for n, t in self.missing[:5])
        more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
        path = self.weights.path
        if not self.used:
            held = ", ".join(list(self.weights.layers)[:5])
            raise WeightsError(
                f"{path}: has weights for none of the layers of {source} (missing {names}{more}); it holds "
                f"layers such as {held}: is it the caffemodel of another net?"
            )
        raise WeightsError(
            f"{path}: no weights for layer(s) {names}{more} of {source}; is it the caffemodel for "
            "this prototxt (layer names must match)?"
        )


@dataclass
class RandomWeights:
    """Seeded random parameters with sensible scales, recorded so they can be written out."""

    seed: int = 0
    scale_classifier: float = 1.0
    record: dict[str, tuple[str, list[np.ndarray]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, layer: caffe_pb2.LayerParameter, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        rng = self._rng
        arrays: list[np.ndarray] = []
        for index, shape in enumerate(expected):
            if layer.type == "BatchNorm":
                values = [
                    rng.normal(0, 0.5, shape),
                    rng.uniform(0.5, 2.0, shape),
                    rng.uniform(0.5, 2.0, shape),
                ][index]
            elif layer.type in ("Scale", "Bias"):
                values = (
                    rng.uniform(0.5, 1.5, shape)
                    if index == 0 and layer.type == "Scale"
                    else rng.normal(0, 0.2, shape)
                )
            elif layer.type == "BN":  # scale/slope, shift/bias, mean, variance (or inverse std): > 0
                values = [
                    rng.uniform(0.5, 1.5, shape),
                    rng.normal(0, 0.2, shape),
                    rng.normal(0, 0.5, shape),
                    rng.uniform(0.5, 2.0, shape),
                ][index]
            elif layer.type == "PReLU":
                values = rng.uniform(0.0, 0.5, shape)
            elif layer.type == "Normalize":  # its scale blob may be 0-D (channel_shared)
                values = rng.uniform(0.5, 3.0, shape)
            elif index == 0:
                fan_in = max(1, math.prod(shape[1:]) if len(shape) > 1 else shape[0])
                if layer.type == "Deconvolution":
                    fan_in = max(1, shape[0] * math.prod(shape[2:]))
                values = rng.normal(0, math.sqrt(2.0 / fan_in), shape)
            else:
                values = rng.normal(0, 0.1, shape)
            arrays.append(np.asarray(values, dtype=np.float32))
        self.record[layer.name] = (layer.type, arrays)
        return arrays

    def layers(self) -> list[tuple[str, str, list[np.ndarray]]]:
        return [(name, type_name, arrays) for name, (type_name, arrays) in self.record.items()]


class ZeroWeights:
    """Placeholder parameters for shape-only work (inspecting a prototxt without weights)."""

    def __call__(self, layer: caffe_pb2.LayerParameter, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        return [np.zeros(shape, dtype=np.float32) for shape in expected]
