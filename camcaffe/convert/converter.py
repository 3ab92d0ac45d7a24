"""Drive the layer converters over a deploy net and collect an ONNX graph description."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from camcaffe.caffe import caffe_pb2
from camcaffe.caffe.net import CaffeNet, check_blob_shape
from camcaffe.convert.graph import GraphBuilder
from camcaffe.convert.registry import LayerContext, LayerRefused, get_converter, refuse_all
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


def _tensor_names(net: CaffeNet) -> list[list[str]]:
    """ONNX name of each top of each layer: the blob name for its last writer, else blob@layer."""
    last_writer: dict[str, int] = {}
    input_blobs = {top for layer in net.layers if layer.type == "Input" for top in layer.top}
    for index, layer in enumerate(net.layers):
        for top in layer.top:
            last_writer[top] = index
    names = []
    for index, layer in enumerate(net.layers):
        if layer.type == "Input":
            names.append(list(layer.top))  # graph inputs keep the blob name, even if rewritten in place
            continue
        names.append(
            [
                top if last_writer[top] == index and top not in input_blobs else f"{top}@{layer.name}"
                for top in layer.top
            ]
        )
    return names


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
    tensor_names = _tensor_names(net)
    builder = GraphBuilder(reserved_names=[name for names in tensor_names for name in names])
    current: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    batch_led: set[str] = set()
    inputs: list[tuple[str, list[int]]] = []
    layers: dict[str, LayerRecord] = {}
    unsupported: list[tuple[str, str, str]] = []
    for layer, names in zip(net.layers, tensor_names, strict=True):
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
        fn = get_converter(layer.type)
        if fn is None:
            unsupported.append((layer.name, layer.type, ""))
            continue
        if unsupported and any(bottom not in current for bottom in layer.bottom):
            continue  # downstream of a refused layer: no shapes to work with
        ctx = LayerContext(
            layer=layer,
            inputs=[current[b] for b in layer.bottom],
            input_shapes=[shapes[current[b]] for b in layer.bottom],
            outputs=list(names),
            graph=builder,
            fetch_params=params,
        )
        if not ctx.inputs:
            unsupported.append((layer.name, layer.type, "it has no bottom"))
            continue
        if not names:
            unsupported.append((layer.name, layer.type, "it has no top"))
            continue
        try:
            out_shapes = fn(ctx)
        except LayerRefused as refusal:
            unsupported.append((layer.name, layer.type, str(refusal)))
            continue
        if ctx.batch_fixed and symbolic:
            return None
        keeps_batch = ctx.batch_axis_kept and ctx.inputs[0] in batch_led
        for top, name, shape in zip(layer.top, names, out_shapes, strict=True):
            check_blob_shape(list(shape), f"{net.source}: blob '{top}' of layer '{layer.name}'")
            current[top], shapes[name] = name, list(shape)
            if keeps_batch:
                batch_led.add(name)
        layers[layer.name] = LayerRecord(
            layer.type,
            list(layer.bottom),
            list(layer.top),
            list(ctx.param_names),
            [list(builder.initializers[p].shape) for p in ctx.param_names],
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
