"""The part of a net that `forward(start=..., end=...)` runs, as a net of its own.

Caffe's ForwardFromTo(start, end) runs layers start..end in place on the blob memory: a layer reads whatever
its bottoms hold at that moment (values a script set, or left by an earlier forward), and layers outside the
range neither run nor change their tops. The equivalent here is a net made of the layers in the range whose
outside bottoms (blobs read before the range writes them, and the tops of Input layers) become Input layers
fed with the blobs' current values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from camcaffe.caffe import caffe_pb2
from camcaffe.pycaffe.splits import LayerEntry


@dataclass(frozen=True)
class SubnetPlan:
    """The layers of a range to run, the blobs fed from their current values, and the blobs they write."""

    layers: tuple[caffe_pb2.LayerParameter, ...]
    feeds: tuple[str, ...]
    written: tuple[str, ...]


def plan_range(table: Sequence[LayerEntry], first: int, last: int) -> SubnetPlan:
    """The plan for table entries first..last (inclusive). Split entries do nothing (their tops alias their
    bottom); Input layers do nothing either (their tops are fed)."""
    layers = [
        entry.param
        for entry in table[first : last + 1]
        if entry.param is not None and entry.param.type != "Input"
    ]
    feeds: list[str] = []
    written: set[str] = set()
    for layer in layers:
        for bottom in layer.bottom:
            if bottom not in written and bottom not in feeds:
                feeds.append(bottom)
        written.update(layer.top)
    order = list(dict.fromkeys(top for layer in layers for top in layer.top))
    return SubnetPlan(tuple(layers), tuple(feeds), tuple(order))


def subnet_param(
    plan: SubnetPlan, shape_of: Callable[[str], Sequence[int]], name: str
) -> caffe_pb2.NetParameter:
    """A deploy NetParameter: one Input layer per fed blob (its current shape), then the planned layers."""
    param = caffe_pb2.NetParameter(name=name)
    taken = {layer.name for layer in plan.layers}
    for i, blob in enumerate(plan.feeds):
        layer_name = f"camcaffe_feed_{i}"
        while layer_name in taken:
            layer_name += "_"
        layer = param.layer.add(name=layer_name, type="Input")
        layer.top.append(blob)
        layer.input_param.shape.add().dim.extend(int(d) for d in shape_of(blob))
    for layer in plan.layers:
        param.layer.add().CopyFrom(layer)
    return param
