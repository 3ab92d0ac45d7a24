"""Drive the layer converters over a deploy net and collect an ONNX graph description."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from camcaffe.caffe import caffe_pb2
from camcaffe.caffe.net import CaffeNet, check_blob_shape
from camcaffe.convert.graph import GraphBuilder
from camcaffe.convert.registry import (
    IN_PLACE_TYPES,
    LayerContext,
    LayerRefused,
    check_arity,
    get_converter,
    refuse_all,
)
from camcaffe.errors import CaffeFormatError

ParamSource = Callable[[caffe_pb2.LayerParameter, list[tuple[int, ...]]], list[np.ndarray]]
BATCH_SYMBOL = "batch"


@dataclass
class ConvertOptions:
    batch: int | None = None  # None: symbolic batch dimension
    expose: list[str] = field(default_factory=list)
    expose_all: bool = False
    # Replace declared input shapes (pycaffe's blob.reshape); batch still follows `batch`.
    input_shapes: dict[str, list[int]] | None = None


@dataclass
class LayerRecord:
    type: str
    bottoms: list[str]
    tops: list[str]
    params: list[str]
    param_shapes: list[list[int]]
    bottom_tensors: list[str] = field(default_factory=list)  # the ONNX tensors the layer read


@dataclass
class ConvertedNet:
    name: str
    builder: GraphBuilder
    inputs: list[tuple[str, list[int]]]
    outputs: list[str]
    blob_tensors: dict[str, str]  # Caffe blob -> ONNX tensor holding its final value
    tensor_shapes: dict[str, list[int]]
    batch_led: set[str]
    layers: dict[str, LayerRecord]
    symbolic_batch: bool
    warnings: list[str] = field(default_factory=list)
    cam_head: dict | None = None


def _shares_memory(layer) -> bool:
    """Caffe layers whose tops are views of the bottom's memory (ShareData in their Reshape)."""
    if layer.type in ("Split", "Flatten", "Reshape"):
        return True
    return (layer.type == "Concat" and len(layer.bottom) == 1) or (
        layer.type == "Slice" and len(layer.top) == 1
    )


def alias_groups(net: CaffeNet) -> dict[str, str]:
    """Blob -> representative of the blobs that share its memory (union-find over sharing layers)."""
    parent: dict[str, str] = {}

    def find(blob: str) -> str:
        parent.setdefault(blob, blob)
        while parent[blob] != blob:
            parent[blob] = parent[parent[blob]]
            blob = parent[blob]
        return blob

    for layer in net.layers:
        for top in layer.top:
            find(top)
        if _shares_memory(layer) and layer.bottom:
            for top in layer.top:
                parent[find(top)] = find(layer.bottom[0])
    return {blob: find(blob) for blob in parent}


def _in_place_writes(layer) -> list[str]:
    return [
        top for index, top in enumerate(layer.top) if index < len(layer.bottom) and layer.bottom[index] == top
    ]


def _final_events(net: CaffeNet, groups: dict[str, str]) -> dict[str, tuple[int, bool]]:
    """Per blob: (layer index, explicit) of the write that leaves its final value. An in-place write to a
    blob also rewrites every other blob sharing its memory that exists by then (implicit write)."""
    final: dict[str, tuple[int, bool]] = {}
    members: dict[str, list[str]] = {}
    for index, layer in enumerate(net.layers):
        for top in layer.top:
            final[top] = (index, True)
            group = members.setdefault(groups[top], [])
            if top not in group:
                group.append(top)
        for top in _in_place_writes(layer):
            for other in members[groups[top]]:
                if other != top:
                    final[other] = (index, False)
    return final


def _tensor_names(net: CaffeNet, final: dict[str, tuple[int, bool]]) -> list[list[str]]:
    """ONNX name of each top of each layer: the blob name for the write that leaves its final value,
    else blob@layer (graph inputs always keep their name)."""
    input_blobs = {top for layer in net.layers if layer.type == "Input" for top in layer.top}
    names = []
    for index, layer in enumerate(net.layers):
        if layer.type == "Input":
            names.append(list(layer.top))
            continue
        names.append(
            [
                top if final[top] == (index, True) and top not in input_blobs else f"{top}@{layer.name}"
                for top in layer.top
            ]
        )
    return names


def _static_problem(layer) -> str | None:
    """Why a layer cannot be converted, judged from its type and wiring alone ('' = unknown type)."""
    if get_converter(layer.type) is None:
        return ""
    problem = check_arity(layer.type, len(layer.bottom), len(layer.top))
    in_place = [top for i, top in enumerate(layer.top) if i < len(layer.bottom) and layer.bottom[i] == top]
    if problem is None and in_place and layer.type not in IN_PLACE_TYPES:
        problem = (
            f"cannot run in-place (top '{in_place[0]}' is also its bottom): Caffe computes no "
            "well-defined value; give the top a new name"
        )
    return problem


def _propagate_in_place_write(
    layer,
    index: int,
    groups: dict[str, str],
    final: dict[str, tuple[int, bool]],
    input_blobs: set[str],
    current: dict[str, str],
    shapes: dict[str, list[int]],
    batch_led: set[str],
    builder: GraphBuilder,
) -> None:
    """After an in-place write, every other existing blob sharing that memory sees the new values."""
    for top in _in_place_writes(layer):
        new_tensor = current[top]
        for other in list(current):
            if other == top or groups.get(other) != groups[top]:
                continue
            name = (
                other
                if final[other] == (index, False) and other not in input_blobs
                else f"{other}@{layer.name}"
            )
            other_shape = shapes[current[other]]
            if other_shape == shapes[new_tensor]:
                builder.node("Identity", [new_tensor], [name], name=f"{layer.name}/alias:{other}")
            else:
                # Dim 0 is inferred (it carries the batch); a net whose reshapes move the batch elsewhere
                # was already converted with a fixed batch, so the other dims are exact.
                target = builder.constant(f"{layer.name}/alias_shape:{other}", [-1, *other_shape[1:]])
                builder.node("Reshape", [new_tensor, target], [name], name=f"{layer.name}/alias:{other}")
            current[other], shapes[name] = name, list(other_shape)
            if new_tensor in batch_led:
                batch_led.add(name)


def convert_net(net: CaffeNet, params: ParamSource, options: ConvertOptions | None = None) -> ConvertedNet:
    options = options or ConvertOptions()
    converted = _convert(net, params, options, symbolic=options.batch is None)
    if converted is None:
        # A layer baked the batch size in: fall back to the deploy batch.
        deploy_batch = next(iter(net.input_shapes.values()))[0]
        converted = _convert(
            net, params, ConvertOptions(deploy_batch, options.expose, options.expose_all), False
        )
        assert converted is not None
        converted.warnings.append(
            f"{net.source}: a layer reshapes across the batch axis, so the ONNX input keeps the deploy batch "
            f"size {deploy_batch}"
        )
    return converted


def _convert(
    net: CaffeNet, params: ParamSource, options: ConvertOptions, symbolic: bool
) -> ConvertedNet | None:
    groups = alias_groups(net)
    final_events = _final_events(net, groups)
    input_blobs = {top for layer in net.layers if layer.type == "Input" for top in layer.top}
    tensor_names = _tensor_names(net, final_events)
    builder = GraphBuilder(reserved_names=[name for names in tensor_names for name in names])
    current: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    batch_led: set[str] = set()
    inputs: list[tuple[str, list[int]]] = []
    layers: dict[str, LayerRecord] = {}
    unsupported: list[tuple[str, str, str]] = []
    for layer_index, (layer, names) in enumerate(zip(net.layers, tensor_names, strict=True)):
        if layer.type == "Input":
            for top, name in zip(layer.top, names, strict=True):
                overrides = options.input_shapes or {}
                shape = list(overrides.get(top, net.input_shapes[top]))
                if top in overrides:
                    check_blob_shape(shape, f"{net.source}: input '{top}'")
                if options.batch is not None:
                    shape[0] = options.batch
                inputs.append((name, shape))
                current[top], shapes[name] = name, shape
                batch_led.add(name)
            layers[layer.name] = LayerRecord(layer.type, [], list(layer.top), [], [])
            continue
        problem = _static_problem(layer)
        if unsupported and any(bottom not in current for bottom in layer.bottom):
            # Downstream of a refused layer there are no shapes to work with, but type and wiring
            # problems are still reported, so that one error lists them all.
            if problem is not None:
                unsupported.append((layer.name, layer.type, problem))
            for top in layer.top:
                current.pop(top, None)
            continue
        out_shapes: list = []
        if problem is None:
            ctx = LayerContext(
                layer=layer,
                inputs=[current[b] for b in layer.bottom],
                input_shapes=[shapes[current[b]] for b in layer.bottom],
                outputs=list(names),
                graph=builder,
                fetch_params=params,
            )
            try:
                converter_fn = get_converter(layer.type)
                assert converter_fn is not None  # _static_problem vetted the type
                out_shapes = converter_fn(ctx)
            except LayerRefused as refusal:
                problem = str(refusal)
        if problem is not None:
            unsupported.append((layer.name, layer.type, problem))
            for top in layer.top:  # what it would have written is unknown from here on
                current.pop(top, None)
            continue
        if ctx.batch_fixed and symbolic:
            return None
        keeps_batch = ctx.batch_axis_kept and ctx.inputs[0] in batch_led
        for top, name, shape in zip(layer.top, names, out_shapes, strict=True):
            # A computed blob may have no axes (Reduction over all of them): one value.
            check_blob_shape(list(shape) or [1], f"{net.source}: blob '{top}' of layer '{layer.name}'")
            current[top], shapes[name] = name, list(shape)
            if keeps_batch:
                batch_led.add(name)
        _propagate_in_place_write(
            layer, layer_index, groups, final_events, input_blobs, current, shapes, batch_led, builder
        )
        layers[layer.name] = LayerRecord(
            layer.type,
            list(layer.bottom),
            list(layer.top),
            list(ctx.param_names),
            [list(builder.initializers[p].shape) for p in ctx.param_names],
            list(ctx.inputs),
        )
    if unsupported:
        raise refuse_all(unsupported, net.source)
    outputs = [current[blob] for blob in net.outputs]
    extra = list(current) if options.expose_all else options.expose
    for blob in extra:
        if blob not in current:
            close = difflib.get_close_matches(blob, list(current), n=3)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise CaffeFormatError(
                f"{net.source}: --expose {blob}: the net has no blob of that name{hint}; "
                "run 'camcaffe inspect' to list the blobs"
            )
        if current[blob] not in outputs:
            outputs.append(current[blob])
    return ConvertedNet(
        name=net.name,
        builder=builder,
        inputs=inputs,
        outputs=outputs,
        blob_tensors=dict(current),
        tensor_shapes=shapes,
        batch_led=batch_led if symbolic else set(),
        layers=layers,
        symbolic_batch=symbolic,
    )
