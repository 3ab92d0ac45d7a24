"""The layer-converter registry and the context each converter works in.

A converter is `fn(ctx: LayerContext) -> list[shape]`: it reads `ctx.layer` (a Caffe
LayerParameter), the current ONNX tensors and shapes of its bottoms, asks `ctx.params()` for its
weights with the shapes Caffe expects, emits ONNX nodes whose final outputs are `ctx.outputs`,
and returns the shapes of its tops (batch included, as the deploy file gives it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from camcaffe.caffe import caffe_pb2
from camcaffe.convert.graph import GraphBuilder
from camcaffe.errors import UnsupportedLayerError

Shape = list[int]
Converter = Callable[["LayerContext"], list[Shape]]

_CONVERTERS: dict[str, Converter] = {}
# (min bottoms, max bottoms, min tops, max tops) as Caffe's layers check them; None = unbounded.
Arity = tuple[int, int | None, int, int | None]
_ARITY: dict[str, Arity] = {}
_ONE_TO_ONE: Arity = (1, 1, 1, 1)
# Layer types whose Caffe implementation gives a well-defined result when top == bottom. Others
# (Convolution, Eltwise SUM/MAX, LRN, ...) overwrite their input while reading it, and Caffe itself
# refuses in-place Flatten/Reshape, so there is no faithful value to reproduce.
IN_PLACE_TYPES = frozenset({
    "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold",
    "BatchNorm", "Scale", "Bias", "Dropout", "Softmax", "Split",
    # Fork layers: elementwise, and MVN and BN, which take their statistics before they write.
    "ReLU6", "HardSwish", "HardSigmoid", "Clip", "Swish", "Mish", "MVN", "BN",
})  # fmt: skip


def converter(*type_names: str, arity: Arity = _ONE_TO_ONE) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for type_name in type_names:
            _CONVERTERS[type_name] = fn
            _ARITY[type_name] = arity
        return fn

    return register


def check_arity(type_name: str, bottoms: int, tops: int) -> str | None:
    """Why the layer's bottom/top counts are invalid for its type, or None."""
    min_b, max_b, min_t, max_t = _ARITY.get(type_name, _ONE_TO_ONE)

    def describe(low: int, high: int | None) -> str:
        return str(low) if low == high else f"at least {low}" if high is None else f"{low} to {high}"

    if bottoms < min_b or (max_b is not None and bottoms > max_b):
        return f"takes {describe(min_b, max_b)} bottom(s), got {bottoms}"
    if tops < min_t or (max_t is not None and tops > max_t):
        return f"takes {describe(min_t, max_t)} top(s), got {tops}"
    return None


_loaded = False


def _load_converters() -> None:
    # Importing the families registers their converters (a family may already be imported alone).
    global _loaded
    from camcaffe.convert import (  # noqa: F401
        layers_activation,
        layers_conv,
        layers_fork,
        layers_misc,
        layers_norm,
        layers_rcnn,
        layers_resample,
        layers_ssd,
        layers_tensor,
    )

    _loaded = True


def get_converter(type_name: str) -> Converter | None:
    if not _loaded:
        _load_converters()
    return _CONVERTERS.get(type_name)


def supported_types() -> list[str]:
    if not _loaded:
        _load_converters()
    return sorted(_CONVERTERS)


def is_supported(type_name: str) -> bool:
    return get_converter(type_name) is not None


class LayerRefused(Exception):
    """Raised by a converter for a parameter value it cannot convert faithfully."""


@dataclass
class LayerContext:
    layer: caffe_pb2.LayerParameter
    inputs: list[str]
    input_shapes: list[Shape]
    outputs: list[str]
    graph: GraphBuilder
    fetch_params: Callable[[caffe_pb2.LayerParameter, list[tuple[int, ...]]], list[np.ndarray]]
    param_names: list[str] = field(default_factory=list)
    # False when the layer's tops no longer have the batch as axis 0.
    batch_axis_kept: bool = True
    # True when the emitted nodes bake in the deploy batch size (then no symbolic batch).
    batch_fixed: bool = False

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def shape(self) -> Shape:
        return self.input_shapes[0]

    def params(self, expected: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return self.fetch_params(self.layer, [tuple(int(d) for d in s) for s in expected])

    def weight(self, suffix: str, array: np.ndarray) -> str:
        """Register a layer parameter as an initializer named after the layer."""
        name = self.graph.initializer(f"{self.layer.name}_{suffix}", array)
        self.param_names.append(name)
        return name

    def const(self, suffix: str, values: Any, dtype: Any = np.int64) -> str:
        return self.graph.constant(f"{self.layer.name}/{suffix}", values, dtype)

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | str | None = None,
        **attributes: Any,
    ) -> str:
        final = (
            outputs is not None and list([outputs] if isinstance(outputs, str) else outputs) == self.outputs
        )
        name = self.layer.name if final else f"{self.layer.name}/{op_type}"
        if outputs is None:
            outputs = [self.graph.unique(f"{self.layer.name}/{op_type}:out")]
        return self.graph.node(op_type, inputs, outputs, name=name, **attributes)

    def refuse(self, reason: str) -> LayerRefused:
        return LayerRefused(reason)


# Types known and deliberately not converted (family modules add the reason to show instead of
# "unsupported type").
_REFUSED_TYPES: dict[str, str] = {}


def refused_type(type_name: str, reason: str) -> None:
    _REFUSED_TYPES[type_name] = reason


def refuse_all(unsupported: list[tuple[str, str, str]], source: str) -> UnsupportedLayerError:
    """One error listing every layer that cannot be converted: (name, type, reason)."""
    if not _loaded:
        _load_converters()
    unsupported = [
        (name, type_name, reason or _REFUSED_TYPES.get(type_name, ""))
        for name, type_name, reason in unsupported
    ]
    parts = [
        f"layer '{name}' ({type_name}{': ' + reason if reason else ''})"
        for name, type_name, reason in unsupported
    ]
    types = sorted({type_name for _, type_name, reason in unsupported if not reason})
    hint = f" unsupported type(s): {', '.join(types)};" if types else ""
    known = f". camcaffe converts: {', '.join(supported_types())}" if types else ""
    return UnsupportedLayerError(
        f"{source}: cannot convert {len(unsupported)} layer(s):{hint} {'; '.join(parts)}{known}",
        layers=[(name, type_name) for name, type_name, _ in unsupported],
    )
