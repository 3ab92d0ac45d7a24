"""The deploy net as camcaffe works with it: V2 layers only, TEST phase applied, inputs as an
explicit Input layer (train/val data layers too, their loss layers dropped), connectivity checked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from camcaffe.caffe import caffe_pb2
from camcaffe.caffe.prototxt import parse_prototxt, read_prototxt_text
from camcaffe.caffe.trainval import strip_training
from camcaffe.caffe.v1types import V1_TYPE_NAMES
from camcaffe.errors import CaffeFormatError, LimitError, NetRefusedError
from camcaffe.limits import MAX_BLOB_ELEMENTS, limit

# V1 layer fields that carry over to LayerParameter under the same name.
_V1_PARAM_FIELDS = (
    "accuracy_param", "argmax_param", "concat_param", "convolution_param", "dropout_param",
    "eltwise_param", "exp_param", "inner_product_param", "lrn_param", "memory_data_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param", "slice_param",
    "tanh_param", "threshold_param", "transform_param", "loss_param", "data_param", "dummy_data_param",
    "hdf5_data_param", "image_data_param", "window_data_param",
)  # fmt: skip


@dataclass
class CaffeNet:
    """A deploy net ready to convert. `layers` are V2 LayerParameters in execution order; the
    first ones are Input layers. `input_shapes` maps each input blob to its declared shape (a
    train/val data top whose shape its layer does not determine has none). Layer names may repeat,
    as Caffe allows; `layer_keys()` gives each layer a unique key."""

    name: str
    layers: list[caffe_pb2.LayerParameter]
    input_shapes: dict[str, list[int]]
    source: str
    v1: bool = False
    outputs: list[str] = field(default_factory=list)
    # Unknown fields and wiring problems, kept for one error that lists them with every other problem.
    problems: list[str] = field(default_factory=list)
    data_layers: dict[str, str] = field(default_factory=dict)  # train/val data layer -> its type
    dropped: list[tuple[str, str]] = field(default_factory=list)  # loss/accuracy/label layers dropped
    dropped_tops: list[str] = field(default_factory=list)  # label tops of data layers dropped
    shape_hints: dict[str, str] = field(default_factory=dict)  # unshaped data top -> 'N,C,H,W' as known

    def layer(self, name: str) -> caffe_pb2.LayerParameter:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def layer_keys(self) -> list[str]:
        """Per layer, its name; a repeated name gets '#2', '#3', ... (Caffe accepts repeated names)."""
        taken = {layer.name for layer in self.layers}
        seen: dict[str, int] = {}
        keys = []
        for layer in self.layers:
            count = seen.get(layer.name, 0) + 1
            seen[layer.name] = count
            key = layer.name
            while count > 1 and (key == layer.name or key in taken):
                key = f"{layer.name}#{count}"
                count += 1
            taken.add(key)
            keys.append(key)
        return keys

    def shadowed(self) -> list[bool]:
        """Per layer, whether an earlier layer has its name: Caffe's CopyTrainedLayersFrom copies a
        caffemodel layer's blobs into the FIRST layer of that name only, so these keep their fillers."""
        seen: set[str] = set()
        flags = []
        for layer in self.layers:
            flags.append(layer.name in seen)
            seen.add(layer.name)
        return flags

    def writers(self) -> dict[str, list[str]]:
        """Blob name -> names of the layers that write it, in execution order."""
        result: dict[str, list[str]] = {}
        for layer in self.layers:
            for top in layer.top:
                result.setdefault(top, []).append(layer.name)
        return result


def load_net(path: str | os.PathLike, is_supported_type=lambda _t: True, collect: bool = False) -> CaffeNet:
    """Read a prototxt. Unknown fields and wiring problems are raised together in one error, with the
    layers of unsupported types; with `collect` they stay in `net.problems` for the converter to list
    with its own refusals."""
    text = read_prototxt_text(path)
    problems: list[str] = []
    param = parse_prototxt(text, str(path), is_supported_type, problems)
    net = net_from_param(param, str(path), problems)
    if not collect:
        raise_problems(net, is_supported_type)
    return net


def raise_problems(net: CaffeNet, is_supported_type=lambda _t: True) -> None:
    if not net.problems:
        return
    unsupported = [layer for layer in net.layers if layer.type != "Input" and not is_supported_type(layer.type)]
    listed = list(net.problems) + [f"layer '{layer.name}' has unsupported type {layer.type}" for layer in unsupported]
    raise NetRefusedError(
        f"{net.source}: {len(listed)} problem(s): {'; '.join(listed)}",
        layers=[(layer.name, layer.type) for layer in unsupported],
    )


def net_from_param(param: caffe_pb2.NetParameter, source: str, problems: list[str] | None = None) -> CaffeNet:
    """With `problems` given, wiring problems are appended to it (and kept in net.problems); without,
    they are raised together."""
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
    strip = strip_training(layers)
    input_layers, input_shapes = _input_layers(param, strip.layers, source)
    layers = input_layers + strip.layers
    if not layers or all(layer.type == "Input" for layer in layers):
        raise CaffeFormatError(f"{source}: the net has no layers; is this a deploy prototxt?")
    found = list(problems) if problems is not None else []
    for layer in layers:
        if layer.type == "Input" and layer.name not in strip.data_layers:
            try:
                shapes = _input_layer_shapes(layer, source)
            except LimitError:
                raise
            except CaffeFormatError as exc:  # listed with the net's other problems
                found.append(str(exc).removeprefix(f"{source}: "))
                continue
            for top, shape in zip(layer.top, shapes, strict=True):
                input_shapes[top] = shape
    for top, shape in strip.input_shapes.items():
        check_blob_shape(shape, f"{source}: top '{top}' of a data layer")
        input_shapes[top] = shape
    net = CaffeNet(
        name=param.name or Path(source).stem,
        layers=layers,
        input_shapes=input_shapes,
        source=source,
        v1=v1,
        data_layers=strip.data_layers,
        dropped=strip.dropped,
        dropped_tops=strip.dropped_tops,
        shape_hints=strip.shape_hints,
    )
    net.outputs = validate_connectivity(net, found)
    net.problems = found
    if problems is None:
        raise_problems(net)
    else:
        problems[:] = found
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


def validate_connectivity(net: CaffeNet, problems: list[str] | None = None) -> list[str]:
    """Check names and wiring as Caffe's Net::Init does (repeated layer names are allowed, as there);
    return the net's output blobs. Problems are appended to `problems`, or raised together."""
    found: list[str] = []
    available: dict[str, None] = {}
    produced: set[str] = set()
    for index, layer in enumerate(net.layers):
        where = f"layer '{layer.name}' ({layer.type})"
        if not layer.name:
            found.append(f"layer #{index} ({layer.type}) has no name; give it one")
        if not layer.type:
            found.append(f"layer '{layer.name}' has no type; add type: \"...\"")
        for bottom in layer.bottom:
            if bottom not in produced:
                found.append(f"{where} reads blob '{bottom}' that no earlier layer produces; check its bottom names")
            available.pop(bottom, None)
        for top_index, top in enumerate(layer.top):
            in_place = top_index < len(layer.bottom) and layer.bottom[top_index] == top
            if top in layer.top[:top_index]:
                found.append(f"{where} lists top '{top}' twice")
            elif top in produced and not in_place:
                found.append(
                    f"{where} writes blob '{top}', which an earlier layer already produced; an in-place "
                    "layer must name it as the bottom at the same position"
                )
            produced.add(top)
            available[top] = None
    if problems is not None:
        problems.extend(found)
    elif found:
        raise CaffeFormatError(f"{net.source}: {'; '.join(found)}")
    return list(available)
