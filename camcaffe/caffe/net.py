"""The deploy net as camcaffe works with it: V2 layers only, TEST phase applied, inputs as an
explicit Input layer, connectivity checked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from camcaffe.caffe import caffe_pb2
from camcaffe.caffe.prototxt import parse_prototxt, read_prototxt_text
from camcaffe.caffe.v1types import V1_TYPE_NAMES
from camcaffe.errors import CaffeFormatError, LimitError
from camcaffe.limits import MAX_BLOB_ELEMENTS, limit

# V1 layer fields that carry over to LayerParameter under the same name.
_V1_PARAM_FIELDS = (
    "accuracy_param", "argmax_param", "concat_param", "convolution_param", "dropout_param",
    "eltwise_param", "exp_param", "inner_product_param", "lrn_param", "memory_data_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param", "slice_param",
    "tanh_param", "threshold_param", "transform_param", "loss_param",
)  # fmt: skip


@dataclass
class CaffeNet:
    """A deploy net ready to convert. `layers` are V2 LayerParameters in execution order; the
    first ones are Input layers. `input_shapes` maps each input blob to its declared shape."""

    name: str
    layers: list[caffe_pb2.LayerParameter]
    input_shapes: dict[str, list[int]]
    source: str
    v1: bool = False
    outputs: list[str] = field(default_factory=list)

    def layer(self, name: str) -> caffe_pb2.LayerParameter:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def writers(self) -> dict[str, list[str]]:
        """Blob name -> names of the layers that write it, in execution order."""
        result: dict[str, list[str]] = {}
        for layer in self.layers:
            for top in layer.top:
                result.setdefault(top, []).append(layer.name)
        return result


def load_net(path: str | os.PathLike, is_supported_type=lambda _t: True) -> CaffeNet:
    text = read_prototxt_text(path)
    param = parse_prototxt(text, str(path), is_supported_type)
    return net_from_param(param, str(path))


def net_from_param(param: caffe_pb2.NetParameter, source: str) -> CaffeNet:
    if param.layer and param.layers:
        raise CaffeFormatError(
            f"{source}: mixes V2 'layer' and V1 'layers' blocks; use one format throughout"
        )
    v1 = bool(param.layers)
    layers = (
        [upgrade_v1_layer(layer) for layer in param.layers] if v1 else [_copy(lay) for lay in param.layer]
    )
    stages = set(param.state.stage)
    layers = [layer for layer in layers if _included(layer, stages)]
    input_layers, input_shapes = _input_layers(param, layers, source)
    layers = input_layers + layers
    if not layers or all(layer.type == "Input" for layer in layers):
        raise CaffeFormatError(f"{source}: the net has no layers; is this a deploy prototxt?")
    for layer in layers:
        if layer.type == "Input":
            shapes = _input_layer_shapes(layer, source)
            for top, shape in zip(layer.top, shapes, strict=True):
                input_shapes[top] = shape
    net = CaffeNet(
        name=param.name or Path(source).stem, layers=layers, input_shapes=input_shapes, source=source, v1=v1
    )
    net.outputs = validate_connectivity(net)
    return net


def _copy(layer: caffe_pb2.LayerParameter) -> caffe_pb2.LayerParameter:
    copy = caffe_pb2.LayerParameter()
    copy.CopyFrom(layer)
    return copy


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    layer = caffe_pb2.LayerParameter()
    layer.name = v1.name
    layer.type = V1_TYPE_NAMES.get(v1.type, f"V1:{v1.type}")
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.blobs.extend(v1.blobs)
    for name in _V1_PARAM_FIELDS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    return layer


def _rule_matches(rule: caffe_pb2.NetStateRule, stages: set[str], level: int = 0) -> bool:
    if rule.HasField("phase") and rule.phase != caffe_pb2.TEST:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def _included(layer: caffe_pb2.LayerParameter, stages: set[str]) -> bool:
    if layer.include:
        return any(_rule_matches(rule, stages) for rule in layer.include)
    if layer.exclude:
        return not any(_rule_matches(rule, stages) for rule in layer.exclude)
    return True


def _input_layers(
    param: caffe_pb2.NetParameter, layers: list[caffe_pb2.LayerParameter], source: str
) -> tuple[list[caffe_pb2.LayerParameter], dict[str, list[int]]]:
    """Turn the deprecated `input:` + `input_dim:`/`input_shape` forms into an Input layer."""
    if not param.input:
        if param.input_dim or param.input_shape:
            raise CaffeFormatError(f"{source}: input_dim/input_shape given without an 'input:' blob name")
        return [], {}
    names = list(param.input)
    if param.input_shape:
        if len(param.input_shape) != len(names):
            raise CaffeFormatError(
                f"{source}: {len(names)} input blob(s) but {len(param.input_shape)} input_shape entries"
            )
        shapes = [list(shape.dim) for shape in param.input_shape]
    elif param.input_dim:
        if len(param.input_dim) != 4 * len(names):
            raise CaffeFormatError(
                f"{source}: input_dim has {len(param.input_dim)} values; Caffe needs exactly 4 "
                f"(num, channels, height, width) per input blob ({len(names)} inputs)"
            )
        dims = list(param.input_dim)
        shapes = [dims[4 * i : 4 * i + 4] for i in range(len(names))]
    else:
        raise CaffeFormatError(
            f"{source}: input blob(s) {', '.join(names)} have no shape; add input_shape {{ dim: ... }}"
        )
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(names)
    for shape in shapes:
        layer.input_param.shape.add().dim.extend(shape)
    return [layer], {}


def _input_layer_shapes(layer: caffe_pb2.LayerParameter, source: str) -> list[list[int]]:
    shapes = [list(shape.dim) for shape in layer.input_param.shape]
    if not shapes:
        raise CaffeFormatError(
            f"{source}: Input layer '{layer.name}' declares no shape; add input_param {{ shape {{ dim: ... }} }}"
        )
    if len(shapes) == 1:
        shapes = shapes * len(layer.top)
    if len(shapes) != len(layer.top):
        raise CaffeFormatError(
            f"{source}: Input layer '{layer.name}' has {len(layer.top)} tops but {len(shapes)} shapes"
        )
    for top, shape in zip(layer.top, shapes, strict=True):
        check_blob_shape(shape, f"{source}: input '{top}'")
    return shapes


def check_blob_shape(shape: list[int], what: str) -> None:
    if not shape:
        raise CaffeFormatError(f"{what} has an empty shape; give its dimensions")
    if any(dim <= 0 for dim in shape):
        raise CaffeFormatError(f"{what} has shape {tuple(shape)}; every dimension must be a positive integer")
    count = 1
    for dim in shape:
        count *= dim
    max_elements = limit(MAX_BLOB_ELEMENTS)
    if count > max_elements:
        raise LimitError(
            f"{what} would have shape {'x'.join(map(str, shape))} = {count} elements, over the limit of "
            f"{max_elements} (set CAMCAFFE_MAX_BLOB_ELEMENTS to raise it)"
        )


def validate_connectivity(net: CaffeNet) -> list[str]:
    """Check names and wiring as Caffe's Net::Init does; return the net's output blobs."""
    seen_layers: dict[str, str] = {}
    available: dict[str, None] = {}
    produced: set[str] = set()
    for index, layer in enumerate(net.layers):
        where = f"{net.source}: layer '{layer.name}' ({layer.type})"
        if not layer.name:
            raise CaffeFormatError(f"{net.source}: layer #{index} ({layer.type}) has no name; give it one")
        if not layer.type:
            raise CaffeFormatError(f"{net.source}: layer '{layer.name}' has no type; add type: \"...\"")
        if layer.name in seen_layers:
            raise CaffeFormatError(
                f"{net.source}: two layers are named '{layer.name}'; layer names must be unique "
                "(weights are matched by name)"
            )
        seen_layers[layer.name] = layer.type
        for bottom in layer.bottom:
            if bottom not in produced:
                raise CaffeFormatError(
                    f"{where} reads blob '{bottom}' that no earlier layer produces; check its bottom names"
                )
            available.pop(bottom, None)
        for top_index, top in enumerate(layer.top):
            in_place = top_index < len(layer.bottom) and layer.bottom[top_index] == top
            if top in layer.top[:top_index]:
                raise CaffeFormatError(f"{where} lists top '{top}' twice")
            if top in produced and not in_place:
                raise CaffeFormatError(
                    f"{where} writes blob '{top}', which an earlier layer already produced; an in-place "
                    "layer must name it as the bottom at the same position"
                )
            produced.add(top)
            available[top] = None
    return list(available)
