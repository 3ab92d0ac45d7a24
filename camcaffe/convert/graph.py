"""Accumulates ONNX nodes and initializers while layers are converted."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from onnx import NodeProto, helper


class GraphBuilder:
    def __init__(self, reserved_names: Iterable[str] = ()):
        self.nodes: list[NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._used: set[str] = set(reserved_names)
        self._node_names: set[str] = set()

    def unique(self, base: str) -> str:
        if base not in self._used:
            self._used.add(base)
            return base
        index = 1
        while f"{base}_{index}" in self._used:
            index += 1
        name = f"{base}_{index}"
        self._used.add(name)
        return name

    def _unique_node_name(self, base: str) -> str:
        # Node names are a namespace of their own: the final node of a layer is named exactly
        # after the Caffe layer even when a tensor (its top) has the same name.
        name, index = base, 0
        while name in self._node_names:
            index += 1
            name = f"{base}_{index}"
        self._node_names.add(name)
        return name

    def reserve(self, name: str) -> str:
        self._used.add(name)
        return name

    def initializer(self, base_name: str, array: np.ndarray) -> str:
        name = self.unique(base_name)
        self.initializers[name] = array
        return name

    def constant(self, base_name: str, values: Sequence[Any] | np.ndarray, dtype: Any = np.int64) -> str:
        return self.initializer(base_name, np.asarray(values, dtype=dtype))

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | str | None = None,
        name: str | None = None,
        **attributes: Any,
    ) -> str:
        """Add a node; returns its first output (a fresh name unless given)."""
        if outputs is None:
            outputs = [self.unique(f"{name or op_type}:out")]
        elif isinstance(outputs, str):
            outputs = [outputs]
        node_name = self._unique_node_name(name or f"{op_type}:{outputs[0]}")
        attrs = {key: value for key, value in attributes.items() if value is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=node_name, **attrs))
        return outputs[0]
