"""Drive the layer converters over a deploy net and collect an ONNX graph description."""

from __future__ import annotations

import dataclasses
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
from camcaffe.errors import CaffeFormatError, NetRefusedError

ParamSource = Callable[[caffe_pb2.LayerParameter, list[tuple[int, ...]]], list[np.ndarray]]
BATCH_SYMBOL = "batch"


@dataclass
class ConvertOptions:
    batch: int | None = None  # None: symbolic batch dimension
    expose: list[str] = field(default_factory=list)
    expose_all: bool = False
    # Replace declared input shapes (pycaffe's blob.reshape, --input-shape; train/val data tops whose
    # layer does not determine their shape need one); batch still follows `batch`.
    input_shapes: dict[str, list[int]] | None = None


@dataclass
class LayerRecord:
    type: str
    bottoms: list[str]
    tops: list[str]
    params: list[str]
    param_shapes: list[list[int]]
    bottom_tensors: list[str] = field(default_factory=list)  # the ONNX tensors the layer read
    top_tensors: list[str] = field(default_factory=list)  # the ONNX tensors the layer wrote


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


def _tensor_names(net: CaffeNet, final: dict[str, tuple[int, bool]], keys: list[str]) -> list[list[str]]:
    """ONNX name of each top of each layer: the blob name for the write that leaves its final value,
    else blob@layer (layer = its unique key; graph inputs always keep their name)."""
    input_blobs = {top for layer in net.layers if layer.type == "Input" for top in layer.top}
    names = []
    for index, layer in enumerate(net.layers):
        if layer.type == "Input":
            names.append(list(layer.top))
            continue
        names.append(
            [
                top if final[top] == (index, True) and top not in input_blobs else f"{top}@{keys[index]}"
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
    key: str,
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
                other if final[other] == (index, False) and other not in input_blobs else f"{other}@{key}"
            )
            other_shape = shapes[current[other]]
            if other_shape == shapes[new_tensor]:
                builder.node("Identity", [new_tensor], [name], name=f"{key}/alias:{other}")
            else:
                # Dim 0 is inferred (it carries the batch); a net whose reshapes move the batch elsewhere
                # was already converted with a fixed batch, so the other dims are exact.
                target = builder.constant(f"{key}/alias_shape:{other}", [-1, *other_shape[1:]])
                builder.node("Reshape", [new_tensor, target], [name], name=f"{key}/alias:{other}")
            current[other], shapes[name] = name, list(other_shape)
            if new_tensor in batch_led:
                batch_led.add(name)


def convert_net(net: CaffeNet, params: ParamSource, options: ConvertOptions | None = None) -> ConvertedNet:
    options = options or ConvertOptions()
    converted = _convert(net, params, options, symbolic=options.batch is None)
    if converted is None:
        # A layer baked the batch size in: fall back to the deploy batch.
        first_input = next(top for layer in net.layers if layer.type == "Input" for top in layer.top)
        deploy_batch = {**net.input_shapes, **(options.input_shapes or {})}[first_input][0]
        converted = _convert(net, params, dataclasses.replace(options, batch=deploy_batch), False)
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
    keys = net.layer_keys()
    shadowed = net.shadowed()
    tensor_names = _tensor_names(net, final_events, keys)
    builder = GraphBuilder(reserved_names=[name for names in tensor_names for name in names])
    current: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    batch_led: set[str] = set()
    inputs: list[tuple[str, list[int]]] = []
    layers: dict[str, LayerRecord] = {}
    unsupported: list[tuple[str, str, str]] = []
    for layer_index, (layer, names) in enumerate(zip(net.layers, tensor_names, strict=True)):
        key = keys[layer_index]
        if layer.type == "Input":
            for top, name in zip(layer.top, names, strict=True):
                overrides = options.input_shapes or {}
                if top not in overrides and top not in net.input_shapes:
                    if layer.name in net.data_layers:  # (an Input layer's bad shape is in net.problems)
                        hint = net.shape_hints.get(top, "N,C,H,W")
                        unsupported.append((layer.name, net.data_layers[layer.name], _no_shape(top, hint)))
                    continue
                shape = list(overrides[top] if top in overrides else net.input_shapes[top])
                if top in overrides:
                    check_blob_shape(shape, f"{net.source}: input '{top}'")
                if options.batch is not None:
                    shape[0] = options.batch
                inputs.append((name, shape))
                current[top], shapes[name] = name, shape
                batch_led.add(name)
            layers[key] = LayerRecord(layer.type, [], list(layer.top), [], [], [], list(names))
            continue
        problem = _static_problem(layer)
        if any(bottom not in current for bottom in layer.bottom):
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
                fetch_params=_filler_params if shadowed[layer_index] else params,
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
            layer, key, layer_index, groups, final_events, input_blobs, current, shapes, batch_led, builder
        )
        layers[key] = LayerRecord(
            layer.type,
            list(layer.bottom),
            list(layer.top),
            list(ctx.param_names),
            [list(builder.initializers[p].shape) for p in ctx.param_names],
            list(ctx.inputs),
            list(names),
        )
    if net.problems:
        raise _refuse_net(net.problems, unsupported, net.source)
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


def _no_shape(top: str, hint: str) -> str:
    return (
        f"data layer whose parameters do not determine the shape of its top '{top}'; "
        f"give it with --input-shape {top}={hint}"
    )


def _refuse_net(problems: list[str], unsupported: list[tuple[str, str, str]], source: str) -> NetRefusedError:
    """One error with the prototxt's field and wiring problems and every layer the converter refused."""
    listed = list(problems)
    if unsupported:
        listed.append(str(refuse_all(unsupported, source)).removeprefix(f"{source}: "))
    return NetRefusedError(
        f"{source}: {len(problems) + len(unsupported)} problem(s): {'; '.join(listed)}",
        layers=[(name, type_name) for name, type_name, _ in unsupported],
    )


# Fillers Caffe gives a layer's blobs when no caffemodel layer is copied into it: (param field, filler
# fields in blob order; None = the layer sets that blob itself), with the value used when unset.
_FILLERS: dict[str, tuple[str, list[tuple[str | None, float]]]] = {
    "Convolution": ("convolution_param", [("weight_filler", 0.0), ("bias_filler", 0.0)]),
    "Deconvolution": ("convolution_param", [("weight_filler", 0.0), ("bias_filler", 0.0)]),
    "InnerProduct": ("inner_product_param", [("weight_filler", 0.0), ("bias_filler", 0.0)]),
    "Scale": ("scale_param", [("filler", 1.0), ("bias_filler", 0.0)]),
    "Bias": ("bias_param", [("filler", 0.0)]),
    "PReLU": ("prelu_param", [("filler", 0.25)]),
    "BatchNorm": ("batch_norm_param", [(None, 0.0), (None, 0.0), (None, 0.0)]),
}


def _filler_params(layer, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Blobs of a layer whose name an earlier layer already has: Caffe's Net::CopyTrainedLayersFrom
    copies every caffemodel layer into the FIRST layer of that name, so this one keeps the values its
    fillers gave it. Only constant fillers are reproducible."""
    if not expected:
        return []
    param_field, fillers = _FILLERS.get(layer.type, ("", []))
    values = []
    for index, shape in enumerate(expected):
        filler_field, unset_value = fillers[index] if index < len(fillers) else ("?", 0.0)
        if filler_field == "?":
            raise LayerRefused(_shadow_reason(layer, "its blobs' initial values are not known to camcaffe"))
        value = unset_value
        if filler_field is not None:
            owner = getattr(layer, param_field)
            if owner.HasField(filler_field):
                filler = getattr(owner, filler_field)
                if filler.type != "constant":
                    raise LayerRefused(_shadow_reason(layer, f"its {filler_field} is '{filler.type}' (random)"))
                value = filler.value
        values.append(np.full(shape, value, dtype=np.float32))
    return values


def _shadow_reason(layer, why: str) -> str:
    return (
        f"an earlier layer is also named '{layer.name}': Caffe copies caffemodel weights into the first layer "
        f"of a name only, so this one keeps its filler values, and {why}; rename the layer in the prototxt "
        "and the caffemodel"
    )
