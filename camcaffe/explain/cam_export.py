"""Class Activation Maps inside the ONNX graph: a classifier gets extra outputs that any onnxruntime (C++,
C#, Java, mobile, web) can read without Python.

Per image, from the CAM head (`cam_head.CamHead`) the model already has:

* ``cam_top_classes`` int64 [N, K] and ``cam_top_probabilities`` float [N, K]: TopK on the probabilities
  (largest first; equal scores: the lower class index first, as `explain.cam.top_k`);
* ``cam_maps`` float [N, K, h, w]: the raw maps of those classes, W[c] . F (`explain.cam.compute_cams`): a
  Gather of the classifier rows and a MatMul over the feature channels; for a class-conv head (SqueezeNet)
  a GatherElements of the class channels. A channels-last feature map (Keras, tf2onnx: N, h, w, C, pooled by
  ReduceMean over axes 1, 2) gives the same N, K, h, w maps (the product is transposed, not the feature map),
  as the pipeline's `methods.base.from_layout`; a feature map of another float type is cast to float32 first,
  as `compute_cams` reads it;
* ``cam_maps_resized`` float [N, K, H, W] (unless resize is off): bilinear Resize to the H x W the image input
  has at run time (its dims 2, 3, or 1, 2 for a channels-last input), then each map min-max normalised to
  [0, 1] (a constant map becomes zeros) as `explain.cam.normalize`.

With ``class_input``, the int64 input ``cam_class`` [N or 1, M] asks for given classes: outputs
``cam_class_probabilities`` [N, M], ``cam_class_maps`` [N, M, h, w] and ``cam_class_maps_resized``
[N, M, H, W]. It defaults to [[0]] (class 0 for every image) when not fed. The record of all this sits in the
metadata key ``camcaffe.cam_outputs`` (`record_of` reads it back).

The nodes take the form the model's own default-domain opset defines (11 to 28): ReduceMean/Min/Max read
their axes from an input from opset 18 on and from an attribute before, Unsqueeze from an input from 13 on,
and Resize needs its roi and scales inputs (given empty) before 13; every other op written here has one form
over that range (onnx's operator changelog up to opset 28). Other opsets are refused in one line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from camcaffe.atomic import write_atomic
from camcaffe.errors import CamcaffeError, CamHeadError, InputFileError
from camcaffe.explain.cam_head import EXPORTED_CAM_KEY, EXPORTED_CAM_PREFIX, CamHead

if TYPE_CHECKING:
    import onnx

METADATA_KEY = EXPORTED_CAM_KEY  # "camcaffe.cam_outputs"
FORMAT_VERSION = 2  # 2: records the layouts; a version-1 record is of a channels-first feature map
MIN_OPSET, MAX_OPSET = 11, 28  # default-domain opsets whose forms of the ops written here are known
TOP_CLASSES = "cam_top_classes"
TOP_PROBABILITIES = "cam_top_probabilities"
MAPS = "cam_maps"
MAPS_RESIZED = "cam_maps_resized"
PROBABILITIES = "cam_probabilities"  # only for a model without a Softmax: the softmax of its class scores
CLASS_INPUT = "cam_class"
CLASS_PROBABILITIES = "cam_class_probabilities"
CLASS_MAPS = "cam_class_maps"
CLASS_MAPS_RESIZED = "cam_class_maps_resized"
_INT64 = 7
_FLOAT = 1
_SMALL_BYTES = 4096  # initializers up to this size stay inline in a model with external data
_EXTERNAL_ABOVE = 1_900_000_000  # protobuf messages stop at 2 GiB: weights go to OUT.onnx.data above this


@dataclass(frozen=True)
class CamOutputs:
    """What a `--with-cam` model declares in `camcaffe.cam_outputs`."""

    top_k: int
    kind: str
    num_classes: int
    feature_tensor: str
    probabilities: str  # the tensor TopK reads: the model's probabilities, else the softmax added here
    logits: str | None  # without a Softmax in the model: the class scores that softmax reads
    top_classes: str
    top_probabilities: str
    maps: str
    maps_resized: str | None
    class_input: str | None
    class_probabilities: str | None
    class_maps: str | None
    class_maps_resized: str | None
    feature_layout: str = "nchw"  # the feature map's layout in the model ('nhwc': channels-last)
    input_layout: str = "nchw"  # the image input's layout, which the resized maps take H x W from

    def to_json(self) -> str:
        return json.dumps({"version": FORMAT_VERSION, **self.__dict__})


def record_of(metadata: dict[str, str], outputs: set[str], inputs: set[str]) -> CamOutputs | None:
    """The CAM outputs a model's metadata records, when every named output (and the class input) is really in
    the graph; None otherwise (then the model is used as a plain classifier)."""
    text = metadata.get(METADATA_KEY)
    if not text:
        return None
    try:
        data = json.loads(text)
        data.pop("version", None)
        record = CamOutputs(**data)
    except (ValueError, TypeError):
        return None
    named = [record.top_classes, record.top_probabilities, record.maps, record.maps_resized]
    if record.class_input is not None:
        named += [record.class_probabilities, record.class_maps, record.class_maps_resized]
        if record.class_input not in inputs:
            return None
    if any(name is not None and name not in outputs for name in named):
        return None
    return record


class _Builder:
    """Nodes and initializers appended under the `cam/` prefix."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: set[str] = set()

    def const(self, name: str, values: np.ndarray) -> str:
        from onnx import numpy_helper

        if f"cam/{name}" not in self._constants:
            self._constants.add(f"cam/{name}")
            self.initializers.append(numpy_helper.from_array(np.asarray(values), f"cam/{name}"))
        return f"cam/{name}"

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        self._count += 1
        out = output or f"{EXPORTED_CAM_PREFIX}{op_type.lower()}_{self._count}"
        name = f"{EXPORTED_CAM_PREFIX}{op_type}_{self._count}"  # the prefix keeps them out of head detection
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def dims(self, tensor: str, start: int, end: int) -> str:
        shape = self.op("Shape", [tensor])
        return self.op(
            "Slice",
            [shape, self.const(f"s{start}", _ints([start])), self.const(f"e{end}", _ints([end]))],
        )

    def axes(self, axes: list[int]) -> str:
        return self.const("axes_" + "_".join(map(str, axes)), _ints(axes))

    def reduce(self, op_type: str, data: str, axes: list[int], keepdims: int) -> str:
        """ReduceMean/Min/Max over `axes`: the axes are an input from opset 18 on, an attribute before."""
        if self.opset >= 18:
            return self.op(op_type, [data, self.axes(axes)], keepdims=keepdims)
        return self.op(op_type, [data], axes=axes, keepdims=keepdims)

    def unsqueeze(self, data: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [data, self.axes(axes)])
        return self.op("Unsqueeze", [data], axes=axes)

    def resize(self, data: str, sizes: str) -> str:
        """Bilinear (half-pixel) resize to `sizes`; before opset 13 roi and scales must be given, empty."""
        if self.opset >= 13:
            inputs = [data, "", "", sizes]
        else:
            empty = self.const("empty_float", np.zeros(0, np.float32))
            inputs = [data, empty, empty, sizes]
        return self.op("Resize", inputs, mode="linear", coordinate_transformation_mode="half_pixel")


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, np.int64)


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain ('' or 'ai.onnx') opset version, None when it imports none."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def check_opset(model: onnx.ModelProto, source: str) -> int:
    """The model's default-domain opset when export-cam knows how to write its ops for it; else a one-line
    refusal."""
    opset = default_opset(model)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        shown = "no default-domain opset" if opset is None else f"default-domain opset {opset}"
        raise CamcaffeError(
            f"{source}: {shown}; in-graph CAM outputs are written for opsets {MIN_OPSET} to {MAX_OPSET}: convert "
            "the model first (onnx.version_converter.convert_version(model, 17))"
        )
    return opset


def _reuse_or_add(builder: _Builder, model: onnx.ModelProto, head: CamHead) -> str:
    """The (K, C) classifier matrix: the model's own initializer when it holds exactly head.weights, else a copy."""
    from onnx import numpy_helper

    node = next((n for n in model.graph.node if n.name == head.fc_node), None)
    inits = {t.name: t for t in model.graph.initializer}
    if node is not None and len(node.input) > 1 and node.input[1] in inits:
        tensor = inits[node.input[1]]
        if tensor.data_location != 1 and tuple(tensor.dims) == head.weights.shape:
            array = numpy_helper.to_array(tensor)
            if array.dtype == np.float32 and np.array_equal(array, head.weights):
                return tensor.name
    return builder.const("classifier_weights", head.weights.astype(np.float32))


def _as_float(builder: _Builder, tensor: str, types: dict[str, int]) -> str:
    """tensor as float32: cast when its known element type is another one (the pipeline reads float32)."""
    elem = types.get(tensor)
    return tensor if elem in (None, 0, _FLOAT) else builder.op("Cast", [tensor], to=_FLOAT)  # 0: unknown


def _spatial(head: CamHead) -> tuple[int, int]:
    """The (h, w) axes of the head's feature map: (1, 2) channels-last, else (2, 3)."""
    return (1, 2) if head.layout == "nhwc" else (2, 3)


def _probabilities(
    builder: _Builder, model: onnx.ModelProto, head: CamHead, feature: str, types: dict[str, int]
) -> str:
    """[N, K] probabilities: the model's Softmax output, else a softmax of the head's logits (as the pipeline
    computes them without one: the pooled features times the classifier, or the pooled class maps)."""
    if head.prob_output:
        return builder.op(
            "Flatten", [_as_float(builder, head.prob_output, types)], "cam/probabilities", axis=1
        )
    if head.logits:
        logits = builder.op("Flatten", [_as_float(builder, head.logits, types)], axis=1)
        return builder.op("Softmax", [logits], PROBABILITIES, axis=1)
    pooled = builder.reduce("ReduceMean", feature, list(_spatial(head)), keepdims=0)
    if head.kind == "class_conv":
        logits = pooled
    else:
        weights = _reuse_or_add(builder, model, head)
        inputs = [pooled, weights] + (
            [builder.const("classifier_bias", head.bias)] if head.bias is not None else []
        )
        logits = builder.op("Gemm", inputs, transB=1)
    return builder.op("Softmax", [logits], PROBABILITIES, axis=1)


def _maps(
    builder: _Builder, head: CamHead, feature: str, weights: str | None, classes: str, output: str
) -> str:
    """[N, k, h, w] raw maps of the classes [N or 1, k] from the float32 `feature`. A channels-last feature
    map (N, h, w, C) is read as it is and the small product transposed: with a Transpose of the feature map
    itself onnxruntime optimised the model's own channels-last pooling differently (measured on a Keras export:
    the model's probabilities moved in their last bits, so results.csv differed from the plain model's)."""
    nhwc = head.layout == "nhwc"
    first = _spatial(head)[0]
    hw = builder.dims(feature, first, first + 2)
    if head.kind == "class_conv":
        channel = 3 if nhwc else 1
        parts = [builder.dims(feature, 0, 1), hw, builder.dims(classes, 1, 2)]
        target = builder.op("Concat", parts if nhwc else [parts[0], parts[2], parts[1]], axis=0)
        index = builder.unsqueeze(classes, [1, 2] if nhwc else [2, 3])
        picked = builder.op("Expand", [index, target])
        if not nhwc:
            return builder.op("GatherElements", [feature, picked], output, axis=channel)
        gathered = builder.op("GatherElements", [feature, picked], axis=channel)  # [N, h, w, k]
        return builder.op("Transpose", [gathered], output, perm=[0, 3, 1, 2])
    assert weights is not None
    rows = builder.op("Gather", [weights, classes], axis=0)  # [N, k, C]
    keep2 = builder.const("keep2", _ints([0, 0]))
    if nhwc:
        channels = int(head.weights.shape[1])
        flat = builder.op("Reshape", [feature, builder.const("flat_hw_c", _ints([0, -1, channels]))])
        columns = builder.op("Transpose", [rows], perm=[0, 2, 1])  # [N, C, k]
        product = builder.op("MatMul", [flat, columns])  # [N, hw, k]
        product = builder.op("Transpose", [product], perm=[0, 2, 1])  # [N, k, hw]
    else:
        flat = builder.op("Reshape", [feature, builder.const("flat_shape", _ints([0, 0, -1]))])  # [N, C, hw]
        product = builder.op("MatMul", [rows, flat])  # [N, k, hw]
    shape = builder.op("Concat", [keep2, hw], axis=0)
    return builder.op("Reshape", [product, shape], output)


def _resized(builder: _Builder, maps: str, image: str, image_layout: str, output: str) -> str:
    """Bilinear resize to the image input's run-time H x W, then per-map min-max to [0, 1] (constant map -> 0)."""
    hw = builder.dims(image, 1, 3) if image_layout == "nhwc" else builder.dims(image, 2, 4)
    sizes = builder.op("Concat", [builder.dims(maps, 0, 2), hw], axis=0)
    resized = builder.resize(maps, sizes)
    low = builder.reduce("ReduceMin", resized, [2, 3], keepdims=1)
    high = builder.reduce("ReduceMax", resized, [2, 3], keepdims=1)
    span = builder.op("Sub", [high, low])
    varies = builder.op("Greater", [span, builder.const("zero", np.array(0, np.float32))])
    safe = builder.op("Where", [varies, span, builder.const("one", np.array(1, np.float32))])
    scaled = builder.op("Div", [builder.op("Sub", [resized, low]), safe])
    return builder.op("Where", [varies, scaled, builder.const("zero", np.array(0, np.float32))], output)


def _gathered_probabilities(builder: _Builder, probabilities: str, classes: str, output: str) -> str:
    target = builder.op("Concat", [builder.dims(probabilities, 0, 1), builder.dims(classes, 1, 2)], axis=0)
    return builder.op(
        "GatherElements", [probabilities, builder.op("Expand", [classes, target])], output, axis=1
    )


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The graph's declared and inferred tensor types and shapes (inference on the model without its large
    weights; what was declared when inference fails)."""
    import onnx

    from camcaffe.explain.cam_head import _without_large_constants

    try:
        inferred = onnx.shape_inference.infer_shapes(
            _without_large_constants(model), check_type=False, strict_mode=False
        )
    except Exception:  # noqa: BLE001 - inference is a help here, the declared types remain
        inferred = model
    found: dict[str, onnx.ValueInfoProto] = {}
    for graph in (inferred.graph, model.graph):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            found.setdefault(value.name, value)
    return found


def _dims(value: onnx.ValueInfoProto | None) -> list[int | str | None] | None:
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value.type.tensor_type.shape.dim
    ]


def image_input(model: onnx.ModelProto) -> str:
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    if not names:
        raise CamcaffeError("the model has no input; export-cam needs the image input of a classifier")
    return names[0]


def add_cam_outputs(
    model: onnx.ModelProto,
    head: CamHead,
    top_k: int,
    class_input: bool = False,
    resize: bool = True,
    layout: str | None = None,
    source: str = "the model",
) -> onnx.ModelProto:
    """A copy of `model` with the CAM outputs of `head` (see the module doc) and their metadata record.
    `layout` is the image input's ('nchw' or 'nhwc', as `camcaffe cam --layout`; default: from its dims as
    `camcaffe cam` guesses it)."""
    import onnx
    from onnx import helper

    from camcaffe.explain.methods.base import input_layout

    opset = check_opset(model, source)
    if any(p.key == METADATA_KEY for p in model.metadata_props):
        raise CamcaffeError(
            "the model already has CAM outputs (camcaffe.cam_outputs); export from the plain model"
        )
    if not 1 <= top_k <= head.num_classes:
        raise CamcaffeError(
            f"--top-k {top_k} must lie between 1 and the classifier's {head.num_classes} classes"
        )
    taken = {o for n in model.graph.node for o in n.output} | {v.name for v in model.graph.input}
    ours = {
        TOP_CLASSES,
        TOP_PROBABILITIES,
        MAPS,
        MAPS_RESIZED,
        PROBABILITIES,
        CLASS_INPUT,
        CLASS_PROBABILITIES,
        CLASS_MAPS,
        CLASS_MAPS_RESIZED,
    }
    clash = sorted(taken & ours)
    if clash:
        raise CamcaffeError(
            f"the model already has tensors named {', '.join(clash)}; rename them before export-cam"
        )
    image = image_input(model)
    values = _value_infos(model)
    types = {name: value.type.tensor_type.elem_type for name, value in values.items()}
    image_dims = _dims(values.get(image)) or [None, None, None, None]
    image_layout = input_layout(image_dims, layout)
    builder = _Builder(opset)
    feature = _as_float(builder, head.feature_blob, types)
    weights = _reuse_or_add(builder, model, head) if head.kind == "gap_linear" else None
    probabilities = _probabilities(builder, model, head, feature, types)
    builder.op("TopK", [probabilities, builder.const("k", _ints([top_k]))], axis=1, largest=1, sorted=1)
    topk = builder.nodes[-1]
    topk.output[:] = [TOP_PROBABILITIES, TOP_CLASSES]
    _maps(builder, head, feature, weights, TOP_CLASSES, MAPS)
    if resize:
        _resized(builder, MAPS, image, image_layout, MAPS_RESIZED)
    if class_input:
        _gathered_probabilities(builder, probabilities, CLASS_INPUT, CLASS_PROBABILITIES)
        _maps(builder, head, feature, weights, CLASS_INPUT, CLASS_MAPS)
        if resize:
            _resized(builder, CLASS_MAPS, image, image_layout, CLASS_MAPS_RESIZED)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph.node.extend(builder.nodes)
    graph.initializer.extend(builder.initializers)
    batch = image_dims[0] or "batch"
    feature_dims = _dims(values.get(head.feature_blob)) or [None] * 4
    h_axis = 1 if head.layout == "nhwc" else 2
    h, w = feature_dims[h_axis] or "cam_h", feature_dims[h_axis + 1] or "cam_w"
    H_axis = 1 if image_layout == "nhwc" else 2  # noqa: N806 - of the image's height
    H, W = image_dims[H_axis] or "input_h", image_dims[H_axis + 1] or "input_w"  # noqa: N806

    def declare(name: str, elem: int, dims: list) -> None:
        graph.output.append(helper.make_tensor_value_info(name, elem, dims))

    declare(TOP_CLASSES, _INT64, [batch, top_k])
    declare(TOP_PROBABILITIES, _FLOAT, [batch, top_k])
    declare(MAPS, _FLOAT, [batch, top_k, h, w])
    if resize:
        declare(MAPS_RESIZED, _FLOAT, [batch, top_k, H, W])
    if not head.prob_output:
        declare(PROBABILITIES, _FLOAT, [batch, head.num_classes])
    if class_input:
        graph.input.append(helper.make_tensor_value_info(CLASS_INPUT, _INT64, ["cam_class_n", "cam_class_m"]))
        default = onnx.numpy_helper.from_array(np.zeros((1, 1), np.int64), CLASS_INPUT)
        graph.initializer.append(default)  # an overridable default: the input may be left out
        declare(CLASS_PROBABILITIES, _FLOAT, [batch, "cam_class_m"])
        declare(CLASS_MAPS, _FLOAT, [batch, "cam_class_m", h, w])
        if resize:
            declare(CLASS_MAPS_RESIZED, _FLOAT, [batch, "cam_class_m", H, W])
    record = CamOutputs(
        top_k=top_k,
        kind=head.kind,
        num_classes=head.num_classes,
        feature_tensor=head.feature_blob,
        probabilities=head.prob_output or probabilities,
        logits=None if head.prob_output else head.logits,
        top_classes=TOP_CLASSES,
        top_probabilities=TOP_PROBABILITIES,
        maps=MAPS,
        maps_resized=MAPS_RESIZED if resize else None,
        class_input=CLASS_INPUT if class_input else None,
        class_probabilities=CLASS_PROBABILITIES if class_input else None,
        class_maps=CLASS_MAPS if class_input else None,
        class_maps_resized=CLASS_MAPS_RESIZED if class_input and resize else None,
        feature_layout=head.layout,
        input_layout=image_layout,
    )
    entry = out.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, record.to_json()
    return out


def head_of(session, feature_layer: str | None = None, fc_layer: str | None = None) -> CamHead:
    """The CAM head of a model session: the converter's record, else found in the graph; a model without one
    is refused in one line."""
    from camcaffe.explain.cam_head import find_cam_head, head_from_metadata

    head = head_from_metadata(session) if feature_layer is None and fc_layer is None else None
    if head is None:
        try:
            head = find_cam_head(session.model, feature_layer=feature_layer, fc_layer=fc_layer)
        except CamHeadError as exc:
            raise CamHeadError(f"{session.source}: cannot add CAM outputs: {exc}") from None
    return head


def _to_external(model: onnx.ModelProto, location: str, names: set[str]) -> None:
    """Mark the weights for `location`: those that were external, and any large one (not the small shape
    constants, which shape inference must read inline)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    for tensor in model.graph.initializer:
        if tensor.name in names or tensor.ByteSize() > _SMALL_BYTES:
            if not tensor.HasField("raw_data"):
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
            set_external_data(tensor, location)


def export_cam_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    top_k: int,
    class_input: bool = False,
    resize: bool = True,
    feature_layer: str | None = None,
    fc_layer: str | None = None,
    layout: str | None = None,
) -> CamOutputs:
    """Read an ONNX classifier, add its CAM outputs, write it to `output` atomically; the record written.
    `layout`: the image input's, as `add_cam_outputs` takes it."""
    from camcaffe.runtime.session import ModelSession

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise InputFileError(f"{source}: not found; give the .onnx model to add CAM outputs to")
    if output.is_dir():
        raise InputFileError(f"{output}: is a directory; give the output .onnx file name (-o model_cam.onnx)")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise InputFileError(f"{folder}: output folder does not exist; create it first")
    session = ModelSession(source, provider="cpu")
    if session.info.metadata.get(METADATA_KEY):
        raise CamcaffeError(
            f"{source}: already has CAM outputs (camcaffe.cam_outputs); export from the plain model"
        )
    check_opset(session.lite, str(source))
    head = head_of(session, feature_layer, fc_layer)
    external_names = {t.name for t in session.lite.graph.initializer if t.data_location == 1}
    external = bool(external_names)  # weights in MODEL.onnx.data stay in OUT.onnx.data
    model = add_cam_outputs(
        session.model, head, top_k, class_input=class_input, resize=resize, layout=layout, source=str(source)
    )
    try:
        if external or model.ByteSize() > _EXTERNAL_ABOVE:
            import onnx

            data_name = output.name + ".data"
            (folder / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
            tmp = folder / f".{output.name}.tmp{os.getpid()}"
            try:
                _to_external(model, data_name, external_names)
                onnx.save_model(model, str(tmp))
                for written in (tmp, folder / data_name):
                    if written.exists():
                        os.chmod(written, 0o644)
                os.replace(tmp, output)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            payload = model.SerializeToString()
            write_atomic(output, lambda handle: handle.write(payload), mode="wb")
    except OSError as exc:
        raise InputFileError(
            f"{output}: cannot write the ONNX file ({exc.strerror}); check space and permissions"
        ) from None
    return record_of(
        {METADATA_KEY: model.metadata_props[-1].value},
        {o.name for o in model.graph.output},
        {i.name for i in model.graph.input},
    )
